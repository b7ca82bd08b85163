package iptables

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/switchyard/switchyard/dataplane"
)

// The dual-stack node: one Proxier per family, sharing the ipsets (as the
// kernel's sets are per namespace, not per family), each with its own
// tables (iptables, ip6tables).

// dualKernel is a FakeIPSet shared by an IPv4 and an IPv6 FakeTables.
type dualKernel struct {
	sets       *FakeIPSet
	v4, v6     *FakeTables
	sysctl     *FakeSysctl
	tablesFor  map[Family]*FakeTables
	cfg4, cfg6 Config
}

func newDualKernel() *dualKernel {
	sets := NewFakeIPSet()
	k := &dualKernel{sets: sets, v4: NewFakeTablesFamily(FamilyINet, sets), v6: NewFakeTablesFamily(FamilyINet6, sets),
		sysctl: NewFakeSysctl(map[string]string{sysctlTCPBeLiberal: "0"})}
	k.tablesFor = map[Family]*FakeTables{FamilyINet: k.v4, FamilyINet6: k.v6}
	cidrs := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/56")}
	k.cfg4 = Config{ClusterCIDRs: cidrs, ConntrackDropInvalid: true}
	k.cfg6 = Config{Family: FamilyINet6, ClusterCIDRs: cidrs, ConntrackDropInvalid: true}
	return k
}

func (k *dualKernel) proxiers(t testing.TB) (p4, p6 *Proxier) {
	t.Helper()
	var err error
	if p4, err = NewProxier(k.cfg4, k.sets, k.v4, k.sysctl); err != nil {
		t.Fatal(err)
	}
	if p6, err = NewProxier(k.cfg6, k.sets, k.v6, k.sysctl); err != nil {
		t.Fatal(err)
	}
	return p4, p6
}

// chain is the dual-stack IPVS dataplane's SNAT part, as the agent builds it.
func (k *dualKernel) chain(t testing.TB) dataplane.Chain {
	p4, p6 := k.proxiers(t)
	return dataplane.Chain{p4, p6}
}

func (k *dualKernel) resetOps() {
	k.sets.ResetOps()
	k.v4.ResetOps()
	k.v6.ResetOps()
}

// writes returns every mutating call since resetOps, ip6tables ones
// prefixed "v6 ".
func (k *dualKernel) writes() []string {
	out := append(k.sets.Ops(), k.v4.Ops()...)
	for _, op := range k.v6.Ops() {
		out = append(out, "v6 "+op)
	}
	return out
}

func (k *dualKernel) dump() string {
	return k.sets.Dump() + k.v4.Dump() + "--- ip6tables\n" + k.v6.Dump()
}

// expectDesired checks both families' kernel objects against Desired.
func (k *dualKernel) expectDesired(t *testing.T, st *dataplane.State) {
	t.Helper()
	for _, cfg := range []Config{k.cfg4, k.cfg6} {
		cfg.RandomFully = true
		want := Desired(st, cfg)
		if got := ownedDump(t, k.sets, k.tablesFor[want.Family], want); got != want.Dump() {
			t.Errorf("%s kernel differs from desired:\n%s", want.Family, lineDiff(want.Dump(), got))
		}
	}
}

func syncChain(t *testing.T, c dataplane.Chain, st *dataplane.State, ch dataplane.Changes) {
	t.Helper()
	if err := c.Sync(context.Background(), st, ch); err != nil {
		t.Fatalf("sync: %v", err)
	}
}

// dualState is the golden dual-stack State: smallState plus IPv6 frontends
// and endpoints, IPv6 source ranges (none holding a node IP), and an
// IPv6-only Service.
func dualState(t testing.TB) *dataplane.State {
	st := newState(t,
		svc{ns: "default", name: "web", port: "http", proto: dataplane.TCP, svcPort: 80, nodePort: 30080,
			clusterIPs: []string{"10.96.0.10", "fd00:96::10"}, externalIPs: []string{"192.0.2.10", "2001:db8::10"},
			lbIPs:        []string{"198.51.100.10", "2001:db8:1::10"},
			sourceRanges: []string{"203.0.113.0/24", "192.168.10.0/24", "2001:db8:77::/48"},
			endpoints:    []string{"10.244.1.2:8080", "10.244.2.3:8080", "[fd00:244:0:1::2]:8080", "[fd00:244:0:2::3]:8080"}},
		svc{ns: "kube-system", name: "dns", port: "dns", proto: dataplane.UDP, svcPort: 53, nodePort: 30053,
			clusterIPs: []string{"10.96.0.53", "fd00:96::53"}, endpoints: []string{"10.244.1.5:53", "[fd00:244:0:1::5]:53"}},
		svc{ns: "default", name: "sig", port: "", proto: dataplane.SCTP, svcPort: 9000, nodePort: 30900,
			clusterIPs: []string{"10.96.0.90"}},
		svc{ns: "default", name: "v6only", port: "", proto: dataplane.TCP, svcPort: 443, nodePort: 30443, local: true,
			clusterIPs: []string{"fd00:96::443"}, lbIPs: []string{"2001:db8:1::443"},
			endpoints: []string{"[fd00:244:0:1::9]:8443"}},
	)
	st.NodeIPs = []netip.Addr{netip.MustParseAddr("192.168.10.5"), netip.MustParseAddr("fd00:10::5")}
	return st
}

