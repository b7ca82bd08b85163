package iptables

import (
	"context"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/switchyard/switchyard/dataplane"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

// svc describes one Service port for test States.
type svc struct {
	ns, name, port string
	proto          dataplane.Protocol
	svcPort        uint16
	nodePort       uint16
	clusterIPs     []string
	externalIPs    []string
	lbIPs          []string
	local          bool     // externalTrafficPolicy: Local
	sourceRanges   []string // loadBalancerSourceRanges
	endpoints      []string // "ip:port", all ready, on this node (node-a)
	// remote are ready endpoints ("ip:port") on another node (node-b).
	remote []string
	// eps are more endpoints, as given.
	eps []dataplane.Endpoint
}

func addrs(t testing.TB, ss []string) []netip.Addr {
	t.Helper()
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func prefixes(t testing.TB, ss []string) []netip.Prefix {
	t.Helper()
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s).Masked())
	}
	return out
}

// newState builds a State from svc descriptions.
func newState(t testing.TB, svcs ...svc) *dataplane.State {
	t.Helper()
	st := dataplane.NewState()
	st.NodeName = "node-a"
	for _, s := range svcs {
		addService(t, st, s)
	}
	return st
}

func addService(t testing.TB, st *dataplane.State, s svc) {
	t.Helper()
	name := dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: s.ns, Name: s.name}, Port: s.port, Protocol: s.proto}
	st.Services[name] = &dataplane.ServicePort{
		Name: name, Port: s.svcPort, NodePort: s.nodePort,
		ClusterIPs: addrs(t, s.clusterIPs), ExternalIPs: addrs(t, s.externalIPs), LoadBalancerIPs: addrs(t, s.lbIPs),
		ExternalPolicyLocal: s.local, LoadBalancerSourceRanges: prefixes(t, s.sourceRanges),
	}
	var eps []dataplane.Endpoint
	for _, e := range s.endpoints {
		eps = append(eps, dataplane.Endpoint{Addr: netip.MustParseAddrPort(e), Ready: true, Serving: true, NodeName: "node-a"})
	}
	for _, e := range s.remote {
		eps = append(eps, dataplane.Endpoint{Addr: netip.MustParseAddrPort(e), Ready: true, Serving: true, NodeName: "node-b"})
	}
	eps = append(eps, s.eps...)
	slices.SortFunc(eps, dataplane.CompareEndpoints)
	if len(eps) > 0 {
		st.Endpoints[name] = eps
	}
}

// smallState is the golden State: a TCP Service with cluster, external and
// load balancer IPs, loadBalancerSourceRanges (one holding the node's IP),
// a NodePort and two endpoints, plus UDP and SCTP NodePort Services.
func smallState(t testing.TB) *dataplane.State {
	st := newState(t,
		svc{ns: "default", name: "web", port: "http", proto: dataplane.TCP, svcPort: 80, nodePort: 30080,
			clusterIPs: []string{"10.96.0.10"}, externalIPs: []string{"192.0.2.10"}, lbIPs: []string{"198.51.100.10"},
			sourceRanges: []string{"203.0.113.0/24", "192.168.10.0/24"},
			endpoints:    []string{"10.244.1.2:8080", "10.244.2.3:8080"}},
		svc{ns: "kube-system", name: "dns", port: "dns", proto: dataplane.UDP, svcPort: 53, nodePort: 30053,
			clusterIPs: []string{"10.96.0.53"}, endpoints: []string{"10.244.1.5:53"}},
		svc{ns: "default", name: "sig", port: "", proto: dataplane.SCTP, svcPort: 9000, nodePort: 30900,
			clusterIPs: []string{"10.96.0.90"}},
	)
	st.NodeIPs = []netip.Addr{netip.MustParseAddr("192.168.10.5")}
	return st
}

// testConfig is the golden Config: one cluster CIDR, drop-invalid on.
func testConfig() Config {
	return Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}, ConntrackDropInvalid: true}
}

// fakeKernel is a linked pair of fakes.
type fakeKernel struct {
	sets   *FakeIPSet
	tables *FakeTables
	sysctl *FakeSysctl
}

func newFakeKernel() *fakeKernel {
	sets := NewFakeIPSet()
	return &fakeKernel{sets: sets, tables: NewFakeTables(sets),
		sysctl: NewFakeSysctl(map[string]string{sysctlTCPBeLiberal: "0"})}
}

