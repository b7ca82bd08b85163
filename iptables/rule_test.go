package iptables

import (
	"slices"
	"testing"
)

// Lines as iptables 1.8.9 -S prints them (both backends agree).
func TestParseRuleLine(t *testing.T) {
	for _, tc := range []struct {
		line  string
		chain string
		rule  Rule
		ok    bool
	}{
		{`-A SX ! -s 10.244.0.0/16 -m comment --comment "cluster IP traffic" -m set --match-set SX-CIP dst,dst -j SX-MM`, "SX",
			Rule{"!", "-s", "10.244.0.0/16", "-m", "comment", "--comment", "cluster IP traffic", "-m", "set", "--match-set", "SX-CIP", "dst,dst", "-j", "SX-MM"}, true},
		{`-A FORWARD -m conntrack --ctstate INVALID -m comment --comment "drop \"inv\"" -j DROP`, "FORWARD",
			Rule{"-m", "conntrack", "--ctstate", "INVALID", "-m", "comment", "--comment", `drop "inv"`, "-j", "DROP"}, true},
		{`-A SX -m comment --comment single -j RETURN`, "SX", Rule{"-m", "comment", "--comment", "single", "-j", "RETURN"}, true},
		{`-A EMPTY`, "EMPTY", Rule{}, true},
		{`-P INPUT ACCEPT`, "", nil, false},
		{`-N SWITCHYARD-SERVICES`, "", nil, false},
	} {
		chain, r, ok, err := parseRuleLine(tc.line)
		if err != nil || ok != tc.ok || chain != tc.chain || !slices.Equal(r, tc.rule) {
			t.Errorf("parseRuleLine(%q) = %q, %q, %v, %v; want %q, %q, %v", tc.line, chain, r, ok, err, tc.chain, tc.rule, tc.ok)
		}
		if ok && r.Line(chain) != tc.line {
			t.Errorf("Line() = %q, want %q", r.Line(chain), tc.line)
		}
	}
	if _, _, _, err := parseRuleLine(`-A X -m comment --comment "open`); err == nil {
		t.Error("unterminated quote accepted")
	}
}

func TestRuleAccessors(t *testing.T) {
	r := Rule{"-m", "comment", "--comment", "switchyard service portals", "-j", "SWITCHYARD-SERVICES"}
	if r.Target() != "SWITCHYARD-SERVICES" || r.Comment() != "switchyard service portals" || !isOurHook(r) {
		t.Errorf("accessors on %v", r)
	}
	for _, foreign := range []Rule{
		{"-j", "SWITCHYARD-SERVICES"},
		{"-m", "comment", "--comment", "switchyard thing", "-j", "KUBE-SERVICES"},
		{"-m", "comment", "--comment", "switchyardish", "-j", "SWITCHYARD-SERVICES"},
	} {
		if isOurHook(foreign) {
			t.Errorf("%v taken for our hook", foreign)
		}
	}
}
