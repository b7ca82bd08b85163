package ipvsvm

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/iptables"
	"github.com/switchyard/switchyard/ipvs"
	"github.com/switchyard/switchyard/test/netnstest"
	"github.com/switchyard/switchyard/test/vm/guest"
)

// These tests run the IPVS dataplane as the agent does: the real
// iptables.Proxier (ipsets and chains that mark and masquerade) followed by
// the real ipvs.Proxier, on the VM's root namespace as node "vm-node". The
// topology's be0 is this node's pod; be1's Endpoint.NodeName names another
// node (it is reachable all the same, as a pod on another node would be).

const (
	vmNode    = "vm-node"
	otherNode = "other-node"
)

// podCIDR holds the backends: traffic from it keeps its source, traffic
// from the client (10.99.0.2, outside) to a cluster IP is masqueraded.
var podCIDR = netip.MustParsePrefix("10.100.0.0/16")

// policyNode is the SNAT and IPVS dataplanes of one node.
type policyNode struct {
	*realNode
	chain dataplane.Chain
}

func newPolicyNode(t *testing.T) *policyNode {
	t.Helper()
	n := newRealNode(t, ipvs.Config{})
	sets, err := iptables.NewNetlinkIPSet()
	if err != nil {
		t.Fatal(err)
	}
	tables, err := iptables.NewTables()
	if err != nil {
		t.Fatal(err)
	}
	snat, err := iptables.NewProxier(iptables.Config{ClusterCIDRs: []netip.Prefix{podCIDR}}, sets, tables, iptables.NewProcSysctl())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := snat.Cleanup(context.Background()); err != nil {
			t.Errorf("iptables Cleanup: %v", err)
		}
		sets.Close()
	})
	return &policyNode{realNode: n, chain: dataplane.Chain{snat, n.p}}
}

func (n *policyNode) sync(st *dataplane.State, ch dataplane.Changes) {
	n.t.Helper()
	if err := n.chain.Sync(context.Background(), st, ch); err != nil {
		n.t.Fatalf("Sync: %v", err)
	}
}

// policyService puts Service "edge" (ClusterIP port 80, NodePort 30080)
// with the given policies and backends into st; be0 is on this node, the
// others on another one.
func policyService(st *dataplane.State, eTPLocal, iTPLocal bool, backends ...backend) dataplane.ServicePortName {
	spn := addService(st, "edge", dataplane.TCP, 80, 30080, "", backends...)
	sp := st.Services[spn]
	sp.ExternalPolicyLocal, sp.InternalPolicyLocal = eTPLocal, iTPLocal
	eps := st.Endpoints[spn]
	for i := range eps {
		eps[i].NodeName = otherNode
		if eps[i].Addr.Addr() == netip.MustParseAddr("10.100.0.2") {
			eps[i].NodeName = vmNode
		}
	}
	return spn
}

// sources makes n requests from ns, one connection each, and returns the
// source address each backend saw, by backend.
func sources(t *testing.T, ns *netnstest.NS, addr string, n int) map[string][]netip.Addr {
	t.Helper()
	out := map[string][]netip.Addr{}
	for i := range n {
		reply, err := netnstest.Request(ns, "tcp", addr, "req", 5*time.Second)
		if err != nil {
			t.Fatalf("request %d to %s: %v", i, addr, err)
		}
		id, remote, err := netnstest.ReplyID(reply)
		if err != nil {
			t.Fatal(err)
		}
		ap, err := netip.ParseAddrPort(remote)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(out[id], ap.Addr()) {
			out[id] = append(out[id], ap.Addr())
		}
	}
	return out
}

func expectSources(t *testing.T, what string, got map[string][]netip.Addr, want map[string][]netip.Addr) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: backends and the sources they saw %v, want %v", what, got, want)
		return
	}
	for id, w := range want {
		if !slices.Equal(got[id], w) {
			t.Errorf("%s: backends and the sources they saw %v, want %v", what, got, want)
			return
		}
	}
}

// expectFails checks that a new connection to addr does not get an answer.
func expectFails(t *testing.T, what string, ns *netnstest.NS, addr string) {
	t.Helper()
	start := time.Now()
	reply, err := netnstest.Request(ns, "tcp", addr, "req", 2*time.Second)
	if err == nil {
		t.Errorf("%s: answered %q, want a failure", what, reply)
		return
	}
	t.Logf("%s: failed after %v: %v", what, time.Since(start).Round(time.Millisecond), err)
}

// expectRealServers checks that exactly want take new connections (weight
// 1); real servers of endpoints the policy dropped may still be there at
// weight 0, draining their (TIME_WAIT) connections.
func expectRealServers(t *testing.T, n *policyNode, k ipvs.Key, want ...backend) {
	t.Helper()
	got := n.realServers(k)
	var active []netip.AddrPort
	for a, rs := range got {
		if rs.Weight != 0 {
			active = append(active, a)
		}
	}
	slices.SortFunc(active, netip.AddrPort.Compare)
	var wantAddrs []netip.AddrPort
	for _, be := range want {
		wantAddrs = append(wantAddrs, netip.AddrPortFrom(be.Addr, 8080))
	}
	if !slices.Equal(active, wantAddrs) {
		t.Errorf("real servers of %s taking new connections: %v (all: %v), want %v", k, active, got, wantAddrs)
	}
}

