package iptables

import (
	"net/netip"
	"testing"
)

// The fakes refuse what the kernel refuses, with the same error kinds.
func TestFakeIPSetSemantics(t *testing.T) {
	f := NewFakeIPSet()
	ip := netip.MustParseAddr("10.0.0.1")
	hash := SetSpec{Name: "S", Type: HashIPPort, Family: FamilyINet, MaxElem: 2}
	if err := f.Create(hash); err != nil {
		t.Fatal(err)
	}
	check := func(what string, err error, pred func(error) bool) {
		t.Helper()
		if err == nil || (pred != nil && !pred(err)) {
			t.Errorf("%s: got %v", what, err)
		}
	}
	check("create twice", f.Create(hash), IsExists)
	check("create long name", f.Create(SetSpec{Name: "SWITCHYARD-0123456789012345678901", Type: HashIPPort, Family: FamilyINet}), nil)
	check("add to missing set", f.Add("NOPE", IPPortMember(ip, protoTCP, 1)), IsNotFound)
	if err := f.Add("S", IPPortMember(ip, protoTCP, 1)); err != nil {
		t.Fatal(err)
	}
	check("add twice", f.Add("S", IPPortMember(ip, protoTCP, 1)), IsExists)
	check("IPv6 member in inet set", f.Add("S", IPPortMember(netip.MustParseAddr("fd00::1"), protoTCP, 1)), nil)
	check("network in hash:ip,port", f.Add("S", NetPortMember(netip.MustParsePrefix("10.0.0.0/8"), protoTCP, 1)), nil)
	check("no address in hash:ip,port", f.Add("S", Member{Proto: protoTCP, Port: 1}), nil)
	if err := f.Add("S", IPPortMember(ip, protoUDP, 1)); err != nil {
		t.Fatal(err)
	}
	check("add beyond maxelem", f.Add("S", IPPortMember(ip, protoSCTP, 1)), nil)
	check("del missing member", f.Del("S", IPPortMember(ip, protoSCTP, 1)), IsNotFound)

	if err := f.Create(SetSpec{Name: "B", Type: HashNetPort, Family: FamilyINet, MaxElem: 8}); err != nil {
		t.Fatal(err)
	}
	check("prefix length 0", f.Add("B", NetPortMember(netip.MustParsePrefix("0.0.0.0/0"), protoTCP, 1)), nil)
	check("swap different types", f.Swap("S", "B"), nil)
	check("swap missing", f.Swap("S", "NOPE"), IsNotFound)

	big := SetSpec{Name: "S2", Type: HashIPPort, Family: FamilyINet, MaxElem: 8}
	if err := f.Create(big); err != nil {
		t.Fatal(err)
	}
	if err := f.Swap("S", "S2"); err != nil {
		t.Fatal(err)
	}
	s, _ := f.Get("S")
	s2, _ := f.Get("S2")
	if s.MaxElem != 8 || len(s.Members) != 0 || s2.MaxElem != 2 || len(s2.Members) != 2 {
		t.Errorf("after swap: S %+v, S2 %+v", s, s2)
	}

	tables := NewFakeTables(f)
	if err := tables.Append(TableNAT, builtinPrerouting, Rule{"-m", "set", "--match-set", "S", "dst,dst", "-j", "ACCEPT"}); err != nil {
		t.Fatal(err)
	}
	check("destroy referenced set", f.Destroy("S"), IsInUse)
	check("rule on missing set", tables.Append(TableNAT, builtinPrerouting, Rule{"-m", "set", "--match-set", "NOPE", "dst", "-j", "ACCEPT"}), IsNotFound)
}

func TestFakeTablesSemantics(t *testing.T) {
	f := NewFakeTables(nil)
	check := func(what string, err error, pred func(error) bool) {
		t.Helper()
		if err == nil || (pred != nil && !pred(err)) {
			t.Errorf("%s: got %v", what, err)
		}
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(f.NewChain(TableNAT, "A"))
	check("new chain twice", f.NewChain(TableNAT, "A"), IsExists)
	check("chain name too long", f.NewChain(TableNAT, "SWITCHYARD-0123456789ABCDEFGH"), nil)
	check("unknown table", f.NewChain("mangle2", "A"), IsNotFound)
	check("jump to missing chain", f.Append(TableNAT, "A", Rule{"-j", "B"}), IsNotFound)
	check("jump to built-in chain", f.Append(TableNAT, "A", Rule{"-j", builtinOutput}), nil)
	check("append to missing chain", f.Append(TableNAT, "B", Rule{"-j", "RETURN"}), IsNotFound)
	must(f.Append(TableNAT, "A", Rule{"-j", "MASQUERADE"}))
	must(f.Append(TableNAT, builtinPostrouting, Rule{"-j", "A"}))
	check("MASQUERADE reachable from PREROUTING", f.Insert(TableNAT, builtinPrerouting, 1, Rule{"-j", "A"}), nil)
	check("insert index too big", f.Insert(TableNAT, "A", 3, Rule{"-j", "RETURN"}), nil)
	check("replace index too big", f.Replace(TableNAT, "A", 2, Rule{"-j", "RETURN"}), nil)
	check("delete-at index too big", f.DeleteAt(TableNAT, "A", 2), nil)
	check("delete missing rule", f.Delete(TableNAT, "A", Rule{"-j", "RETURN"}), IsNotFound)
	check("delete non-empty chain", f.DeleteChain(TableNAT, "A"), IsInUse)
	must(f.ClearChain(TableNAT, "A"))
	check("delete referenced chain", f.DeleteChain(TableNAT, "A"), IsInUse)
	check("delete built-in chain", f.DeleteChain(TableNAT, builtinOutput), nil)
	check("delete missing chain", f.DeleteChain(TableNAT, "Z"), IsNotFound)
	must(f.Delete(TableNAT, builtinPostrouting, Rule{"-j", "A"}))
	must(f.DeleteChain(TableNAT, "A"))
	if ok, err := f.Exists(TableNAT, builtinPostrouting, Rule{"-j", "A"}); ok || err != nil {
		t.Errorf("Exists after delete: %v, %v", ok, err)
	}
	if f.Dump() != NewFakeTables(nil).Dump() {
		t.Errorf("not back to empty:\n%s", f.Dump())
	}
}