func (k *fakeKernel) proxier(t testing.TB, cfg Config) *Proxier {
	t.Helper()
	p, err := NewProxier(cfg, k.sets, k.tables, k.sysctl)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func (k *fakeKernel) resetOps() {
	k.sets.ResetOps()
	k.tables.ResetOps()
}

// writes returns every mutating call since the last resetOps.
func (k *fakeKernel) writes() []string {
	return append(k.sets.Ops(), k.tables.Ops()...)
}

func (k *fakeKernel) dump() string { return k.sets.Dump() + k.tables.Dump() }

func fullSync(t testing.TB, p *Proxier, st *dataplane.State) {
	t.Helper()
	if err := p.Sync(context.Background(), st, dataplane.Changes{Full: true}); err != nil {
		t.Fatalf("full sync: %v", err)
	}
}

func partialSync(t testing.TB, p *Proxier, st *dataplane.State, changed ...dataplane.ServiceName) {
	t.Helper()
	ch := dataplane.Changes{Services: map[dataplane.ServiceName]struct{}{}}
	for _, n := range changed {
		ch.Services[n] = struct{}{}
	}
	if err := p.Sync(context.Background(), st, ch); err != nil {
		t.Fatalf("partial sync: %v", err)
	}
}

// ownedDump renders what the kernel (real or fake) holds of ours, in
// DesiredState.Dump's format and order, so it can be compared with
// want.Dump(): the desired sets, the desired chains, the first rules of
// each hooked chain (as many as it has desired hooks). It fails the test if
// an owned set or chain exists that want does not list, or if a hooked
// chain has more or fewer hooks of ours than desired.
func ownedDump(t testing.TB, sets IPSet, tables Tables, want DesiredState) string {
	t.Helper()
	var b strings.Builder
	names, err := sets.ListNames()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		if ownsSet(want.Family, name) && want.Set(name) == nil {
			t.Errorf("unexpected owned set %s", name)
		}
	}
	for _, ds := range want.Sets {
		s, err := sets.Get(ds.Spec.Name)
		if err != nil {
			t.Errorf("set %s: %v", ds.Spec.Name, err)
			continue
		}
		slices.SortFunc(s.Members, compareMembers)
		writeSet(&b, s.SetSpec, s.Members)
	}
	for _, table := range tableNames() {
		chains, err := tables.ListChains(table)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range chains {
			if isOwned(c) && want.Chain(table, c) == nil {
				t.Errorf("unexpected owned chain %s %s", table, c)
			}
		}
	}
	for _, dc := range want.Chains {
		rules, err := tables.ListRules(dc.Table, dc.Name)
		if err != nil {
			t.Errorf("chain %s %s: %v", dc.Table, dc.Name, err)
			continue
		}
		writeChain(&b, dc.Table, dc.Name, rules)
	}
	// Each hooked chain has exactly its desired number of hooks of ours;
	// the i-th hook of a chain is rendered from the chain's i-th rule.
	pos := map[[2]string]int{}
	for _, g := range groupHooks(want.Hooks) {
		rules, err := tables.ListRules(g.table, g.chain)
		if err != nil {
			t.Fatal(err)
		}
		ours := 0
		for _, r := range rules {
			if isOurHook(r) {
				ours++
			}
		}
		if ours != len(g.rules) {
			t.Errorf("%s %s has %d hooks of ours, want %d: %v", g.table, g.chain, ours, len(g.rules), rules)
		}
	}
	for _, h := range want.Hooks {
		rules, err := tables.ListRules(h.Table, h.Chain)
		if err != nil {
			t.Fatal(err)
		}
		k := [2]string{h.Table, h.Chain}
		i := pos[k]
		pos[k]++
		rule := "(none)"
		if i < len(rules) {
			rule = rules[i].Line(h.Chain)
		}
		b.WriteString("hook " + h.Table + " " + h.Chain + "\n  " + rule + "\n")
	}
	return b.String()
}

// checkGolden compares got with testdata/name, rewriting it with -update.
func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs (run go test -update after checking):\n%s", path, lineDiff(string(want), got))
	}
}

// lineDiff lists the lines only in want (-) or only in got (+).
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for _, l := range w {
		if !slices.Contains(g, l) {
			b.WriteString("- " + l + "\n")
		}
	}
	for _, l := range g {
		if !slices.Contains(w, l) {
			b.WriteString("+ " + l + "\n")
		}
	}
	if b.Len() == 0 {
		return "(same lines, different order)\n--- want\n" + want + "--- got\n" + got
	}
	return b.String()
}
