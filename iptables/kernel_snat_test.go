package iptables

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/test/netnstest"
)

// snatTopology is a node with three neighbours, each in its own namespace:
//
//	client 192.168.77.2 --- 192.168.77.1 [node] 10.244.1.1 --- 10.244.1.2 backend (echo :8080)
//	                                     [node] 10.244.2.1 --- 10.244.2.2 pod (inside the cluster CIDR)
//
// The node runs the Proxier. There is no IPVS on this host, so the test
// stands in for it with plain DNAT rules in the node's PREROUTING, after
// our hook: the cluster IP 10.96.0.10:80 and NodePort 30080 on any node
// address go to the backend.
type snatTopology struct {
	node, client, backend, pod *netnstest.NS
	sets                       *NetlinkIPSet
	tables                     *GoIPTables
	sysctl                     *ProcSysctl
}

const (
	clientAddr    = "192.168.77.2"
	nodeAddr      = "192.168.77.1"
	nodeToBackend = "10.244.1.1"
	backendAddr   = "10.244.1.2"
	podAddr       = "10.244.2.2"
	clusterIP     = "10.96.0.10"
	nodePort      = 30080
)

func newSNATTopology(t *testing.T, binary string) *snatTopology {
	t.Helper()
	topo := &snatTopology{
		node: netnstest.New(t, "sy-ipt-node"), client: netnstest.New(t, "sy-ipt-cli"),
		backend: netnstest.New(t, "sy-ipt-be"), pod: netnstest.New(t, "sy-ipt-pod"),
	}
	p := netip.MustParsePrefix
	netnstest.Veth(t, topo.node, topo.client, "cli0", "eth0", p(nodeAddr+"/24"), p(clientAddr+"/24"))
	netnstest.Veth(t, topo.node, topo.backend, "be0", "eth0", p(nodeToBackend+"/24"), p(backendAddr+"/24"))
	netnstest.Veth(t, topo.node, topo.pod, "pod0", "eth0", p("10.244.2.1/24"), p(podAddr+"/24"))
	def := p("0.0.0.0/0")
	netnstest.AddRoute(t, topo.client, def, netip.MustParseAddr(nodeAddr))
	netnstest.AddRoute(t, topo.backend, def, netip.MustParseAddr(nodeToBackend))
	netnstest.AddRoute(t, topo.pod, def, netip.MustParseAddr("10.244.2.1"))

	topo.sets, topo.tables, topo.sysctl = kernelClients(t, topo.node, binary)
	for name, value := range map[string]string{
		"net/ipv4/ip_forward": "1",
		// Hairpin traffic leaves the interface it came in on; keep the node
		// from sending ICMP redirects the backend might act on.
		"net/ipv4/conf/all/send_redirects": "0",
		"net/ipv4/conf/be0/send_redirects": "0",
	} {
		if err := topo.sysctl.Set(name, value); err != nil {
			t.Fatal(err)
		}
	}
	netnstest.StartEchoServer(t, topo.backend, "tcp", backendAddr+":8080", "be")

	// The IPVS stand-in, appended: our hook must end up above it.
	for _, r := range []Rule{
		{"-d", clusterIP + "/32", "-p", "tcp", "-m", "tcp", "--dport", "80", "-m", "comment", "--comment", "test stand-in for IPVS", "-j", "DNAT", "--to-destination", backendAddr + ":8080"},
		{"-p", "tcp", "-m", "addrtype", "--dst-type", "LOCAL", "-m", "tcp", "--dport", fmt.Sprint(nodePort), "-m", "comment", "--comment", "test stand-in for IPVS", "-j", "DNAT", "--to-destination", backendAddr + ":8080"},
	} {
		if err := topo.tables.Append(TableNAT, builtinPrerouting, r); err != nil {
			t.Fatal(err)
		}
	}
	return topo
}

