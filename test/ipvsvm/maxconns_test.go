package ipvsvm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/ebpf"
	"github.com/switchyard/switchyard/ipvs"
	"github.com/switchyard/switchyard/test/netnstest"
	"github.com/switchyard/switchyard/test/vm/guest"
)

// holdIPVSConn opens a TCP connection from ns (nil = the node) to addr
// and checks the echo reply (netnstest.HoldTCP).
func holdIPVSConn(t *testing.T, ns *netnstest.NS, addr string) (*net.TCPConn, string, error) {
	t.Helper()
	return netnstest.HoldTCP(t, ns, addr, 5*time.Second)
}

// refusedByIPVS checks that a new connection fails with ECONNREFUSED (the
// ICMP port unreachable IPVS sends when it has no destination, or the
// socket LB's refusal), not with a timeout and not by connecting.
func refusedByIPVS(t *testing.T, ns *netnstest.NS, addr string) {
	t.Helper()
	netnstest.ExpectRefused(t, ns, addr, 5*time.Second)
}

// limitedNode is a topology of n backends (echo servers on TCP 8080),
// the node's IPVS dataplane, and a State to which limited adds Services.
func limitedNode(t *testing.T, n int) (*topology, *realNode, *dataplane.State) {
	t.Helper()
	topo := newTopology(t, n)
	topo.startEcho(t, "tcp", 8080)
	return topo, newRealNode(t, ipvs.Config{}), dataplane.NewState()
}

// limited adds a TCP Service on port of bes to st with at most limit
// connections per backend, and returns its name.
func limited(st *dataplane.State, name string, port uint16, limit int, bes ...backend) dataplane.ServicePortName {
	svc := addService(st, name, dataplane.TCP, port, 0, "", bes...)
	st.Services[svc].MaxConnectionsPerBackend = limit
	return svc
}

// abort closes c with a reset: IPVS keeps the entry of a reset connection
// 10 s (CLOSE) instead of the 2 minutes of TIME_WAIT after a FIN, and
// counts it until then.
func abort(t *testing.T, c *net.TCPConn) {
	t.Helper()
	if err := c.SetLinger(0); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestVMMaxConnectionsIPVS: switchyard.io/max-connections-per-backend on
// the IPVS dataplane. The real servers get the limit as upper and lower
// threshold; with the only backend at 2 connections the third is refused
// at once (ICMP port unreachable: ECONNREFUSED) from a client namespace
// and from the node; once a held connection's IPVS entry expires a new one
// is accepted; with two backends at 1 each, IPVS puts two connections on
// different backends and refuses the third.
func TestVMMaxConnectionsIPVS(t *testing.T) {
	guest.Required(t)
	topo, n, st := limitedNode(t, 2)
	limited(st, "limited", 80, 2, topo.Backends[0])
	limited(st, "limited-two", 81, 1, topo.Backends...)
	n.sync(st, fullSync)

	k := ipvs.Key{IP: clusterIP, Protocol: dataplane.TCP, Port: 80}
	rs := n.realServers(k)[netip.AddrPortFrom(topo.Backends[0].Addr, 8080)]
	if rs.UpperThreshold != 2 || rs.LowerThreshold != 2 {
		t.Fatalf("real server of %s: thresholds upper %d lower %d, want 2 2", k, rs.UpperThreshold, rs.LowerThreshold)
	}

	t.Run("one backend, limit 2", func(t *testing.T) {
		addr := net.JoinHostPort(clusterIP.String(), "80")
		held := netnstest.HoldTCPFrom(t, topo.Client, addr, 2, "be0", 5*time.Second)
		refusedByIPVS(t, topo.Client, addr)
		refusedByIPVS(t, nil, addr)
		// The held connections still work.
		netnstest.ExpectStillAnswered(t, held[1], "be0", "after the refusals", 5*time.Second)

		// A reset connection's entry expires after 10 s (CLOSE); until
		// then it counts. Retry every 1.5 s (ICMP to one peer is rate
		// limited to about one a second), each try refused or answered.
		abort(t, held[0])
		start := time.Now()
		var last error
		for range 40 {
			c, id, err := holdIPVSConn(t, topo.Client, addr)
			if err == nil {
				if id != "be0" {
					t.Fatalf("answered by %s, want be0", id)
				}
				t.Logf("accepted again %v after the reset", time.Since(start).Round(100*time.Millisecond))
				c.Close()
				return
			}
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("after the reset: %v, want refused until the entry expires", err)
			}
			last = err
			time.Sleep(1500 * time.Millisecond)
		}
		t.Fatalf("still refused %v after a connection was reset: %v", time.Since(start), last)
	})

	t.Run("two backends, limit 1 each", func(t *testing.T) {
		addr := net.JoinHostPort(clusterIP.String(), "81")
		seen := map[string]bool{}
		for i := range 2 {
			_, id, err := holdIPVSConn(t, topo.Client, addr)
			if err != nil {
				t.Fatalf("connection %d: %v (IPVS skips a full backend, so this must not fail)", i, err)
			}
			seen[id] = true
		}
		if !seen["be0"] || !seen["be1"] {
			t.Fatalf("backends of the two connections: %v, want be0 and be1", seen)
		}
		refusedByIPVS(t, topo.Client, addr)
		st := n.realServers(ipvs.Key{IP: clusterIP, Protocol: dataplane.TCP, Port: 81})
		for _, be := range topo.Backends {
			rs := st[netip.AddrPortFrom(be.Addr, 8080)]
			if rs.ActiveConns != 1 || rs.UpperThreshold != 1 {
				t.Errorf("real server %s: %s", be.ID, fmt.Sprintf("active %d, upper threshold %d; want 1 and 1", rs.ActiveConns, rs.UpperThreshold))
			}
		}
	})
}

// TestVMMaxConnectionsSocketLB: the socket LB's limit on the VM's kernel
// (bpf_set_retval in a cgroup connect program). With the socket LB over
// IPVS, the client's sockets in the cgroup connect straight to the
// backend, so IPVS counts none of them and would accept a third; the
// program refuses it with ECONNREFUSED.
func TestVMMaxConnectionsSocketLB(t *testing.T) {
	guest.Required(t)
	topo, n, st := limitedNode(t, 1)
	limited(st, "limited", 80, 2, topo.Backends[0])
	n.sync(st, fullSync)

	cg := netnstest.NewCgroup(t, "sy-lb")
	lb, err := ebpf.New(ebpf.Config{CgroupPath: cg.Path, NodeAddresses: func() ([]netip.Addr, error) { return nil, nil }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := lb.Cleanup(context.Background()); err != nil {
			t.Errorf("socket LB cleanup: %v", err)
		}
	})
	if err := lb.Sync(context.Background(), st, fullSync); err != nil {
		t.Fatal(err)
	}
	cg.Enter(t)
	addr := net.JoinHostPort(clusterIP.String(), "80")
	netnstest.HoldTCPFrom(t, topo.Client, addr, 2, "be0", 5*time.Second)
	refusedByIPVS(t, topo.Client, addr)
	k := ipvs.Key{IP: clusterIP, Protocol: dataplane.TCP, Port: 80}
	for _, rs := range n.realServers(k) {
		if rs.ActiveConns+rs.InactiveConns != 0 {
			t.Errorf("IPVS saw %d connections, want none: the refusal must be the socket LB's", rs.ActiveConns+rs.InactiveConns)
		}
	}
}