// The IPv6 desired state, golden: ip6tables rules with IPv6 prefixes and
// SWITCHYARD6- sets of family inet6; the IPv4 one of the same State has no
// IPv6 address.
func TestDesiredIPv6Golden(t *testing.T) {
	k := newDualKernel()
	cfg := k.cfg6
	cfg.RandomFully = true
	d := Desired(dualState(t), cfg)
	if d.Family != FamilyINet6 {
		t.Fatalf("family %q", d.Family)
	}
	checkGolden(t, "desired_small6.golden", d.Dump())
	for _, s := range d.Sets {
		if s.Spec.Family != FamilyINet6 || !ownsSet(FamilyINet6, s.Spec.Name) || ownsSet(FamilyINet, s.Spec.Name) {
			t.Errorf("IPv6 set %+v", s.Spec)
		}
	}
	v4 := Desired(dualState(t), k.cfg4).Dump()
	for _, bad := range []string{"fd00:", "2001:db8", "::", "SWITCHYARD6-"} {
		if strings.Contains(v4, bad) {
			t.Errorf("IPv4 desired state contains %q:\n%s", bad, v4)
		}
	}
}

// Both families from scratch, then a restart: the second pair of Proxiers
// writes nothing, on a full and on a partial sync.
func TestDualStackSyncAndRestart(t *testing.T) {
	k := newDualKernel()
	st := dualState(t)
	syncChain(t, k.chain(t), st, dataplane.Changes{Full: true})
	k.expectDesired(t, st)
	// Chains have the same names in both families, each in its own tables.
	for _, tbl := range []*FakeTables{k.v4, k.v6} {
		if rules, err := tbl.ListRules(TableNAT, chainServices); err != nil || len(rules) < 3 {
			t.Errorf("%s SWITCHYARD-SERVICES: %v %v", tbl.Family(), rules, err)
		}
	}

	k.resetOps()
	c := k.chain(t)
	syncChain(t, c, st, dataplane.Changes{Full: true})
	syncChain(t, c, st, dataplane.Changes{})
	if w := k.writes(); len(w) != 0 {
		t.Errorf("restarted proxiers wrote %d times:\n%s", len(w), strings.Join(w, "\n"))
	}
}

// An IPv6 endpoint change costs one IPv6 set operation and nothing in the
// IPv4 family; an IPv4 one the reverse.
func TestDualStackEndpointChangeIsOneSetOp(t *testing.T) {
	k := newDualKernel()
	st := dualState(t)
	c := k.chain(t)
	syncChain(t, c, st, dataplane.Changes{Full: true})
	web := dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: "default", Name: "web"}, Port: "http", Protocol: dataplane.TCP}
	changed := dataplane.Changes{Services: map[dataplane.ServiceName]struct{}{web.ServiceName: {}}}
	for _, tc := range []struct {
		addr, want string
	}{
		{"[fd00:244:0:3::4]:8080", "add SWITCHYARD6-LOOP-BACK fd00:244:0:3::4,tcp:8080,fd00:244:0:3::4"},
		{"10.244.3.4:8080", "add SWITCHYARD-LOOP-BACK 10.244.3.4,tcp:8080,10.244.3.4"},
	} {
		k.resetOps()
		st.Endpoints[web] = append(st.Endpoints[web], dataplane.Endpoint{Addr: netip.MustParseAddrPort(tc.addr), Ready: true, Serving: true})
		slices.SortFunc(st.Endpoints[web], dataplane.CompareEndpoints)
		syncChain(t, c, st, changed)
		if got := k.writes(); !slices.Equal(got, []string{tc.want}) {
			t.Errorf("add endpoint %s: writes %q, want %q", tc.addr, got, tc.want)
		}
	}
	// The only IPv6 NodePort Service with externalTrafficPolicy Local goes:
	// the IPv6 chains lose their LOCAL rules, the IPv4 ones stay untouched.
	v6only := dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: "default", Name: "v6only"}, Protocol: dataplane.TCP}
	delete(st.Services, v6only)
	delete(st.Endpoints, v6only)
	k.resetOps()
	syncChain(t, c, st, dataplane.Changes{Services: map[dataplane.ServiceName]struct{}{v6only.ServiceName: {}}})
	for _, w := range k.writes() {
		if !strings.HasPrefix(w, "v6 ") && !strings.Contains(w, "SWITCHYARD6-") {
			t.Errorf("IPv6-only change wrote in the IPv4 family: %s", w)
		}
	}
	k.expectDesired(t, st)
}

