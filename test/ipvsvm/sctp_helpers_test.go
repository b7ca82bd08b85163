package ipvsvm

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/switchyard/switchyard/test/netnstest"
)

// requireSCTP skips, saying why, when the kernel cannot make SCTP sockets
// at all (no sctp module). Any other failure is the test's to report.
func requireSCTP(t *testing.T) {
	t.Helper()
	err := netnstest.SCTPSupported()
	if err == nil {
		return
	}
	if netnstest.IsNoSCTP(err) {
		var u unix.Utsname
		_ = unix.Uname(&u)
		t.Skipf("kernel %s has no SCTP (%v): SCTP Service test skipped", unix.ByteSliceToString(u.Release[:]), err)
	}
	t.Fatalf("SCTP socket: %v", err)
}

// startSCTPEcho starts an SCTP echo server on every backend at port.
func (topo *topology) startSCTPEcho(t *testing.T, port uint16) {
	t.Helper()
	for _, be := range topo.Backends {
		netnstest.StartSCTPEchoServer(t, be.NS, netip.AddrPortFrom(be.Addr, port).String(), be.ID)
	}
}

// sctpRequestIDs is requestIDs over SCTP: n associations from ns (nil =
// root), one request each; it counts the answering backends and checks the
// source address each saw when wantSrc is valid.
func sctpRequestIDs(t *testing.T, ns *netnstest.NS, addr string, n int, wantSrc netip.Addr) map[string]int {
	t.Helper()
	seen := map[string]int{}
	for i := range n {
		reply, err := netnstest.SCTPRequest(ns, addr, fmt.Sprintf("req%d", i), 5*time.Second)
		if err != nil {
			t.Fatalf("SCTP request %d from %s: %v", i, ns.Name(), err)
		}
		id, remote, err := netnstest.ReplyID(reply)
		if err != nil {
			t.Fatal(err)
		}
		if wantSrc.IsValid() {
			if ap, err := netip.ParseAddrPort(remote); err != nil || ap.Addr() != wantSrc {
				t.Fatalf("backend %s saw SCTP source %s, want %s", id, remote, wantSrc)
			}
		}
		seen[id]++
	}
	return seen
}