// seenSource sends one request from ns to addr and returns the source
// address the backend saw (without port).
func seenSource(t *testing.T, ns *netnstest.NS, addr string) string {
	t.Helper()
	reply, err := netnstest.Request(ns, "tcp", addr, "hello", 3*time.Second)
	if err != nil {
		t.Fatalf("request %s from %s: %v", addr, ns.Name(), err)
	}
	id, remote, err := netnstest.ReplyID(reply)
	if err != nil {
		t.Fatal(err)
	}
	if id != "be" {
		t.Fatalf("reply %q from %s, want the backend", reply, addr)
	}
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		t.Fatalf("reply %q: %v", reply, err)
	}
	return ap.Addr().String()
}

// snatState is one Service: cluster IP 10.96.0.10:80 and NodePort 30080,
// with the backend as its only endpoint.
func snatState(t *testing.T) *dataplane.State {
	return newState(t, svc{ns: "default", name: "echo", proto: dataplane.TCP, svcPort: 80, nodePort: nodePort,
		clusterIPs: []string{clusterIP}, endpoints: []string{backendAddr + ":8080"}})
}

// TestKernelSNAT sends real packets through a node namespace programmed by
// the Proxier, for each iptables backend.
func TestKernelSNAT(t *testing.T) {
	requireKernel(t)
	for _, bin := range backends(t) {
		t.Run(bin, func(t *testing.T) { testKernelSNAT(t, bin) })
	}
}