// Full syncs remove stale sets of their own family only: each family's
// Proxier leaves the other's sets (which ip6tables or iptables rules
// reference) alone, even after the other family's Services are all gone.
func TestDualStackStaleSetsPerFamily(t *testing.T) {
	k := newDualKernel()
	st := dualState(t)
	c := k.chain(t)
	syncChain(t, c, st, dataplane.Changes{Full: true})
	for _, s := range []SetSpec{
		{Name: tempSetName(FamilyINet6, setName(FamilyINet6, setLoopBack)), Type: HashIPPortIP, Family: FamilyINet6, MaxElem: 1 << 17},
		{Name: tempSetName(FamilyINet, setLoopBack), Type: HashIPPortIP, Family: FamilyINet, MaxElem: 1 << 17},
	} {
		if err := k.sets.Create(s); err != nil {
			t.Fatal(err)
		}
	}
	k.resetOps()
	syncChain(t, c, st, dataplane.Changes{Full: true})
	k.expectDesired(t, st)
	var destroys []string
	for _, w := range k.writes() {
		if strings.HasPrefix(w, "destroy ") {
			destroys = append(destroys, w)
		}
	}
	slices.Sort(destroys)
	want := []string{"destroy " + tempSetName(FamilyINet, setLoopBack), "destroy " + tempSetName(FamilyINet6, setName(FamilyINet6, setLoopBack))}
	if !slices.Equal(destroys, want) {
		t.Errorf("destroyed %q, want only the two temp sets %q", destroys, want)
	}
}

// An IPv6 set past 65536 members grows through an IPv6 temp set.
func TestDualStackIPv6SetGrows(t *testing.T) {
	k := newDualKernel()
	st := dualState(t)
	c := k.chain(t)
	syncChain(t, c, st, dataplane.Changes{Full: true})
	big := dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: "default", Name: "big"}, Protocol: dataplane.TCP}
	st.Services[big] = &dataplane.ServicePort{Name: big, Port: 80, ClusterIPs: []netip.Addr{netip.MustParseAddr("fd00:96::1:1")}}
	base := netip.MustParseAddr("fd00:244:1::").As16()
	for i := range 40000 {
		a := base
		a[14], a[15] = byte(i>>8), byte(i)
		st.Endpoints[big] = append(st.Endpoints[big], dataplane.Endpoint{Addr: netip.AddrPortFrom(netip.AddrFrom16(a), 8080), Ready: true})
	}
	k.resetOps()
	syncChain(t, c, st, dataplane.Changes{Services: map[dataplane.ServiceName]struct{}{big.ServiceName: {}}})
	loop6 := setName(FamilyINet6, setLoopBack)
	s, err := k.sets.Get(loop6)
	if err != nil || s.MaxElem != 131072 || len(s.Members) != 40004 {
		t.Fatalf("%s after growing: %+v %v", loop6, s.SetSpec, err)
	}
	tmp := tempSetName(FamilyINet6, loop6)
	if !slices.Contains(k.sets.Ops(), "swap "+loop6+" "+tmp) {
		t.Errorf("no swap with %s in %d ops", tmp, len(k.sets.Ops()))
	}
	k.expectDesired(t, st)
}

