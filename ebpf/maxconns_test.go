package ebpf

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/test/netnstest"
)

// holdTCP connects from the client to addr (netnstest.HoldTCP).
func (e *env) holdTCP(t *testing.T, addr string) (*net.TCPConn, string, error) {
	t.Helper()
	return netnstest.HoldTCP(t, e.client, addr, 3*time.Second)
}

// waitCount polls (bounded) until one sockops count (backend/direction)
// is want.
func waitCount(t *testing.T, lb *SocketLB, key string, want uint64) {
	t.Helper()
	var got map[string]uint64
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if got = counts(t, lb); got[key] == want {
			return
		}
	}
	t.Fatalf("sockops count %s: %d (all: %v), want %d", key, got[key], got, want)
}

// refusedConnect checks that connect itself fails with ECONNREFUSED: the
// program refused it (an untranslated connect to a service IP would time
// out here: nothing routes service IPs in the client namespace).
func (e *env) refusedConnect(t *testing.T, addr string) {
	t.Helper()
	netnstest.ExpectRefused(t, e.client, addr, 3*time.Second)
}

// TestMaxConnectionsPerBackend: with switchyard.io/max-connections-per-
// backend, connect skips backends holding the limit of established
// connections (sockops counts) and fails with ECONNREFUSED when all do;
// a close frees a place; a Service without the limit on the same backend
// is not refused, and its connections count for the backend (the count is
// this node's, per backend, whichever Service or none they came by).
func TestMaxConnectionsPerBackend(t *testing.T) {
	e := newEnv(t)
	lb := e.newLB(t, "")
	st := dataplane.NewState()
	a4, a6 := e.v4Backends()[0], e.v6Backends()[0]
	one := service(st, "limited", dataplane.TCP, 80, []netip.Addr{clusterIP4, clusterIP6}, []netip.Addr{a4, a6})
	one.MaxConnectionsPerBackend = 2
	b4, c4 := e.v4Backends()[1], e.v4Backends()[2]
	two := service(st, "limited-two", dataplane.TCP, 81, []netip.Addr{clusterIP4}, []netip.Addr{b4, c4})
	two.MaxConnectionsPerBackend = 1
	service(st, "free", dataplane.TCP, 82, []netip.Addr{clusterIP4}, []netip.Addr{a4})
	syncFull(t, lb, st)

	t.Run("one backend per family, limit 2", func(t *testing.T) {
		for _, fam := range []struct{ vip, be netip.Addr }{{clusterIP4, a4}, {clusterIP6, a6}} {
			addr := hostPort(fam.vip, 80)
			held := netnstest.HoldTCPFrom(t, e.client, addr, 2, fam.be.String(), 3*time.Second)
			e.refusedConnect(t, addr)
			netnstest.ExpectStillAnswered(t, held[0], fam.be.String(), "after the refusal", 3*time.Second)
			// Once sockops has seen the close, there is room again.
			held[0].Close()
			waitCount(t, lb, hostPort(fam.be, backendPort)+"/out", 1)
			if _, id, err := e.holdTCP(t, addr); err != nil || id != fam.be.String() {
				t.Fatalf("%s after a close: %s %v, want %s", addr, id, err, fam.be)
			}
			e.refusedConnect(t, addr)
			if fam.vip != clusterIP4 {
				continue
			}
			// A Service without a limit on the same backend is not
			// refused; its connections count for the backend, so the
			// limited Service, now back at 2 + 2, still refuses after
			// one of its own closes.
			for range 2 {
				if _, id, err := e.holdTCP(t, hostPort(clusterIP4, 82)); err != nil || id != a4.String() {
					t.Fatalf("unlimited Service on the same backend: %s %v", id, err)
				}
			}
			held[1].Close()
			waitCount(t, lb, hostPort(fam.be, backendPort)+"/out", 3)
			e.refusedConnect(t, addr)
		}
	})

	t.Run("two backends, limit 1 each", func(t *testing.T) {
		// The second connection finds the full backend and moves on:
		// no retry needed.
		addr := hostPort(clusterIP4, 81)
		seen := map[string]bool{}
		for i := range 2 {
			_, id, err := e.holdTCP(t, addr)
			if err != nil {
				t.Fatalf("connection %d: %v", i, err)
			}
			seen[id] = true
		}
		if !seen[b4.String()] || !seen[c4.String()] {
			t.Fatalf("two connections went to %v, want %s and %s", seen, b4, c4)
		}
		for range 5 {
			e.refusedConnect(t, addr)
		}
	})
}

// TestMaxConnectionsWithoutCounting: without sockops nothing counts the
// connections the socket LB makes, so a limited Service is left
// untranslated (to the packet dataplane, which enforces the limit on what
// it translates); unlimited ones are still translated.
func TestMaxConnectionsWithoutCounting(t *testing.T) {
	e := newEnv(t)
	lb, err := New(Config{CgroupPath: e.cg.Path, NoConnectionCounting: true,
		NodeAddresses: func() ([]netip.Addr, error) { return e.nodeAddrs, nil }})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { lb.Close() })
	st := dataplane.NewState()
	sp := service(st, "limited", dataplane.TCP, 80, []netip.Addr{clusterIP4}, e.v4Backends())
	sp.MaxConnectionsPerBackend = 5
	service(st, "free", dataplane.TCP, 81, []netip.Addr{clusterIP4}, e.v4Backends())
	syncFull(t, lb, st)
	if !e.untranslated(hostPort(clusterIP4, 80)) {
		t.Errorf("limited Service translated without connection counting")
	}
	if id := e.request(t, "tcp", hostPort(clusterIP4, 81)); id == "" {
		t.Errorf("unlimited Service: no answer")
	}
}
