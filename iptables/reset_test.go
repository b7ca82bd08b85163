package iptables

import (
	"context"
	"fmt"
	"slices"
	"testing"
)

// TestResetMarkConfig: the bit defaults to 15, can be moved or turned off
// (no chain, no hooks), and must be in range and differ from the
// masquerade bit, as nftables.Config.ResetMarkBit.
func TestResetMarkConfig(t *testing.T) {
	bit := func(b int) *int { return &b }
	for _, tc := range []struct {
		name      string
		cfg       Config
		wantMark  uint32
		wantError bool
	}{
		{name: "default", cfg: Config{}, wantMark: 0x8000},
		{name: "bit 3", cfg: Config{ResetMarkBit: bit(3)}, wantMark: 0x8},
		{name: "bit 0", cfg: Config{ResetMarkBit: bit(0)}, wantMark: 0x1},
		{name: "bit 31", cfg: Config{ResetMarkBit: bit(31)}, wantMark: 0x80000000},
		{name: "off", cfg: Config{ResetMarkBit: bit(ResetMarkOff)}},
		{name: "masquerade bit", cfg: Config{ResetMarkBit: bit(14)}, wantError: true},
		{name: "moved masquerade bit", cfg: Config{MasqueradeBit: bit(15)}, wantError: true},
		{name: "out of range", cfg: Config{ResetMarkBit: bit(32)}, wantError: true},
		{name: "negative", cfg: Config{ResetMarkBit: bit(-2)}, wantError: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sets := NewFakeIPSet()
			_, err := NewProxier(tc.cfg, sets, NewFakeTables(sets), nil)
			if (err != nil) != tc.wantError {
				t.Fatalf("NewProxier: %v, want error=%v", err, tc.wantError)
			}
			if got := tc.cfg.ResetMark(); got != tc.wantMark {
				t.Errorf("ResetMark = %#x, want %#x", got, tc.wantMark)
			}
			if tc.wantError {
				return
			}
			d := Desired(smallState(t), tc.cfg)
			var hooks []string
			for _, h := range d.Hooks {
				if h.Rule.Target() == chainResetMarked {
					hooks = append(hooks, h.Table+" "+h.Chain)
				}
			}
			c := d.Chain(TableFilter, chainResetMarked)
			if tc.wantMark == 0 {
				if c != nil || len(hooks) > 0 {
					t.Errorf("reset rules although off: chain %v, hooks %v", c, hooks)
				}
				return
			}
			if want := []string{"filter INPUT", "filter FORWARD", "filter OUTPUT"}; !slices.Equal(hooks, want) {
				t.Errorf("hooks to %s in %v, want %v", chainResetMarked, hooks, want)
			}
			if c == nil || len(c.Rules) != 1 {
				t.Fatalf("chain %s: %v, want one rule", chainResetMarked, c)
			}
			mark := tc.cfg.ResetMark()
			want := Rule{"-p", "tcp", "-m", "comment", "--comment", "reset a connection marked for rebalancing",
				"-m", "connmark", "--mark", fmt.Sprintf("%#x/%#x", mark, mark), "-m", "tcp", "--tcp-flags", "SYN,RST", "NONE",
				"-j", "REJECT", "--reject-with", "tcp-reset"}
			if !c.Rules[0].Equal(want) {
				t.Errorf("rule %s, want %s", c.Rules[0], want)
			}
		})
	}
}