func testKernelSNAT(t *testing.T, binary string) {
	topo := newSNATTopology(t, binary)
	ctx := context.Background()
	nodePortAddr := fmt.Sprintf("%s:%d", nodeAddr, nodePort)
	vip := clusterIP + ":80"

	// Control: the stand-in alone forwards without SNAT.
	if got := seenSource(t, topo.client, nodePortAddr); got != clientAddr {
		t.Fatalf("before Sync, NodePort traffic arrived from %s, want %s (no SNAT yet)", got, clientAddr)
	}

	foreign := addForeignKernelObjects(t, topo)
	cfg := Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}, ConntrackDropInvalid: true, ConntrackTCPBeLiberal: true}
	p, err := NewProxier(cfg, topo.sets, topo.tables, topo.sysctl)
	if err != nil {
		t.Fatal(err)
	}
	st := snatState(t)
	if err := p.Sync(ctx, st, dataplane.Changes{Full: true}); err != nil {
		t.Fatalf("sync: %v", err)
	}
	want := Desired(st, p.cfg)
	if got := ownedDump(t, topo.sets, topo.tables, want); got != want.Dump() {
		t.Fatalf("kernel differs from desired:\n%s", lineDiff(want.Dump(), got))
	}
	if v, err := topo.sysctl.Get(sysctlTCPBeLiberal); err != nil || v != "1" {
		t.Errorf("nf_conntrack_tcp_be_liberal = %q, %v; want 1", v, err)
	}

	t.Run("NodePort is masqueraded", func(t *testing.T) {
		if got := seenSource(t, topo.client, nodePortAddr); got != nodeToBackend {
			t.Errorf("NodePort traffic arrived from %s, want the node's %s", got, nodeToBackend)
		}
	})
	t.Run("cluster IP from outside the cluster CIDR is masqueraded", func(t *testing.T) {
		if got := seenSource(t, topo.client, vip); got != nodeToBackend {
			t.Errorf("arrived from %s, want %s", got, nodeToBackend)
		}
	})
	t.Run("cluster IP from inside the cluster CIDR keeps its source", func(t *testing.T) {
		if got := seenSource(t, topo.pod, vip); got != podAddr {
			t.Errorf("arrived from %s, want the pod's own %s", got, podAddr)
		}
	})
	t.Run("hairpin is masqueraded", func(t *testing.T) {
		if got := seenSource(t, topo.backend, vip); got != nodeToBackend {
			t.Errorf("backend reaching itself arrived from %s, want %s", got, nodeToBackend)
		}
	})

	t.Run("restart adoption changes nothing", func(t *testing.T) {
		cs, ct := &countingIPSet{IPSet: topo.sets}, &countingTables{Tables: topo.tables}
		p2, err := NewProxier(cfg, cs, ct, topo.sysctl)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := p2.Sync(ctx, st, dataplane.Changes{Full: true}); err != nil {
			t.Fatal(err)
		}
		t.Logf("full sync with nothing to change took %v", time.Since(start))
		if w := append(cs.writes, ct.writes...); len(w) != 0 {
			t.Errorf("restarted proxier wrote %d times (canonical form mismatch?):\n%s", len(w), strings.Join(w, "\n"))
		}
	})

	t.Run("drift is repaired on the next sync", func(t *testing.T) {
		// Our hook gone from PREROUTING, the NodePort rule edited.
		pre, err := topo.tables.ListRules(TableNAT, builtinPrerouting)
		if err != nil || len(pre) == 0 || !isOurHook(pre[0]) {
			t.Fatalf("PREROUTING %v, %v: want our hook first", pre, err)
		}
		if err := topo.tables.DeleteAt(TableNAT, builtinPrerouting, 1); err != nil {
			t.Fatal(err)
		}
		if got := seenSource(t, topo.client, nodePortAddr); got != clientAddr {
			t.Errorf("without the hook NodePort traffic arrived from %s, want unmasqueraded %s", got, clientAddr)
		}
		if err := topo.tables.Replace(TableNAT, chainNodePort, 1, Rule{"-m", "comment", "--comment", "edited", "-j", "RETURN"}); err != nil {
			t.Fatal(err)
		}
		if err := p.Sync(ctx, st, dataplane.Changes{}); err != nil {
			t.Fatal(err)
		}
		if got := ownedDump(t, topo.sets, topo.tables, want); got != want.Dump() {
			t.Errorf("not repaired:\n%s", lineDiff(want.Dump(), got))
		}
		if got := seenSource(t, topo.client, nodePortAddr); got != nodeToBackend {
			t.Errorf("after repair NodePort traffic arrived from %s, want %s", got, nodeToBackend)
		}
	})

	t.Run("a set past 65536 members is grown and used", func(t *testing.T) {
		// 70000 more endpoints (addresses nobody uses) push the loop-back
		// set from maxelem 65536 to 262144, through a temp set and a swap.
		big := dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: "default", Name: "big"}, Protocol: dataplane.TCP}
		st.Services[big] = &dataplane.ServicePort{Name: big, Port: 80, ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.1.1")}}
		for i := range 70000 {
			st.Endpoints[big] = append(st.Endpoints[big], dataplane.Endpoint{Ready: true,
				Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(100 + i>>16), byte(i >> 8), byte(i)}), 8080)})
		}
		start := time.Now()
		if err := p.Sync(ctx, st, dataplane.Changes{Services: map[dataplane.ServiceName]struct{}{big.ServiceName: {}}}); err != nil {
			t.Fatal(err)
		}
		t.Logf("sync adding 70000 set members took %v", time.Since(start))
		s, err := topo.sets.Get(setLoopBack)
		if err != nil {
			t.Fatal(err)
		}
		if len(s.Members) != 70001 || s.MaxElem != 262144 {
			t.Errorf("loop-back set: %d members, maxelem %d; want 70001, 262144", len(s.Members), s.MaxElem)
		}
		if _, err := topo.sets.Get(tempSetName(FamilyINet, setLoopBack)); !IsNotFound(err) {
			t.Errorf("temp set left behind: %v", err)
		}
		// Steady state: a partial sync trusts the cached members; a full one
		// (here from a fresh Proxier, as after a restart) reads the 70001
		// members back; neither writes anything.
		start = time.Now()
		if err := p.Sync(ctx, st, dataplane.Changes{}); err != nil {
			t.Fatal(err)
		}
		t.Logf("steady-state partial sync with a 70001-member set took %v", time.Since(start))
		cs, ct := &countingIPSet{IPSet: topo.sets}, &countingTables{Tables: topo.tables}
		p2, err := NewProxier(cfg, cs, ct, topo.sysctl)
		if err != nil {
			t.Fatal(err)
		}
		start = time.Now()
		if err := p2.Sync(ctx, st, dataplane.Changes{Full: true}); err != nil {
			t.Fatal(err)
		}
		t.Logf("full sync reading back a 70001-member set took %v", time.Since(start))
		if w := append(cs.writes, ct.writes...); len(w) != 0 {
			t.Errorf("steady-state sync wrote %d times: %q", len(w), w)
		}
		// The backend's own entry is in the grown set: hairpin still works.
		if got := seenSource(t, topo.backend, vip); got != nodeToBackend {
			t.Errorf("hairpin through the grown set arrived from %s, want %s", got, nodeToBackend)
		}
	})

	t.Run("cleanup removes ours and only ours", func(t *testing.T) {
		// A fresh Proxier, as `switchyard --cleanup` would be.
		p3, err := NewProxier(Config{}, topo.sets, topo.tables, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 2 {
			if err := p3.Cleanup(ctx); err != nil {
				t.Fatalf("cleanup %d: %v", i, err)
			}
		}
		assertNoOwnedObjects(t, topo.sets, topo.tables)
		foreign.check(t)
		if got := seenSource(t, topo.client, nodePortAddr); got != clientAddr {
			t.Errorf("after Cleanup NodePort traffic arrived from %s, want unmasqueraded %s", got, clientAddr)
		}
	})
}