// TestVMPolicyExternalLocal: NodePort with externalTrafficPolicy Cluster is
// masqueraded and spread over both backends; with Local only this node's
// backend answers and sees the client's address, while the ClusterIP still
// reaches both; with no local endpoint the NodePort's virtual server falls
// back to the remote backend (for the node's own and its pods' traffic)
// and the client's connections are dropped before IPVS.
func TestVMPolicyExternalLocal(t *testing.T) {
	guest.Required(t)
	topo := newTopology(t, 2)
	topo.startEcho(t, "tcp", 8080)
	be0, be1 := topo.Backends[0], topo.Backends[1]
	n := newPolicyNode(t)
	st := dataplane.NewState()
	st.NodeName = vmNode
	spn := policyService(st, false, false, topo.Backends...)
	n.sync(st, fullSync)
	nodePort := netip.AddrPortFrom(nodeAddr, 30080).String()
	npKey := ipvs.Key{IP: nodeAddr, Protocol: dataplane.TCP, Port: 30080}
	vip := net.JoinHostPort(clusterIP.String(), "80")
	// Masqueraded: each backend sees the node's address on its link.
	gw0, gw1 := netip.MustParseAddr("10.100.0.1"), netip.MustParseAddr("10.100.1.1")
	expectSources(t, "NodePort, externalTrafficPolicy Cluster", sources(t, topo.Client, nodePort, 4),
		map[string][]netip.Addr{be0.ID: {gw0}, be1.ID: {gw1}})

	// Local: a partial sync, as when the Service is edited.
	policyService(st, true, false, topo.Backends...)
	n.sync(st, changedSvc(spn))
	expectRealServers(t, n, npKey, be0)
	expectRealServers(t, n, ipvs.Key{IP: clusterIP, Protocol: dataplane.TCP, Port: 80}, be0, be1)
	expectSources(t, "NodePort, externalTrafficPolicy Local", sources(t, topo.Client, nodePort, 4),
		map[string][]netip.Addr{be0.ID: {topo.ClientAddr}})
	// The ClusterIP follows the internal policy (Cluster): both backends,
	// masqueraded (the client is outside the pod CIDR).
	expectSources(t, "ClusterIP of an externalTrafficPolicy Local Service", sources(t, topo.Client, vip, 4),
		map[string][]netip.Addr{be0.ID: {gw0}, be1.ID: {gw1}})

	// Only the remote endpoint left: the NodePort's virtual server falls
	// back to it (as kube-proxy's IPVS mode), but the client, neither a
	// pod nor the node, is dropped before IPVS; the ClusterIP still works.
	policyService(st, true, false, be1)
	n.sync(st, changedSvc(spn))
	expectRealServers(t, n, npKey, be1)
	expectFails(t, "NodePort, externalTrafficPolicy Local without a local endpoint", topo.Client, nodePort)
	expectSources(t, "ClusterIP without a local endpoint", sources(t, topo.Client, vip, 2),
		map[string][]netip.Addr{be1.ID: {gw1}})

	// A full sync (restart, periodic) agrees.
	n.sync(st, fullSync)
	expectRealServers(t, n, npKey, be1)
	expectFails(t, "NodePort without a local endpoint, after a full sync", topo.Client, nodePort)

	// The local endpoint is back.
	policyService(st, true, false, topo.Backends...)
	n.sync(st, changedSvc(spn))
	expectSources(t, "NodePort, local endpoint back", sources(t, topo.Client, nodePort, 2),
		map[string][]netip.Addr{be0.ID: {topo.ClientAddr}})
}

// TestVMPolicyInternalLocal: a ClusterIP with internalTrafficPolicy Local
// reaches only this node's endpoint, from a client and from the node.
func TestVMPolicyInternalLocal(t *testing.T) {
	guest.Required(t)
	topo := newTopology(t, 2)
	topo.startEcho(t, "tcp", 8080)
	be0, be1 := topo.Backends[0], topo.Backends[1]
	n := newPolicyNode(t)
	st := dataplane.NewState()
	st.NodeName = vmNode
	spn := addService(st, "web", dataplane.TCP, 80, 0, "", topo.Backends...)
	n.sync(st, fullSync)
	vip := net.JoinHostPort(clusterIP.String(), "80")
	expectEven(t, "ClusterIP, internalTrafficPolicy Cluster", requestIDs(t, topo.Client, "tcp", vip, 4, netip.Addr{}), 2)

	delete(st.Services, spn)
	delete(st.Endpoints, spn)
	edge := policyService(st, false, true, topo.Backends...) // with a NodePort
	n.sync(st, changedSvc(spn, edge))
	k := ipvs.Key{IP: clusterIP, Protocol: dataplane.TCP, Port: 80}
	expectRealServers(t, n, k, be0)
	for what, ns := range map[string]*netnstest.NS{"client": topo.Client, "node": nil} {
		if seen := requestIDs(t, ns, "tcp", vip, 4, netip.Addr{}); seen[be0.ID] != 4 {
			t.Errorf("ClusterIP, internalTrafficPolicy Local, from the %s: replies %v, want all from %s", what, seen, be0.ID)
		}
	}
	// The NodePort follows the external policy (Cluster): both backends.
	expectEven(t, "NodePort of an internalTrafficPolicy Local Service",
		requestIDs(t, topo.Client, "tcp", netip.AddrPortFrom(nodeAddr, 30080).String(), 4, netip.Addr{}), 2)

	// No local endpoint: the ClusterIP fails.
	policyService(st, false, true, be1)
	n.sync(st, changedSvc(edge))
	expectRealServers(t, n, k)
	expectFails(t, "ClusterIP, internalTrafficPolicy Local without a local endpoint", topo.Client, vip)
}
