package iptables

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/test/netnstest"
)

// noLocalTopology is a node with an outside client, a pod (inside the
// cluster CIDR) and a backend:
//
//	client 192.168.77.2 --- 192.168.77.1 [node] 10.244.2.1 --- 10.244.2.2 pod
//	                                     [node] 10.244.1.1 --- 10.244.1.2 backend (echo :8080)
//
// There is no IPVS on this host. As IPVS binds service addresses on its
// dummy link, the node has the load balancer IP, the external IP and the
// cluster IP on lo, and local echo servers stand in for the virtual
// servers (TCP and UDP port 80 of the LB IP and external IP, the NodePort
// on the node's address on the client's link, TCP port 80 of the cluster
// IP): packets to them take
// IPVS's path up to LOCAL_IN (nat PREROUTING, filter INPUT, where IPVS
// would take over). The node's own requests to them leave through nat
// OUTPUT and come back through lo and INPUT.
type noLocalTopology struct {
	node, client, pod, backend *netnstest.NS
	sets                       *NetlinkIPSet
	tables                     *GoIPTables
}

const (
	nlNodeAddr    = "192.168.77.1"
	nlClientAddr  = "192.168.77.2"
	nlPodGateway  = "10.244.2.1"
	nlPodAddr     = "10.244.2.2"
	nlNodeToBE    = "10.244.1.1"
	nlBackendAddr = "10.244.1.2"
	nlLBIP        = "198.51.100.10"
	nlExternalIP  = "203.0.113.10"
	nlClusterIP   = "10.96.0.10"
)