// TestResetMarkedHooksFirst: in filter INPUT and FORWARD the reset hook
// comes first, before our other hook and before foreign rules; OUTPUT
// gets only it. A hook deleted, moved below the other one or behind a
// foreign rule is put back in place by the next (partial) sync, which
// counts as a repair; turning the bit off removes the chain and its
// hooks and leaves the rest.
func TestResetMarkedHooksFirst(t *testing.T) {
	k := newFakeKernel()
	foreignState(t, k)
	p := k.proxier(t, testConfig())
	st := smallState(t)
	fullSync(t, p, st)
	want := Desired(st, p.cfg)
	if got := ownedDump(t, k.sets, k.tables, want); got != want.Dump() {
		t.Fatalf("kernel differs from desired:\n%s", lineDiff(want.Dump(), got))
	}
	targets := func(chain string) []string {
		t.Helper()
		rules, err := k.tables.ListRules(TableFilter, chain)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, r := range rules {
			out = append(out, r.Target())
		}
		return out
	}
	check := func(when string) {
		t.Helper()
		for chain, want := range map[string][]string{
			builtinInput:   {chainResetMarked, chainFirewall, "FOREIGN-INPUT"},
			builtinForward: {chainResetMarked, chainForward, "DROP"},
			builtinOutput:  {chainResetMarked},
		} {
			if got := targets(chain); !slices.Equal(got, want) {
				t.Errorf("%s: filter %s jumps to %v, want %v", when, chain, got, want)
			}
		}
	}
	check("after the first sync")

	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	// INPUT: the reset hook deleted. FORWARD: the reset hook moved below
	// SWITCHYARD-FORWARD's. OUTPUT: a foreign rule inserted first.
	must(k.tables.DeleteAt(TableFilter, builtinInput, 1))
	fwd, _ := k.tables.ListRules(TableFilter, builtinForward)
	must(k.tables.DeleteAt(TableFilter, builtinForward, 1))
	must(k.tables.Insert(TableFilter, builtinForward, 2, fwd[0]))
	must(k.tables.Insert(TableFilter, builtinOutput, 1, Rule{"-m", "comment", "--comment", "pushy", "-j", "ACCEPT"}))
	partialSync(t, p, st)
	for chain, want := range map[string][]string{
		builtinInput:   {chainResetMarked, chainFirewall, "FOREIGN-INPUT"},
		builtinForward: {chainResetMarked, chainForward, "DROP"},
		builtinOutput:  {chainResetMarked, "ACCEPT"},
	} {
		if got := targets(chain); !slices.Equal(got, want) {
			t.Errorf("after the repair: filter %s jumps to %v, want %v", chain, got, want)
		}
	}
	if n := p.Repairs(); n != 1 {
		t.Errorf("repairs: %d, want 1", n)
	}
	must(k.tables.DeleteAt(TableFilter, builtinOutput, 2))

	// The chain's rule edited behind our back.
	must(k.tables.Replace(TableFilter, chainResetMarked, 1, Rule{"-p", "tcp", "-j", "ACCEPT"}))
	partialSync(t, p, st)
	if got := ownedDump(t, k.sets, k.tables, want); got != want.Dump() {
		t.Errorf("chain not repaired:\n%s", lineDiff(want.Dump(), got))
	}
	check("after the repairs")

	// Off: chain and hooks go, the other hooks stay first.
	off := testConfig()
	bit := ResetMarkOff
	off.ResetMarkBit = &bit
	p = k.proxier(t, off)
	fullSync(t, p, st)
	wantOff := Desired(st, p.cfg)
	if got := ownedDump(t, k.sets, k.tables, wantOff); got != wantOff.Dump() {
		t.Errorf("with the reset off:\n%s", lineDiff(wantOff.Dump(), got))
	}
	for chain, want := range map[string][]string{
		builtinInput:   {chainFirewall, "FOREIGN-INPUT"},
		builtinForward: {chainForward, "DROP"},
		builtinOutput:  nil,
	} {
		if got := targets(chain); !slices.Equal(got, want) {
			t.Errorf("with the reset off: filter %s jumps to %v, want %v", chain, got, want)
		}
	}

	// Cleanup takes the chain and its hooks, and nothing foreign.
	p = k.proxier(t, testConfig())
	fullSync(t, p, st)
	if err := p.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if chains, _ := k.tables.ListChains(TableFilter); slices.Contains(chains, chainResetMarked) {
		t.Errorf("%s left after Cleanup", chainResetMarked)
	}
	for chain, want := range map[string][]string{
		builtinInput: {"FOREIGN-INPUT"}, builtinForward: {"DROP"}, builtinOutput: nil,
	} {
		if got := targets(chain); !slices.Equal(got, want) {
			t.Errorf("after Cleanup: filter %s jumps to %v, want %v", chain, got, want)
		}
	}
}
