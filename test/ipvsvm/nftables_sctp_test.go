package ipvsvm

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/nftables"
	"github.com/switchyard/switchyard/test/netnstest"
	"github.com/switchyard/switchyard/test/vm/guest"
)

// TestVMNFTablesSCTP runs the nftables dataplane in the VM, whose Debian
// kernel has SCTP sockets and SCTP NAT (the development hosts' kernel has
// neither, so the nftables package's own tests check only its rules for
// SCTP). An SCTP Service port with a ClusterIP and a NodePort and two SCTP
// backends: associations from the client namespace and from the node reach
// both backends; ClusterIP traffic from the client keeps its address (it
// is inside the cluster CIDR given), NodePort traffic is masqueraded to
// the node's address; a TCP port of the same number is unaffected. Then
// the endpoints go and SCTP is rejected; the table is removed at the end.
func TestVMNFTablesSCTP(t *testing.T) {
	guest.Required(t)
	requireSCTP(t)
	topo := newTopology(t, 2)
	topo.startSCTPEcho(t, 8080)
	topo.startEcho(t, "tcp", 8080)
	// Unlike IPVS, nftables binds no service address on the node: the
	// node's own connections need a route for the cluster IP to leave the
	// output path (where they are DNATed), as a node's default route gives.
	netnstest.AddRoute(t, nil, netip.MustParsePrefix("10.96.0.0/16"), topo.ClientAddr)

	p, err := nftables.New(nftables.Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.99.0.0/24")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Cleanup(context.Background()); err != nil {
			t.Errorf("nftables Cleanup: %v", err)
		}
		p.Close()
	})
	st := serviceState("sig", dataplane.SCTP, 80, 30080, "", topo.Backends...)
	addService(st, "sig", dataplane.TCP, 80, 30080, "", topo.Backends...)
	if err := p.Sync(context.Background(), st, fullSync); err != nil {
		t.Fatalf("nftables Sync: %v", err)
	}

	// Random choice: each backend must answer within 30 associations.
	reachBoth := func(what string, seen map[string]int) {
		t.Helper()
		if seen["be0"] == 0 || seen["be1"] == 0 {
			t.Errorf("%s: replies per backend %v, want both backends", what, seen)
		}
	}
	sctp := net.JoinHostPort(clusterIP.String(), "80")
	reachBoth("SCTP ClusterIP from client namespace", sctpRequestIDs(t, topo.Client, sctp, 30, topo.ClientAddr))
	reachBoth("SCTP ClusterIP from the node", sctpRequestIDs(t, nil, sctp, 30, netip.Addr{}))
	np := netip.AddrPortFrom(nodeAddr, 30080).String()
	// Masqueraded: each backend sees the node's address on its own link.
	gateway := map[string]netip.Addr{}
	for _, be := range topo.Backends {
		gateway[be.ID] = netip.AddrFrom4([4]byte{10, 100, be.Addr.As4()[2], 1})
	}
	seen := map[string]int{}
	for i := range 30 {
		reply, err := netnstest.SCTPRequest(topo.Client, np, fmt.Sprintf("np%d", i), 5*time.Second)
		if err != nil {
			t.Fatalf("SCTP NodePort request %d: %v", i, err)
		}
		id, remote, err := netnstest.ReplyID(reply)
		if err != nil {
			t.Fatal(err)
		}
		if ap, err := netip.ParseAddrPort(remote); err != nil || ap.Addr() != gateway[id] {
			t.Fatalf("backend %s saw NodePort source %s, want the node's %s", id, remote, gateway[id])
		}
		seen[id]++
	}
	reachBoth("SCTP NodePort from client namespace (masqueraded)", seen)
	reachBoth("TCP on the same port", requestIDs(t, topo.Client, "tcp", sctp, 30, topo.ClientAddr))

	// No endpoints: rejected with an ICMP port unreachable, as kube-proxy
	// does for every protocol but TCP. Linux SCTP takes that ICMP as a soft
	// error (without IP_RECVERR), so the client sees its connect time out
	// rather than refused; either way no backend answers.
	st = serviceState("sig", dataplane.SCTP, 80, 30080, "")
	addService(st, "sig", dataplane.TCP, 80, 30080, "", topo.Backends...)
	if err := p.Sync(context.Background(), st, fullSync); err != nil {
		t.Fatalf("nftables Sync: %v", err)
	}
	if r, err := netnstest.SCTPRequest(topo.Client, sctp, "none", 3*time.Second); err == nil {
		t.Errorf("SCTP to a Service without endpoints answered %q", r)
	} else {
		t.Logf("SCTP without endpoints: %v", err)
	}
	reachBoth("TCP port still served", requestIDs(t, topo.Client, "tcp", sctp, 30, topo.ClientAddr))
}
