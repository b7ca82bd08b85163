package iptables

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/switchyard/switchyard/dataplane"
)

func TestSyncFromScratch(t *testing.T) {
	k := newFakeKernel()
	p := k.proxier(t, testConfig())
	st := smallState(t)
	fullSync(t, p, st)
	want := Desired(st, p.cfg)
	if got := ownedDump(t, k.sets, k.tables, want); got != want.Dump() {
		t.Errorf("kernel differs from desired:\n%s", lineDiff(want.Dump(), got))
	}
}

// A new Proxier over a kernel that already matches (a restart) changes
// nothing, on a full and on a partial sync.
func TestRestartAdoptionMakesNoChanges(t *testing.T) {
	k := newFakeKernel()
	st := smallState(t)
	fullSync(t, k.proxier(t, testConfig()), st)

	k.resetOps()
	p := k.proxier(t, testConfig())
	fullSync(t, p, st)
	partialSync(t, p, st)
	if w := k.writes(); len(w) != 0 {
		t.Errorf("restarted proxier wrote %d times:\n%s", len(w), strings.Join(w, "\n"))
	}
}

// Adding or removing one endpoint costs exactly one set operation.
func TestOneEndpointChangeIsOneSetOp(t *testing.T) {
	k := newFakeKernel()
	p := k.proxier(t, testConfig())
	st := smallState(t)
	fullSync(t, p, st)

	web := dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: "default", Name: "web"}, Port: "http", Protocol: dataplane.TCP}
	k.resetOps()
	st.Endpoints[web] = append(st.Endpoints[web], dataplane.Endpoint{Addr: netip.MustParseAddrPort("10.244.3.4:8080"), Ready: true, Serving: true})
	partialSync(t, p, st, web.ServiceName)
	want := []string{"add SWITCHYARD-LOOP-BACK 10.244.3.4,tcp:8080,10.244.3.4"}
	if got := k.writes(); !slices.Equal(got, want) {
		t.Errorf("add endpoint: writes %q, want %q", got, want)
	}

	k.resetOps()
	st.Endpoints[web] = st.Endpoints[web][:1]
	partialSync(t, p, st, web.ServiceName)
	want = []string{"del SWITCHYARD-LOOP-BACK 10.244.2.3,tcp:8080,10.244.2.3", "del SWITCHYARD-LOOP-BACK 10.244.3.4,tcp:8080,10.244.3.4"}
	got := k.writes()
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("remove endpoints: writes %q, want %q", got, want)
	}
}

// A change in a chain's middle costs the changed rules only, not a flush.
func TestChainRewriteIsMinimal(t *testing.T) {
	k := newFakeKernel()
	p := k.proxier(t, testConfig())
	st := smallState(t)
	fullSync(t, p, st)

	// Dropping the only UDP NodePort removes one rule from the middle of
	// SWITCHYARD-NODE-PORT and one member from the UDP set.
	dns := dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: "kube-system", Name: "dns"}, Port: "dns", Protocol: dataplane.UDP}
	st.Services[dns].NodePort = 0
	k.resetOps()
	partialSync(t, p, st, dns.ServiceName)
	want := []string{"del SWITCHYARD-NODE-PORT-UDP 0.0.0.0/1,udp:30053", "del SWITCHYARD-NODE-PORT-UDP 128.0.0.0/1,udp:30053", "delete-at nat SWITCHYARD-NODE-PORT 2"}
	if got := k.writes(); !slices.Equal(got, want) {
		t.Errorf("writes %q, want %q", got, want)
	}
	if got := ownedDump(t, k.sets, k.tables, Desired(st, p.cfg)); got != Desired(st, p.cfg).Dump() {
		t.Error("kernel differs from desired after rewrite")
	}
}

// foreignState puts other software's objects in the fake kernel: a chain
// with a rule, rules before and after where our hooks go, a set with a
// member and a rule using it.
func foreignState(t *testing.T, k *fakeKernel) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(k.sets.Create(SetSpec{Name: "FOREIGN-SET", Type: HashIPPort, Family: FamilyINet, MaxElem: 1024}))
	must(k.sets.Add("FOREIGN-SET", IPPortMember(netip.MustParseAddr("203.0.113.7"), protoTCP, 22)))
	must(k.tables.NewChain(TableNAT, "FOREIGN-CHAIN"))
	must(k.tables.Append(TableNAT, "FOREIGN-CHAIN", Rule{"-p", "tcp", "-m", "comment", "--comment", "foreign", "-j", "RETURN"}))
	must(k.tables.Append(TableNAT, builtinPrerouting, Rule{"-m", "comment", "--comment", "foreign jump", "-j", "FOREIGN-CHAIN"}))
	must(k.tables.Append(TableNAT, builtinPostrouting, Rule{"-s", "203.0.113.0/24", "-j", "MASQUERADE"}))
	must(k.tables.Append(TableFilter, builtinForward, Rule{"-m", "set", "--match-set", "FOREIGN-SET", "dst,dst", "-j", "DROP"}))
	// Jumps to a SWITCHYARD- chain only count as ours with our comment.
	must(k.tables.NewChain(TableFilter, "FOREIGN-INPUT"))
	must(k.tables.Append(TableFilter, "INPUT", Rule{"-m", "comment", "--comment", "not switchyard's", "-j", "FOREIGN-INPUT"}))
}

