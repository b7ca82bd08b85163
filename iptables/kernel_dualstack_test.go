package iptables

import (
	"context"
	"os/exec"
	"strings"
	"testing"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/test/netnstest"
)

// TestKernelDualStack programs both families into a fresh namespace with
// the real iptables and ip6tables, for each backend: what `ip6tables -S`
// prints back must be exactly what Desired wrote (or every sync would
// rewrite), a restarted pair of Proxiers writes nothing, and Cleanup of
// both leaves nothing of ours. Real IPv6 traffic through IPVS is covered by
// test/ipvsvm (TestVMIPv6SNAT).
func TestKernelDualStack(t *testing.T) {
	requireKernel(t)
	for _, bin := range backends(t) {
		bin6 := strings.Replace(bin, "iptables", "ip6tables", 1)
		if _, err := exec.LookPath(bin6); err != nil {
			t.Logf("%s not installed, skipping the %s backend", bin6, bin)
			continue
		}
		t.Run(bin, func(t *testing.T) { testKernelDualStack(t, bin, bin6) })
	}
}

func testKernelDualStack(t *testing.T, bin, bin6 string) {
	ctx := context.Background()
	ns := netnstest.New(t, "sy-ipt-ds")
	sets, tables4, sysctl := kernelClients(t, ns, bin)
	tables6, err := NewTables(WithBinary(bin6), WithFamily(FamilyINet6), WithNetNS(ns.NsHandle()))
	if err != nil {
		t.Fatal(err)
	}
	k := newDualKernel() // only for its configs
	newPair := func(s IPSet, t4, t6 Tables) dataplane.Chain {
		t.Helper()
		p4, err := NewProxier(k.cfg4, s, t4, sysctl)
		if err != nil {
			t.Fatal(err)
		}
		p6, err := NewProxier(k.cfg6, s, t6, sysctl)
		if err != nil {
			t.Fatal(err)
		}
		return dataplane.Chain{p4, p6}
	}
	if _, err := NewProxier(k.cfg6, sets, tables4, nil); err == nil {
		t.Error("IPv6 proxier accepted real IPv4 tables")
	}
	st := dualState(t)
	chain := newPair(sets, tables4, tables6)
	if err := chain.Sync(ctx, st, dataplane.Changes{Full: true}); err != nil {
		t.Fatalf("sync: %v", err)
	}
	for i, tables := range []Tables{tables4, tables6} {
		want := Desired(st, chain[i].(*Proxier).cfg)
		if got := ownedDump(t, sets, tables, want); got != want.Dump() {
			t.Errorf("%s: kernel differs from desired:\n%s", want.Family, lineDiff(want.Dump(), got))
		}
	}

	cs := &countingIPSet{IPSet: sets}
	ct4, ct6 := &countingTables{Tables: tables4}, &countingTables{Tables: tables6}
	restarted := newPair(cs, ct4, ct6)
	for _, ch := range []dataplane.Changes{{Full: true}, {}} {
		if err := restarted.Sync(ctx, st, ch); err != nil {
			t.Fatal(err)
		}
	}
	if w := append(append(cs.writes, ct4.writes...), ct6.writes...); len(w) != 0 {
		t.Errorf("restarted proxiers wrote %d times (canonical form mismatch?):\n%s", len(w), strings.Join(w, "\n"))
	}

	if err := newPair(sets, tables4, tables6).Cleanup(ctx); err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	names, err := sets.ListNames()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if isOwned(n) {
			t.Errorf("set %s left after Cleanup", n)
		}
	}
	for _, tables := range []Tables{tables4, tables6} {
		for _, table := range tableNames() {
			chains, err := tables.ListChains(table)
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range chains {
				rules, err := tables.ListRules(table, c)
				if err != nil {
					t.Fatal(err)
				}
				if isOwned(c) || len(rules) != 0 {
					t.Errorf("%s %s %s left after Cleanup: %v", tables.(*GoIPTables).Family(), table, c, rules)
				}
			}
		}
	}
}
