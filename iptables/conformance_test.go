package iptables

import (
	"net/netip"
	"slices"
	"testing"
)

// These checks run against the fakes here and against the kernel in
// kernel_test.go: the fakes are only worth their name if both pass.

func ipsetConformance(t *testing.T, s IPSet) {
	t.Helper()
	ip := netip.MustParseAddr("10.0.0.1")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	expect := func(what string, err error, pred func(error) bool) {
		t.Helper()
		if err == nil || (pred != nil && !pred(err)) {
			t.Errorf("%s: got %v", what, err)
		}
	}
	specs := []SetSpec{
		{Name: "CONF-IPPORT", Type: HashIPPort, Family: FamilyINet, MaxElem: 4},
		{Name: "CONF-IPPORTIP", Type: HashIPPortIP, Family: FamilyINet, MaxElem: 65536},
		{Name: "CONF-NETPORT", Type: HashNetPort, Family: FamilyINet, MaxElem: 65536},
		{Name: "CONF-IPPORT6", Type: HashIPPort, Family: FamilyINet6, MaxElem: 1024},
		{Name: "CONF-IPPORTNET", Type: HashIPPortNet, Family: FamilyINet, MaxElem: 65536},
		{Name: "CONF-IPPORTNET6", Type: HashIPPortNet, Family: FamilyINet6, MaxElem: 65536},
	}
	members := [][]Member{
		{IPPortMember(ip, protoTCP, 80), IPPortMember(ip, protoUDP, 53)},
		{IPPortIPMember(ip, protoTCP, 8080, ip)},
		{NetPortMember(netip.MustParsePrefix("0.0.0.0/1"), protoSCTP, 30003), NetPortMember(netip.MustParsePrefix("128.0.0.0/1"), protoSCTP, 30003)},
		{IPPortMember(netip.MustParseAddr("fd00::1"), protoTCP, 80), IPPortMember(netip.MustParseAddr("fd00::2"), protoTCP, 80)},
		{
			// Host, network and half-space sources, sorted as compareMembers does.
			IPPortNetMember(ip, protoTCP, 80, netip.MustParsePrefix("0.0.0.0/1")),
			IPPortNetMember(ip, protoTCP, 80, netip.MustParsePrefix("192.168.0.0/16")),
			IPPortNetMember(ip, protoUDP, 53, netip.MustParsePrefix("10.1.2.3/32")),
			IPPortNetMember(ip, protoSCTP, 9, netip.MustParsePrefix("128.0.0.0/1")),
		},
		{
			IPPortNetMember(netip.MustParseAddr("2001:db8::1"), protoTCP, 443, netip.MustParsePrefix("fd00::/64")),
			IPPortNetMember(netip.MustParseAddr("2001:db8::1"), protoTCP, 443, netip.MustParsePrefix("fd00::7/128")),
		},
	}
	for i, spec := range specs {
		must(s.Create(spec))
		expect("create twice", s.Create(spec), IsExists)
		for _, m := range members[i] {
			must(s.Add(spec.Name, m))
		}
		expect("add twice", s.Add(spec.Name, members[i][0]), IsExists)
		got, err := s.Get(spec.Name)
		must(err)
		slices.SortFunc(got.Members, compareMembers)
		if got.SetSpec != spec || !slices.Equal(got.Members, members[i]) {
			t.Errorf("Get %s = %+v %v, want %+v %v", spec.Name, got.SetSpec, got.Members, spec, members[i])
		}
	}
	expect("get missing", func() error { _, err := s.Get("CONF-NOPE"); return err }(), IsNotFound)
	expect("test on missing set", func() error { _, err := s.Test("CONF-NOPE", members[0][0]); return err }(), IsNotFound)
	for i, spec := range specs {
		if ok, err := s.Test(spec.Name, members[i][0]); !ok || err != nil {
			t.Errorf("Test(%s, %s) = %v, %v; want true", spec.Name, members[i][0], ok, err)
		}
		if ok, err := s.Test(spec.Name, probeMember(spec)); ok || err != nil {
			t.Errorf("Test(%s, probe) = %v, %v; want false", spec.Name, ok, err)
		}
	}
	expect("add to missing", s.Add("CONF-NOPE", members[0][0]), IsNotFound)
	// A network of length 0 is refused (not taken as a host address).
	expect("add a /0 source", s.Add("CONF-IPPORTNET", IPPortNetMember(ip, protoTCP, 1, netip.MustParsePrefix("0.0.0.0/0"))), nil)
	expect("add a /0 network", s.Add("CONF-NETPORT", NetPortMember(netip.MustParsePrefix("0.0.0.0/0"), protoTCP, 1)), nil)
	// Test with a host address finds the member networks holding it; with
	// a network, only that exact member.
	for _, tc := range []struct {
		set  string
		m    Member
		want bool
	}{
		{"CONF-IPPORTNET", IPPortNetMember(ip, protoTCP, 80, netip.MustParsePrefix("192.168.7.7/32")), true},
		{"CONF-IPPORTNET", IPPortNetMember(ip, protoTCP, 80, netip.MustParsePrefix("192.168.7.0/24")), false},
		{"CONF-IPPORTNET", IPPortNetMember(ip, protoTCP, 81, netip.MustParsePrefix("192.168.7.7/32")), false},
		{"CONF-IPPORTNET", IPPortNetMember(ip, protoUDP, 53, netip.MustParsePrefix("10.1.2.4/32")), false},
		{"CONF-IPPORTNET6", IPPortNetMember(netip.MustParseAddr("2001:db8::1"), protoTCP, 443, netip.MustParsePrefix("fd00::9/128")), true},
		{"CONF-NETPORT", NetPortMember(netip.MustParsePrefix("200.1.2.3/32"), protoSCTP, 30003), true},
		{"CONF-NETPORT", NetPortMember(netip.MustParsePrefix("200.1.2.0/24"), protoSCTP, 30003), false},
	} {
		if ok, err := s.Test(tc.set, tc.m); ok != tc.want || err != nil {
			t.Errorf("Test(%s, %s) = %v, %v; want %v", tc.set, tc.m, ok, err, tc.want)
		}
	}
	expect("del missing member", s.Del("CONF-IPPORT", IPPortMember(ip, protoSCTP, 1)), IsNotFound)
	must(s.Del("CONF-IPPORT6", members[3][1]))
	expect("del deleted member", s.Del("CONF-IPPORT6", members[3][1]), IsNotFound)

	// maxelem is a hard limit.
	must(s.Add("CONF-IPPORT", IPPortMember(ip, protoTCP, 1)))
	must(s.Add("CONF-IPPORT", IPPortMember(ip, protoTCP, 2)))
	expect("add beyond maxelem", s.Add("CONF-IPPORT", IPPortMember(ip, protoTCP, 3)), nil)

	// Swap moves content and size; the names stay.
	bigger := SetSpec{Name: "CONF-IPPORT2", Type: HashIPPort, Family: FamilyINet, MaxElem: 8}
	must(s.Create(bigger))
	must(s.Add(bigger.Name, IPPortMember(ip, protoTCP, 9)))
	must(s.Swap("CONF-IPPORT", bigger.Name))
	a, err := s.Get("CONF-IPPORT")
	must(err)
	b, err := s.Get(bigger.Name)
	must(err)
	if a.MaxElem != 8 || len(a.Members) != 1 || b.MaxElem != 4 || len(b.Members) != 4 {
		t.Errorf("after swap: %s maxelem %d with %d members, %s maxelem %d with %d; want 8/1, 4/4",
			a.Name, a.MaxElem, len(a.Members), b.Name, b.MaxElem, len(b.Members))
	}
	expect("swap different types", s.Swap("CONF-IPPORT", "CONF-NETPORT"), nil)
	expect("swap different families", s.Swap("CONF-IPPORT", "CONF-IPPORT6"), nil)
	expect("swap with missing", s.Swap("CONF-IPPORT", "CONF-NOPE"), IsNotFound)

	names, err := s.ListNames()
	must(err)
	for _, spec := range append(specs, bigger) {
		if !slices.Contains(names, spec.Name) {
			t.Errorf("ListNames %v lacks %s", names, spec.Name)
		}
		must(s.Destroy(spec.Name))
	}
	if err := s.Destroy("CONF-IPPORT"); err != nil {
		t.Errorf("destroy missing: %v, want success (see IPSet.Destroy)", err)
	}
}