func TestForeignObjectsSurviveSyncAndCleanup(t *testing.T) {
	k := newFakeKernel()
	foreignState(t, k)
	before := k.dump()

	p := k.proxier(t, testConfig())
	st := smallState(t)
	fullSync(t, p, st)
	after := k.dump()
	// Every foreign line is still there, and the hooks went first.
	for _, line := range strings.Split(strings.TrimSpace(before), "\n") {
		if !strings.Contains(after, line+"\n") {
			t.Errorf("foreign line lost by Sync: %s", line)
		}
	}
	pre, _ := k.tables.ListRules(TableNAT, builtinPrerouting)
	if len(pre) != 2 || !isOurHook(pre[0]) || pre[1].Target() != "FOREIGN-CHAIN" {
		t.Errorf("PREROUTING: %v, want our hook then the foreign jump", pre)
	}

	// Cleanup, from a fresh process, restores exactly the foreign state.
	if err := k.proxier(t, testConfig()).Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := k.dump(); got != before {
		t.Errorf("after Cleanup:\n%s", lineDiff(before, got))
	}
	// Idempotent, and with nothing to do it writes nothing.
	k.resetOps()
	if err := k.proxier(t, testConfig()).Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if w := k.writes(); len(w) != 0 {
		t.Errorf("second Cleanup wrote: %q", w)
	}
}

// Chains, hooks and sets deleted or altered behind our back are restored on
// the next sync, even a partial one, without touching what is right. Set
// members changed behind our back are restored on the next full sync
// (partial syncs trust what the last sync wrote).
func TestDriftRepair(t *testing.T) {
	k := newFakeKernel()
	foreignState(t, k)
	p := k.proxier(t, testConfig())
	st := smallState(t)
	fullSync(t, p, st)
	fullSync(t, p, st) // periodic, nothing to do
	if n := p.Repairs(); n != 0 {
		t.Fatalf("repairs after the first and an idle full sync: %d, want 0", n)
	}
	want := Desired(st, p.cfg)

	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	// Hook deleted; hook pushed down by a foreign rule; hook duplicated.
	must(k.tables.DeleteAt(TableNAT, builtinPrerouting, 1))
	must(k.tables.Insert(TableNAT, builtinPostrouting, 1, Rule{"-m", "comment", "--comment", "pushy", "-j", "RETURN"}))
	must(k.tables.Append(TableNAT, builtinOutput, want.Hooks[1].Rule))
	// A chain deleted (after the rule jumping to it), a rule edited, a rule added.
	services, _ := k.tables.ListRules(TableNAT, chainServices)
	must(k.tables.Delete(TableNAT, chainServices, services[len(services)-1]))
	must(k.tables.ClearChain(TableNAT, chainNodePort))
	must(k.tables.DeleteChain(TableNAT, chainNodePort))
	must(k.tables.Replace(TableNAT, chainMarkMasq, 1, Rule{"-m", "comment", "--comment", "edited", "-j", "MARK", "--set-xmark", "0x1/0x1"}))
	must(k.tables.Append(TableFilter, chainForward, Rule{"-m", "comment", "--comment", "extra", "-j", "DROP"}))
	// A set destroyed (unreferenced), members lost and gained.
	must(k.sets.Destroy(setExternalIPLocal))
	must(k.sets.Del(setClusterIP, IPPortMember(netip.MustParseAddr("10.96.0.10"), protoTCP, 80)))
	must(k.sets.Add(setLoopBack, IPPortIPMember(netip.MustParseAddr("10.9.9.9"), protoTCP, 1, netip.MustParseAddr("10.9.9.9"))))

	partialSync(t, p, st)
	got := ownedDump(t, k.sets, k.tables, want)
	if diff := lineDiff(want.Dump(), got); diff != "- "+"  10.96.0.10,tcp:80\n+ "+"  10.9.9.9,tcp:1,10.9.9.9\n" {
		t.Errorf("partial sync: want everything but the two members repaired, got:\n%s", diff)
	}
	if n := p.Repairs(); n != 1 {
		t.Errorf("after the partial sync: %d repairs, want 1", n)
	}
	fullSync(t, p, st)
	if got := ownedDump(t, k.sets, k.tables, want); got != want.Dump() {
		t.Errorf("not repaired by a full sync:\n%s", lineDiff(want.Dump(), got))
	}
	if n := p.Repairs(); n != 2 {
		t.Errorf("after the full sync: %d repairs, want 2", n)
	}
	fullSync(t, p, st)
	if n := p.Repairs(); n != 2 {
		t.Errorf("an idle full sync counted as a repair: %d, want 2", n)
	}
	// A model change is programming, not a repair.
	for name, eps := range st.Endpoints {
		if name.Name == "web" {
			st.Endpoints[name] = append(eps, dataplane.Endpoint{Addr: netip.MustParseAddrPort("10.244.3.4:8080"), Ready: true})
			partialSync(t, p, st, name.ServiceName)
		}
	}
	if n := p.Repairs(); n != 2 {
		t.Errorf("an endpoint change counted as a repair: %d, want 2", n)
	}
	post, _ := k.tables.ListRules(TableNAT, builtinPostrouting)
	if len(post) != 3 || !isOurHook(post[0]) || post[1].Comment() != "pushy" {
		t.Errorf("POSTROUTING: %v, want our hook, then the foreign rules", post)
	}
}