// foreignObjects is what other software put in the node namespace.
type foreignObjects struct {
	topo   *snatTopology
	before map[string][]string
}

func addForeignKernelObjects(t *testing.T, topo *snatTopology) *foreignObjects {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(topo.sets.Create(SetSpec{Name: "FOREIGN-SET", Type: HashIPPort, Family: FamilyINet, MaxElem: 1024}))
	must(topo.sets.Add("FOREIGN-SET", IPPortMember(netip.MustParseAddr("203.0.113.7"), protoTCP, 22)))
	must(topo.tables.NewChain(TableNAT, "FOREIGN-CHAIN"))
	must(topo.tables.Append(TableNAT, "FOREIGN-CHAIN", Rule{"-p", "tcp", "-m", "comment", "--comment", "foreign", "-j", "RETURN"}))
	must(topo.tables.Append(TableNAT, builtinPostrouting, Rule{"-s", "203.0.113.0/24", "-m", "comment", "--comment", "foreign masquerade", "-j", "MASQUERADE"}))
	must(topo.tables.Append(TableFilter, builtinForward, Rule{"-m", "comment", "--comment", "foreign drop", "-m", "set", "--match-set", "FOREIGN-SET", "dst,dst", "-j", "DROP"}))
	f := &foreignObjects{topo: topo}
	f.before = f.snapshot(t)
	return f
}

func (f *foreignObjects) snapshot(t *testing.T) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	s, err := f.topo.sets.Get("FOREIGN-SET")
	if err != nil {
		t.Fatalf("foreign set: %v", err)
	}
	for _, m := range s.Members {
		out["set"] = append(out["set"], m.String())
	}
	for _, tc := range [][2]string{{TableNAT, "FOREIGN-CHAIN"}, {TableNAT, builtinPrerouting}, {TableNAT, builtinPostrouting}, {TableFilter, builtinForward}} {
		rules, err := f.topo.tables.ListRules(tc[0], tc[1])
		if err != nil {
			t.Fatalf("foreign chain %v: %v", tc, err)
		}
		for _, r := range rules {
			if !isOurHook(r) {
				out[tc[0]+"/"+tc[1]] = append(out[tc[0]+"/"+tc[1]], r.String())
			}
		}
	}
	return out
}

// check fails unless every foreign object is as it was.
func (f *foreignObjects) check(t *testing.T) {
	t.Helper()
	now := f.snapshot(t)
	for k, v := range f.before {
		if !slices.Equal(now[k], v) {
			t.Errorf("foreign %s changed:\n%q\nwas\n%q", k, now[k], v)
		}
	}
}

func assertNoOwnedObjects(t *testing.T, sets IPSet, tables Tables) {
	t.Helper()
	names, err := sets.ListNames()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if isOwned(n) {
			t.Errorf("set %s left after Cleanup", n)
		}
	}
	for _, table := range tableNames() {
		chains, err := tables.ListChains(table)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range chains {
			if isOwned(c) {
				t.Errorf("chain %s %s left after Cleanup", table, c)
			}
			rules, err := tables.ListRules(table, c)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range rules {
				if isOwned(r.Target()) || strings.HasPrefix(r.Comment(), hookCommentPrefix) || strings.Contains(r.String(), ownedPrefix) {
					t.Errorf("rule %s left after Cleanup", r.Line(c))
				}
			}
		}
	}
}