func tablesConformance(t *testing.T, tb Tables, sets IPSet) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	expect := func(what string, err error, pred func(error) bool) {
		t.Helper()
		if err == nil || (pred != nil && !pred(err)) {
			t.Errorf("%s: got %v", what, err)
		}
	}
	rules := func(chain string) []string {
		t.Helper()
		rs, err := tb.ListRules(TableNAT, chain)
		must(err)
		var out []string
		for _, r := range rs {
			out = append(out, r.String())
		}
		return out
	}
	must(sets.Create(SetSpec{Name: "CONF-SET", Type: HashIPPort, Family: FamilyINet, MaxElem: 65536}))
	must(tb.NewChain(TableNAT, "CONF-A"))
	expect("new chain twice", tb.NewChain(TableNAT, "CONF-A"), IsExists)
	expect("list missing chain", func() error { _, err := tb.ListRules(TableNAT, "CONF-NOPE"); return err }(), IsNotFound)
	chains, err := tb.ListChains(TableNAT)
	must(err)
	if !slices.Contains(chains, "CONF-A") || !slices.Contains(chains, builtinPostrouting) {
		t.Errorf("ListChains = %v", chains)
	}

	// Rules come back exactly as written when written in canonical form.
	r1 := Rule{"!", "-s", "10.244.0.0/16", "-m", "comment", "--comment", `a "quoted" comment`, "-m", "set", "--match-set", "CONF-SET", "dst,dst", "-j", "MARK", "--set-xmark", "0x4000/0x4000"}
	r2 := Rule{"-p", "tcp", "-m", "comment", "--comment", "two", "-j", "RETURN"}
	r3 := Rule{"-m", "comment", "--comment", "three", "-m", "mark", "!", "--mark", "0x4000/0x4000", "-j", "RETURN"}
	must(tb.Append(TableNAT, "CONF-A", r2))
	must(tb.Insert(TableNAT, "CONF-A", 1, r1))
	must(tb.Insert(TableNAT, "CONF-A", 3, r3))
	if got, want := rules("CONF-A"), []string{r1.String(), r2.String(), r3.String()}; !slices.Equal(got, want) {
		t.Errorf("rules:\n%q\nwant\n%q", got, want)
	}
	must(tb.Replace(TableNAT, "CONF-A", 2, r3))
	must(tb.DeleteAt(TableNAT, "CONF-A", 3))
	if got, want := rules("CONF-A"), []string{r1.String(), r3.String()}; !slices.Equal(got, want) {
		t.Errorf("after replace and delete-at: %q, want %q", got, want)
	}
	if ok, err := tb.Exists(TableNAT, "CONF-A", r3); !ok || err != nil {
		t.Errorf("Exists(r3) = %v, %v", ok, err)
	}
	if ok, err := tb.Exists(TableNAT, "CONF-A", r2); ok || err != nil {
		t.Errorf("Exists(r2) = %v, %v", ok, err)
	}
	expect("delete missing rule", tb.Delete(TableNAT, "CONF-A", r2), IsNotFound)
	expect("insert index too big", tb.Insert(TableNAT, "CONF-A", 5, r2), nil)
	expect("rule on a missing set", tb.Append(TableNAT, "CONF-A", Rule{"-m", "set", "--match-set", "CONF-NOPE", "dst", "-j", "RETURN"}), nil)
	expect("destroy referenced set", sets.Destroy("CONF-SET"), IsInUse)

	must(tb.NewChain(TableNAT, "CONF-B"))
	must(tb.Append(TableNAT, "CONF-B", Rule{"-j", "CONF-A"}))
	expect("delete non-empty chain", tb.DeleteChain(TableNAT, "CONF-B"), IsInUse)
	must(tb.ClearChain(TableNAT, "CONF-A"))
	expect("delete referenced chain", tb.DeleteChain(TableNAT, "CONF-A"), IsInUse)
	must(tb.Delete(TableNAT, "CONF-B", Rule{"-j", "CONF-A"}))
	must(tb.DeleteChain(TableNAT, "CONF-A"))
	must(tb.DeleteChain(TableNAT, "CONF-B"))
	expect("delete missing chain", tb.DeleteChain(TableNAT, "CONF-A"), IsNotFound)
	must(sets.Destroy("CONF-SET"))
}

func TestFakeConformance(t *testing.T) {
	t.Run("ipset", func(t *testing.T) { ipsetConformance(t, NewFakeIPSet()) })
	t.Run("tables", func(t *testing.T) {
		sets := NewFakeIPSet()
		tablesConformance(t, NewFakeTables(sets), sets)
	})
}
