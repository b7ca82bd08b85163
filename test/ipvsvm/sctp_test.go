package ipvsvm

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/ipvs"
	"github.com/switchyard/switchyard/test/netnstest"
	"github.com/switchyard/switchyard/test/vm/guest"
)

// SCTP Services through the real ipvs.Proxier with real SCTP associations
// (one-to-one sockets, netnstest/sctp.go). IPVS and conntrack SCTP support
// are built in to the VM's Debian kernel; the sctp module is preloaded. A
// kernel without SCTP sockets skips with the reason; IPVS refusing an SCTP
// virtual server fails the Sync, and the test, with the kernel's error.

// TestVMSCTPClusterIP: an SCTP Service port with a ClusterIP and a NodePort
// and two SCTP backends, next to a TCP port with the same number. Several
// associations from the client namespace (and from the node for the
// ClusterIP) reach both backends round robin, keep the client's address,
// and the TCP port is unaffected.
func TestVMSCTPClusterIP(t *testing.T) {
	guest.Required(t)
	requireSCTP(t)
	topo := newTopology(t, 2)
	topo.startSCTPEcho(t, 8080)
	topo.startEcho(t, "tcp", 8080)
	n := newRealNode(t, ipvs.Config{})
	st := serviceState("sig", dataplane.SCTP, 80, 30080, "", topo.Backends...)
	addService(st, "sig", dataplane.TCP, 80, 30080, "", topo.Backends...)
	n.sync(st, fullSync)

	vss := n.virtualServers()
	for _, k := range []ipvs.Key{
		{IP: clusterIP, Protocol: dataplane.SCTP, Port: 80},
		{IP: nodeAddr, Protocol: dataplane.SCTP, Port: 30080},
		{IP: clusterIP, Protocol: dataplane.TCP, Port: 80},
	} {
		vs, ok := vss[k]
		if !ok {
			t.Fatalf("no virtual server %s; have %v", k, vss)
		}
		if vs.Scheduler != "rr" {
			t.Errorf("%s: scheduler %q, want rr", k, vs.Scheduler)
		}
		rss := n.realServers(k)
		if len(rss) != 2 {
			t.Errorf("%s: real servers %v, want both backends", k, rss)
		}
		for a, rs := range rss {
			if a.Port() != 8080 || rs.Weight != 1 || rs.Forward != ipvs.ForwardMasq {
				t.Errorf("%s: real server %+v", k, rs)
			}
		}
	}

	sctp := net.JoinHostPort(clusterIP.String(), "80")
	expectEven(t, "SCTP ClusterIP from client namespace", sctpRequestIDs(t, topo.Client, sctp, 6, topo.ClientAddr), 3)
	expectEven(t, "SCTP ClusterIP from the node", sctpRequestIDs(t, nil, sctp, 4, netip.Addr{}), 2)
	np := netip.AddrPortFrom(nodeAddr, 30080).String()
	expectEven(t, "SCTP NodePort from client namespace", sctpRequestIDs(t, topo.Client, np, 4, topo.ClientAddr), 2)
	expectEven(t, "TCP on the same port", requestIDs(t, topo.Client, "tcp", sctp, 4, topo.ClientAddr), 2)

	// One association carries several requests to the same backend, and
	// IPVS counts it as an active SCTP connection.
	conn, err := netnstest.DialSCTP(topo.Client, sctp, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	first, err := netnstest.Exchange(conn, "first", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	id, _, err := netnstest.ReplyID(first)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if r, err := netnstest.Exchange(conn, fmt.Sprintf("again%d", i), 5*time.Second); err != nil || r != first {
			t.Fatalf("exchange %d on one association: %q %v, want %q", i, r, err, first)
		}
	}
	var active int
	for _, rs := range n.realServers(ipvs.Key{IP: clusterIP, Protocol: dataplane.SCTP, Port: 80}) {
		active += rs.ActiveConns
	}
	if active != 1 {
		t.Errorf("active SCTP connections on the ClusterIP: %d, want 1 (the open association to %s)", active, id)
	}
}

// TestVMSCTPEndpointRemoval: SCTP real servers are deleted at once, not
// drained like TCP ones (kube-proxy treats SCTP like UDP), and new
// associations go to the remaining backend.
func TestVMSCTPEndpointRemoval(t *testing.T) {
	guest.Required(t)
	requireSCTP(t)
	topo := newTopology(t, 2)
	topo.startSCTPEcho(t, 8080)
	n := newRealNode(t, ipvs.Config{})
	st := serviceState("sig", dataplane.SCTP, 80, 0, "", topo.Backends...)
	n.sync(st, fullSync)
	addr := net.JoinHostPort(clusterIP.String(), "80")

	// An open association to the backend about to go away.
	conn, err := netnstest.DialSCTP(topo.Client, addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	reply, err := netnstest.Exchange(conn, "hello", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	usedID, _, _ := netnstest.ReplyID(reply)
	var used, other backend
	for _, be := range topo.Backends {
		if be.ID == usedID {
			used = be
		} else {
			other = be
		}
	}
	if used.ID == "" {
		t.Fatalf("unexpected reply %q", reply)
	}

	spn := addService(st, "sig", dataplane.SCTP, 80, 0, "", other)
	n.sync(st, changedSvc(spn))
	k := ipvs.Key{IP: clusterIP, Protocol: dataplane.SCTP, Port: 80}
	rss := n.realServers(k)
	if _, ok := rss[netip.AddrPortFrom(used.Addr, 8080)]; ok || len(rss) != 1 {
		t.Fatalf("real servers after removing %s: %v, want only %s (SCTP is not drained)", used.ID, rss, other.ID)
	}
	if seen := sctpRequestIDs(t, topo.Client, addr, 4, topo.ClientAddr); seen[other.ID] != 4 {
		t.Errorf("new associations after removal went to %v, want all on %s", seen, other.ID)
	}
	// The old association lost its real server; with expire_nodest_conn=1
	// IPVS drops its entry on the next packet. What the client then sees is
	// the kernel's business (abort or silence): logged, not asserted.
	r, err := netnstest.Exchange(conn, "after", 2*time.Second)
	t.Logf("old association after its real server was deleted: reply %q, error %v", r, err)
}
