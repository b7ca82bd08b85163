package iptables

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/switchyard/switchyard/dataplane"
)

// DesiredState is everything this package wants in the kernel for a State.
type DesiredState struct {
	// Family is the IP family of the sets and the Tables the chains go to.
	Family Family
	// Sets are sorted by name; every owned set is listed, empty or not, so
	// rules can reference any of them at any time.
	Sets []DesiredSet
	// Chains are in apply order: a chain comes after every chain it jumps
	// to, so filling them in order never references an empty chain.
	Chains []DesiredChain
	// Hooks are the jumps from built-in chains; those of one built-in
	// chain in the order they go at its top (see buildHooks).
	Hooks []Hook
}

// DesiredSet is one set with its members. Members is a set, not a sorted
// list: with tens of thousands of endpoints, sorting on every sync would
// cost more than the diff; Sorted gives the deterministic order.
type DesiredSet struct {
	Spec    SetSpec
	Members map[Member]struct{}
}

// Sorted returns the members in numeric order (compareMembers).
func (s DesiredSet) Sorted() []Member {
	out := slices.Collect(maps.Keys(s.Members))
	slices.SortFunc(out, compareMembers)
	return out
}

// DesiredChain is one owned chain and its rules, in order.
type DesiredChain struct {
	Table string
	Name  string
	Rules []Rule
}

// Hook is our rule in a built-in chain. Our hooks of a built-in chain must
// be its first rules, in Desired's order, so that nothing (another NAT
// rule, an ACCEPT) decides the packet's fate before it is marked or, for
// marked connections, reset.
type Hook struct {
	Table string
	Chain string
	Rule  Rule
}

// Desired computes the sets, chains and hooks for st under cfg, for
// cfg.Family (IPv4 by default). It is pure: same input, same output, no
// kernel access.
func Desired(st *dataplane.State, cfg Config) DesiredState {
	cfg = cfg.withDefaults()
	return desiredFamily(st, cfg, cfg.Family)
}

// desiredFamily computes one family's state: only that family's addresses,
// sets named for it (setName) and of its ipset family. Chains and hooks
// have the same names in both families: they live in iptables or ip6tables,
// which are separate tables; the IPv6 sets share the ipset namespace with
// the IPv4 ones, hence their own names.
func desiredFamily(st *dataplane.State, cfg Config, fam Family) DesiredState {
	cfg = cfg.withDefaults()
	members := collectMembers(st, fam)
	sets := buildSets(members, fam)
	nonEmpty := func(set string) bool { return len(members[set]) > 0 }
	return DesiredState{
		Family: fam,
		Sets:   sets,
		Chains: buildChains(cfg, fam, nonEmpty),
		Hooks:  buildHooks(cfg),
	}
}

// Set returns the desired set named name (nil if none).
func (d DesiredState) Set(name string) *DesiredSet {
	for i := range d.Sets {
		if d.Sets[i].Spec.Name == name {
			return &d.Sets[i]
		}
	}
	return nil
}

// Chain returns the desired chain named name (nil if none).
func (d DesiredState) Chain(table, name string) *DesiredChain {
	for i := range d.Chains {
		if d.Chains[i].Table == table && d.Chains[i].Name == name {
			return &d.Chains[i]
		}
	}
	return nil
}

// Dump renders the desired state in the fakes' dump format: sets, then
// chains in apply order, then hooks.
func (d DesiredState) Dump() string {
	var b strings.Builder
	for _, s := range d.Sets {
		writeSet(&b, s.Spec, s.Sorted())
	}
	for _, c := range d.Chains {
		writeChain(&b, c.Table, c.Name, c.Rules)
	}
	for _, h := range d.Hooks {
		fmt.Fprintf(&b, "hook %s %s\n  %s\n", h.Table, h.Chain, h.Rule.Line(h.Chain))
	}
	return b.String()
}