func newNoLocalTopology(t *testing.T, binary string) *noLocalTopology {
	t.Helper()
	topo := &noLocalTopology{
		node: netnstest.New(t, "sy-nle-node"), client: netnstest.New(t, "sy-nle-cli"),
		pod: netnstest.New(t, "sy-nle-pod"), backend: netnstest.New(t, "sy-nle-be"),
	}
	p := netip.MustParsePrefix
	netnstest.Veth(t, topo.node, topo.client, "cli0", "eth0", p(nlNodeAddr+"/24"), p(nlClientAddr+"/24"))
	netnstest.Veth(t, topo.node, topo.pod, "pod0", "eth0", p(nlPodGateway+"/24"), p(nlPodAddr+"/24"))
	netnstest.Veth(t, topo.node, topo.backend, "be0", "eth0", p(nlNodeToBE+"/24"), p(nlBackendAddr+"/24"))
	def := p("0.0.0.0/0")
	netnstest.AddRoute(t, topo.client, def, netip.MustParseAddr(nlNodeAddr))
	netnstest.AddRoute(t, topo.pod, def, netip.MustParseAddr(nlPodGateway))
	netnstest.AddRoute(t, topo.backend, def, netip.MustParseAddr(nlNodeToBE))
	for _, a := range []string{nlLBIP, nlExternalIP, nlClusterIP} {
		netnstest.AddAddr(t, topo.node, "lo", p(a+"/32"))
	}
	for _, s := range []struct{ proto, addr, id string }{
		{"tcp", nlLBIP + ":80", "lb"}, {"udp", nlLBIP + ":80", "lb-udp"},
		{"tcp", nlExternalIP + ":80", "ext"}, {"udp", nlExternalIP + ":80", "ext-udp"},
		// Bound to the address the tests use, not the wildcard: a
		// wildcard UDP socket would answer from the address routing
		// picks towards the sender, which the sender's connected socket
		// ignores.
		{"tcp", fmt.Sprintf("%s:%d", nlNodeAddr, nodePort), "np"}, {"udp", fmt.Sprintf("%s:%d", nlNodeAddr, nodePort), "np-udp"},
		{"tcp", nlClusterIP + ":80", "cip"},
	} {
		netnstest.StartEchoServer(t, topo.node, s.proto, s.addr, s.id)
	}
	netnstest.StartEchoServer(t, topo.backend, "tcp", nlBackendAddr+":8080", "be")
	var sysctl *ProcSysctl
	topo.sets, topo.tables, sysctl = kernelClients(t, topo.node, binary)
	if err := sysctl.Set("net/ipv4/ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	return topo
}

// noLocalState is an externalTrafficPolicy Local LoadBalancer Service with
// an external IP and a NodePort, on TCP and UDP port 80, whose endpoint is
// on this node (node-a) or, with remote, on another one.
func noLocalState(t *testing.T, remote bool) *dataplane.State {
	t.Helper()
	var svcs []svc
	for _, proto := range []dataplane.Protocol{dataplane.TCP, dataplane.UDP} {
		s := svc{ns: "default", name: "edge", port: "p-" + string(proto), proto: proto, svcPort: 80, nodePort: nodePort, local: true,
			clusterIPs: []string{nlClusterIP}, externalIPs: []string{nlExternalIP}, lbIPs: []string{nlLBIP}}
		if remote {
			s.remote = []string{"10.244.3.7:8080"}
		} else {
			s.endpoints = []string{"10.244.1.5:8080"}
		}
		svcs = append(svcs, s)
	}
	st := newState(t, svcs...)
	st.NodeIPs = []netip.Addr{netip.MustParseAddr(nlNodeAddr)}
	return st
}

// TestKernelNoLocalEndpoint sends real packets to the external frontends
// of an externalTrafficPolicy Local Service whose only endpoint is on
// another node, for each iptables backend: the outside client's new
// connections are dropped (TCP and UDP; load balancer IP, external IP,
// NodePort), while a pod (source in the cluster CIDR) and the node itself
// get through, an established connection keeps working, and the cluster
// IP is not affected; without cluster CIDRs the pod is dropped too. The
// node's own requests to such frontends are masqueraded, the pod's are
// not.
func TestKernelNoLocalEndpoint(t *testing.T) {
	requireKernel(t)
	for _, bin := range backends(t) {
		t.Run(bin, func(t *testing.T) { testKernelNoLocalEndpoint(t, bin) })
	}
}

func testKernelNoLocalEndpoint(t *testing.T, binary string) {
	topo := newNoLocalTopology(t, binary)
	ctx := context.Background()
	cfg := Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}}
	p, err := NewProxier(cfg, topo.sets, topo.tables, nil)
	if err != nil {
		t.Fatal(err)
	}
	edge := dataplane.Changes{Services: map[dataplane.ServiceName]struct{}{{Namespace: "default", Name: "edge"}: {}}}
	sync := func(p *Proxier, st *dataplane.State, ch dataplane.Changes) {
		t.Helper()
		if err := p.Sync(ctx, st, ch); err != nil {
			t.Fatalf("sync: %v", err)
		}
		want := Desired(st, p.cfg)
		if got := ownedDump(t, topo.sets, topo.tables, want); got != want.Dump() {
			t.Fatalf("kernel differs from desired:\n%s", lineDiff(want.Dump(), got))
		}
	}
	// answers checks that a request from ns reaches the echo server id
	// and, when src is set, that the server saw src as the source.
	answers := func(what string, ns *netnstest.NS, proto, addr, id, src string) {
		t.Helper()
		reply, err := netnstest.Request(ns, proto, addr, "hello", 3*time.Second)
		if err != nil {
			t.Errorf("%s: %s %s: %v, want an answer from %s", what, proto, addr, err, id)
			return
		}
		gotID, remote, err := netnstest.ReplyID(reply)
		ap, perr := netip.ParseAddrPort(remote)
		if err != nil || perr != nil || gotID != id || (src != "" && ap.Addr().String() != src) {
			t.Errorf("%s: %s %s answered %q, want %s seeing source %q", what, proto, addr, reply, id, src)
		}
	}
	noAnswer := func(what string, ns *netnstest.NS, proto, addr string) {
		t.Helper()
		if reply, err := netnstest.Request(ns, proto, addr, "hello", time.Second); err == nil {
			t.Errorf("%s: %s %s answered %q, want no answer (dropped)", what, proto, addr, reply)
		}
	}
	frontends := []struct{ what, addr, id string }{
		{"load balancer IP", nlLBIP + ":80", "lb"},
		{"external IP", nlExternalIP + ":80", "ext"},
		{"NodePort", fmt.Sprintf("%s:%d", nlNodeAddr, nodePort), "np"},
	}
	// reached checks that ns gets answers on every external frontend (TCP
	// and UDP); src as in answers.
	reached := func(what string, ns *netnstest.NS, src string) {
		t.Helper()
		for _, fe := range frontends {
			answers(what+", "+fe.what, ns, "tcp", fe.addr, fe.id, src)
			answers(what+", UDP "+fe.what, ns, "udp", fe.addr, fe.id+"-udp", src)
		}
	}
	dropped := func(what string, ns *netnstest.NS) {
		t.Helper()
		for _, fe := range frontends {
			noAnswer(what+", "+fe.what, ns, "tcp", fe.addr)
			noAnswer(what+", UDP "+fe.what, ns, "udp", fe.addr)
		}
	}

	// The node's own requests arrive from one of its addresses, possibly
	// rewritten on lo by the masquerade: no source checked here (see the
	// masquerade step).
	sync(p, noLocalState(t, false), dataplane.Changes{Full: true})
	reached("local endpoint: the client", topo.client, nlClientAddr)
	reached("local endpoint: a pod", topo.pod, nlPodAddr)
	reached("local endpoint: the node", topo.node, "")
	// A connection the client holds across the change.
	held, err := netnstest.Dial(topo.client, "tcp", nlLBIP+":80", 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if _, err := netnstest.Exchange(held, "before", 3*time.Second); err != nil {
		t.Fatalf("held connection: %v", err)
	}

	// The local endpoint leaves, as an EndpointSlice change: partial sync.
	sync(p, noLocalState(t, true), edge)
	dropped("no local endpoint: the client", topo.client)
	reached("no local endpoint: a pod", topo.pod, nlPodAddr)
	reached("no local endpoint: the node", topo.node, "")
	answers("no local endpoint: the client, cluster IP", topo.client, "tcp", nlClusterIP+":80", "cip", nlClientAddr)
	if reply, err := netnstest.Exchange(held, "after", 3*time.Second); err != nil {
		t.Errorf("established connection after the local endpoint left: %v", err)
	} else if id, _, _ := netnstest.ReplyID(reply); id != "lb" {
		t.Errorf("established connection answered %q, want lb", reply)
	}

	// Without cluster CIDRs pods cannot be told apart: dropped too; the
	// node still passes.
	noCIDR, err := NewProxier(Config{}, topo.sets, topo.tables, nil)
	if err != nil {
		t.Fatal(err)
	}
	sync(noCIDR, noLocalState(t, true), dataplane.Changes{Full: true})
	dropped("no cluster CIDR: a pod", topo.pod)
	dropped("no cluster CIDR: the client", topo.client)
	reached("no cluster CIDR: the node", topo.node, "")
	sync(p, noLocalState(t, true), dataplane.Changes{Full: true})
	reached("cluster CIDR again: a pod", topo.pod, nlPodAddr)

	// The local endpoint is back: the client passes again.
	sync(p, noLocalState(t, false), edge)
	reached("local endpoint back: the client", topo.client, nlClientAddr)

	// Masquerade. Stand-ins for IPVS sending the load balancer IP and the
	// NodePort to the backend, after our hooks (which Sync keeps first):
	// in nat OUTPUT for the node's requests, in nat PREROUTING for the
	// pod's. Through them the backend sees who was masqueraded: the node's
	// requests (from the LB IP itself, or from its address on the
	// client's link) arrive from its address on the backend's link; the
	// pod's keep the pod's address.
	for _, chain := range []string{builtinOutput, builtinPrerouting} {
		for _, r := range []Rule{
			{"-d", nlLBIP + "/32", "-p", "tcp", "-m", "tcp", "--dport", "80", "-m", "comment", "--comment", "test stand-in for IPVS", "-j", "DNAT", "--to-destination", nlBackendAddr + ":8080"},
			{"-d", nlNodeAddr + "/32", "-p", "tcp", "-m", "tcp", "--dport", fmt.Sprint(nodePort), "-m", "comment", "--comment", "test stand-in for IPVS", "-j", "DNAT", "--to-destination", nlBackendAddr + ":8080"},
		} {
			if err := topo.tables.Append(TableNAT, chain, r); err != nil {
				t.Fatal(err)
			}
		}
	}
	nodePortAddr := fmt.Sprintf("%s:%d", nlNodeAddr, nodePort)
	for _, remote := range []bool{true, false} {
		what := map[bool]string{true: "no local endpoint", false: "local endpoint"}[remote]
		sync(p, noLocalState(t, remote), edge)
		answers(what+": the node to the LB IP, masqueraded", topo.node, "tcp", nlLBIP+":80", "be", nlNodeToBE)
		answers(what+": the node to the NodePort, masqueraded", topo.node, "tcp", nodePortAddr, "be", nlNodeToBE)
		answers(what+": a pod to the LB IP, source kept", topo.pod, "tcp", nlLBIP+":80", "be", nlPodAddr)
		answers(what+": a pod to the NodePort, source kept", topo.pod, "tcp", nodePortAddr, "be", nlPodAddr)
	}

	t.Run("cleanup", func(t *testing.T) {
		if err := p.Cleanup(ctx); err != nil {
			t.Fatal(err)
		}
		assertNoOwnedObjects(t, topo.sets, topo.tables)
	})
}