// A set needing more than its maxelem is replaced by a bigger one through a
// temp set and a swap: the live set is never flushed, deleted or partial.
func TestSetGrowsPast65536(t *testing.T) {
	k := newFakeKernel()
	p := k.proxier(t, testConfig())
	st := smallState(t)
	fullSync(t, p, st)
	if s, _ := k.sets.Get(setLoopBack); s.MaxElem != 65536 {
		t.Fatalf("initial maxelem %d", s.MaxElem)
	}

	big := dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: "default", Name: "big"}, Protocol: dataplane.TCP}
	grow := func(n int) {
		t.Helper()
		var eps []dataplane.Endpoint
		for i := range n {
			eps = append(eps, dataplane.Endpoint{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(100 + i>>16), byte(i >> 8), byte(i)}), 8080), Ready: true})
		}
		st.Services[big] = &dataplane.ServicePort{Name: big, Port: 80, ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.1.1")}}
		st.Endpoints[big] = eps
		k.resetOps()
		partialSync(t, p, st, big.ServiceName)
	}
	for _, tc := range []struct {
		endpoints   int
		wantMaxElem uint32
	}{{40000, 131072}, {70000, 262144}} {
		grow(tc.endpoints)
		s, err := k.sets.Get(setLoopBack)
		if err != nil {
			t.Fatal(err)
		}
		if len(s.Members) != tc.endpoints+3 || s.MaxElem != tc.wantMaxElem {
			t.Errorf("%d endpoints: set has %d members, maxelem %d; want %d, %d", tc.endpoints, len(s.Members), s.MaxElem, tc.endpoints+3, tc.wantMaxElem)
		}
		tmp := tempSetName(FamilyINet, setLoopBack)
		var onLive []string
		for _, op := range k.sets.Ops() {
			if strings.Contains(op, " "+setLoopBack) {
				onLive = append(onLive, op)
			}
		}
		if want := []string{"swap " + setLoopBack + " " + tmp}; !slices.Equal(onLive, want) {
			t.Errorf("operations on the live set: %q, want only %q", onLive, want)
		}
		if _, err := k.sets.Get(tmp); !IsNotFound(err) {
			t.Errorf("temp set %s left behind: %v", tmp, err)
		}
	}
	// Shrinking keeps the big set: no churn.
	grow(10)
	if s, _ := k.sets.Get(setLoopBack); s.MaxElem != 262144 || len(s.Members) != 13 {
		t.Errorf("after shrink: %d members, maxelem %d", len(s.Members), s.MaxElem)
	}
}

// Switching the masquerade policy rewrites SWITCHYARD-SERVICES and creates
// or removes SWITCHYARD-CLUSTER-IP.
func TestPolicyChangeRewritesChains(t *testing.T) {
	k := newFakeKernel()
	st := smallState(t)
	two := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("10.245.0.0/16")}
	for _, cfg := range []Config{
		{ClusterCIDRs: two},
		{MasqueradeAll: true},
		testConfig(),
		{},
		{ClusterCIDRs: two, MasqueradeBit: ptr(2)},
	} {
		p := k.proxier(t, cfg)
		fullSync(t, p, st)
		want := Desired(st, p.cfg)
		if got := ownedDump(t, k.sets, k.tables, want); got != want.Dump() {
			t.Errorf("config %+v:\n%s", cfg, lineDiff(want.Dump(), got))
		}
	}
}