// Cleanup of one family leaves the other's objects working; both together
// (as `switchyard --cleanup`, from fresh Proxiers) leave exactly the
// foreign objects.
func TestDualStackCleanup(t *testing.T) {
	k := newDualKernel()
	// Foreign objects in both families.
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(k.sets.Create(SetSpec{Name: "FOREIGN6", Type: HashIPPort, Family: FamilyINet6, MaxElem: 1024}))
	must(k.v6.Append(TableFilter, builtinForward, Rule{"-m", "set", "--match-set", "FOREIGN6", "dst,dst", "-j", "DROP"}))
	must(k.v6.Append(TableNAT, builtinPostrouting, Rule{"-s", "2001:db8:77::/64", "-j", "MASQUERADE"}))
	must(k.v4.Append(TableNAT, builtinPostrouting, Rule{"-s", "203.0.113.0/24", "-j", "MASQUERADE"}))
	before := k.dump()

	st := dualState(t)
	syncChain(t, k.chain(t), st, dataplane.Changes{Full: true})

	// IPv4 alone: the IPv6 family is untouched.
	p4, _ := k.proxiers(t)
	k.resetOps()
	if err := p4.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	cfg6 := k.cfg6
	cfg6.RandomFully = true
	want6 := Desired(st, cfg6)
	if got := ownedDump(t, k.sets, k.v6, want6); got != want6.Dump() {
		t.Errorf("IPv4 Cleanup changed the IPv6 family:\n%s", lineDiff(want6.Dump(), got))
	}
	for _, w := range append(k.sets.Ops(), k.v6.Ops()...) {
		if strings.Contains(w, "SWITCHYARD6-") {
			t.Errorf("IPv4 Cleanup touched an IPv6 object: %s", w)
		}
	}

	// Everything, from fresh Proxiers, twice.
	for i := range 2 {
		if err := k.chain(t).Cleanup(context.Background()); err != nil {
			t.Fatalf("cleanup %d: %v", i, err)
		}
	}
	if got := k.dump(); got != before {
		t.Errorf("after dual-stack Cleanup:\n%s", lineDiff(before, got))
	}
}

// A Proxier refuses Tables of the other family, and the fake tables refuse
// what the real ones would: a set of the other family, an address of the
// other family.
func TestFamilyMismatchRefused(t *testing.T) {
	k := newDualKernel()
	if _, err := NewProxier(k.cfg6, k.sets, k.v4, nil); err == nil {
		t.Error("IPv6 proxier accepted IPv4 tables")
	}
	if _, err := NewProxier(k.cfg4, k.sets, k.v6, nil); err == nil {
		t.Error("IPv4 proxier accepted IPv6 tables")
	}
	if _, err := NewProxier(Config{Family: "inet7"}, k.sets, k.v4, nil); err == nil {
		t.Error("unknown family accepted")
	}
	p4, p6 := k.proxiers(t)
	if p4.Name() != "iptables" || p6.Name() != "ip6tables" || p6.Family() != FamilyINet6 {
		t.Errorf("names %q %q", p4.Name(), p6.Name())
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(k.sets.Create(SetSpec{Name: "S4", Type: HashIPPort, Family: FamilyINet}))
	must(k.sets.Create(SetSpec{Name: "S6", Type: HashIPPort, Family: FamilyINet6}))
	for _, tc := range []struct {
		tables *FakeTables
		rule   Rule
		ok     bool
	}{
		{k.v4, Rule{"-m", "set", "--match-set", "S4", "dst,dst", "-j", "ACCEPT"}, true},
		{k.v4, Rule{"-m", "set", "--match-set", "S6", "dst,dst", "-j", "ACCEPT"}, false},
		{k.v6, Rule{"-m", "set", "--match-set", "S6", "dst,dst", "-j", "ACCEPT"}, true},
		{k.v6, Rule{"-m", "set", "--match-set", "S4", "dst,dst", "-j", "ACCEPT"}, false},
		{k.v4, Rule{"-s", "127.0.0.0/8", "-j", "RETURN"}, true},
		{k.v4, Rule{"-s", "::1/128", "-j", "RETURN"}, false},
		{k.v6, Rule{"!", "-s", "fd00::/64", "-j", "RETURN"}, true},
		{k.v6, Rule{"-d", "10.0.0.1", "-j", "RETURN"}, false},
	} {
		err := tc.tables.Append(TableFilter, "INPUT", tc.rule)
		if (err == nil) != tc.ok {
			t.Errorf("%s tables, %s: error %v, want ok=%v", tc.tables.Family(), tc.rule, err, tc.ok)
		}
	}
	// A set referenced from ip6tables only cannot be destroyed either.
	if err := k.sets.Destroy("S6"); !IsInUse(err) {
		t.Errorf("destroy a set ip6tables references: %v", err)
	}
}