// Leftovers of an interrupted grow or an older version are removed on a
// full sync.
func TestStaleOwnedObjectsRemoved(t *testing.T) {
	k := newFakeKernel()
	p := k.proxier(t, testConfig())
	st := smallState(t)
	fullSync(t, p, st)
	tmp := tempSetName(FamilyINet, setLoopBack)
	if err := k.sets.Create(SetSpec{Name: tmp, Type: HashIPPortIP, Family: FamilyINet, MaxElem: 1 << 17}); err != nil {
		t.Fatal(err)
	}
	if err := k.tables.NewChain(TableNAT, "SWITCHYARD-OLD"); err != nil {
		t.Fatal(err)
	}
	if err := k.tables.Append(TableNAT, "SWITCHYARD-OLD", Rule{"-j", "RETURN"}); err != nil {
		t.Fatal(err)
	}
	if err := k.tables.Insert(TableNAT, "INPUT", 1, Rule{"-m", "comment", "--comment", "switchyard old hook", "-j", "SWITCHYARD-OLD"}); err != nil {
		t.Fatal(err)
	}
	fullSync(t, p, st)
	want := Desired(st, p.cfg)
	if got := ownedDump(t, k.sets, k.tables, want); got != want.Dump() {
		t.Errorf("stale objects remain:\n%s", lineDiff(want.Dump(), got))
	}
	if in, _ := k.tables.ListRules(TableNAT, "INPUT"); len(in) != 0 {
		t.Errorf("old hook left in INPUT: %v", in)
	}
}

func TestSysctlTCPBeLiberal(t *testing.T) {
	cfg := testConfig()
	cfg.ConntrackTCPBeLiberal = true

	k := newFakeKernel()
	fullSync(t, k.proxier(t, cfg), smallState(t))
	if v, _ := k.sysctl.Get(sysctlTCPBeLiberal); v != "1" {
		t.Errorf("nf_conntrack_tcp_be_liberal = %q, want 1", v)
	}

	// Unwritable: a warning, not a failed sync.
	k = newFakeKernel()
	k.sysctl.SetReadOnly(sysctlTCPBeLiberal)
	fullSync(t, k.proxier(t, cfg), smallState(t))
	if v, _ := k.sysctl.Get(sysctlTCPBeLiberal); v != "0" {
		t.Errorf("read-only sysctl changed to %q", v)
	}

	if _, err := NewProxier(cfg, k.sets, k.tables, nil); err == nil {
		t.Error("NewProxier accepted ConntrackTCPBeLiberal without a Sysctl")
	}
}

func TestNewProxierValidates(t *testing.T) {
	k := newFakeKernel()
	for _, cfg := range []Config{{MasqueradeBit: ptr(32)}, {MasqueradeBit: ptr(-1)}, {ClusterCIDRs: []netip.Prefix{{}}}} {
		if _, err := NewProxier(cfg, k.sets, k.tables, nil); err == nil {
			t.Errorf("config %+v accepted", cfg)
		}
	}
	if _, err := NewProxier(Config{}, nil, k.tables, nil); err == nil {
		t.Error("nil IPSet accepted")
	}
	k.tables.SetRandomFully(false)
	p := k.proxier(t, Config{})
	if p.Name() != "iptables" || p.cfg.RandomFully || *p.cfg.MasqueradeBit != 14 {
		t.Errorf("proxier config %+v", p.cfg)
	}
}

// A set of the right name but the wrong type is reported, not clobbered.
func TestSetTypeConflict(t *testing.T) {
	k := newFakeKernel()
	if err := k.sets.Create(SetSpec{Name: setClusterIP, Type: HashIPPortIP, Family: FamilyINet, MaxElem: 65536}); err != nil {
		t.Fatal(err)
	}
	err := k.proxier(t, testConfig()).Sync(context.Background(), smallState(t), dataplane.Changes{Full: true})
	if err == nil || !strings.Contains(err.Error(), setClusterIP) {
		t.Errorf("Sync error %v, want a conflict on %s", err, setClusterIP)
	}
}

// Sync stops when its context is done, and a failed sync drops the set
// cache: the next sync, even a partial one, reads the kernel again.
func TestSyncHonoursContext(t *testing.T) {
	k := newFakeKernel()
	p := k.proxier(t, testConfig())
	st := smallState(t)
	fullSync(t, p, st)
	lost := IPPortMember(netip.MustParseAddr("10.96.0.10"), protoTCP, 80)
	if err := k.sets.Del(setClusterIP, lost); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := p.Sync(ctx, st, dataplane.Changes{})
	if err == nil || !strings.Contains(fmt.Sprint(err), "canceled") {
		t.Errorf("Sync with a canceled context: %v", err)
	}
	partialSync(t, p, st)
	if ok, err := k.sets.Test(setClusterIP, lost); !ok || err != nil {
		t.Errorf("member lost behind our back not restored after a failed sync: %v, %v", ok, err)
	}
}

func ptr[T any](v T) *T { return &v }
