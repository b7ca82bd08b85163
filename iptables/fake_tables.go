package iptables

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
)

// FakeTables is an in-memory Tables with iptables' semantics for what this
// package uses: tables nat and filter with their built-in chains; chain
// creation fails with ErrExists, deletion with ErrNotFound or ErrInUse (not
// empty, referenced, or built-in); rules must jump to an existing chain or a
// known target; positions are checked; a `--match-set` must name an existing
// set of the linked FakeIPSet; and, as the kernel does for nat, MASQUERADE
// and SNAT are refused in chains reachable from anywhere but POSTROUTING
// (DNAT: from anywhere but PREROUTING and OUTPUT). It is of one family, as
// iptables and ip6tables are: -s/-d addresses of the other family are
// refused, and so is a `--match-set` naming a set of the other family
// (iptables refuses it: "The protocol family of set ... is not
// applicable"; the kernel would never match it). Dump is deterministic.
//
// It does not evaluate matches: rules are compared as token lists, exactly
// as the real Tables compares what `iptables -S` prints.
type FakeTables struct {
	mu          sync.Mutex
	tables      map[string]map[string]*fakeChain
	sets        *FakeIPSet
	fam         Family
	randomFully bool
	ops         []string
}

type fakeChain struct {
	builtin bool
	rules   []Rule
}

var _ Tables = (*FakeTables)(nil)

// maxChainNameLen is XT_EXTENSION_MAXNAMELEN (29) minus the NUL.
const maxChainNameLen = 28

// isBuiltinTarget reports whether the fake accepts target besides user
// chains.
func isBuiltinTarget(target string) bool {
	switch target {
	case "ACCEPT", "DROP", "RETURN", "REJECT", "MARK", "MASQUERADE", "SNAT", "DNAT", "LOG", "CONNMARK":
		return true
	}
	return false
}

// NewFakeTables returns fake nat and filter tables with empty built-in
// chains. When sets is not nil, `--match-set` references are checked
// against it and sets references it cannot be destroyed.
func NewFakeTables(sets *FakeIPSet) *FakeTables { return NewFakeTablesFamily(FamilyINet, sets) }

// NewFakeTablesFamily is NewFakeTables for family fam: FamilyINet6 fakes
// ip6tables. An IPv4 and an IPv6 fake may share one FakeIPSet, as the two
// families share the kernel's sets.
func NewFakeTablesFamily(fam Family, sets *FakeIPSet) *FakeTables {
	f := &FakeTables{tables: map[string]map[string]*fakeChain{}, sets: sets, fam: fam, randomFully: true}
	for _, t := range tableNames() {
		f.tables[t] = map[string]*fakeChain{}
		for _, c := range builtinChains(t) {
			f.tables[t][c] = &fakeChain{builtin: true}
		}
	}
	if sets != nil {
		sets.mu.Lock()
		sets.inUse = append(sets.inUse, f.referencesSet)
		sets.mu.Unlock()
	}
	return f
}

// Family returns the fake's IP family.
func (f *FakeTables) Family() Family { return f.fam }

// SetRandomFully sets what HasRandomFully reports (default true).
func (f *FakeTables) SetRandomFully(v bool) { f.randomFully = v }

func (f *FakeTables) HasRandomFully() bool { return f.randomFully }

func (f *FakeTables) table(name string) (map[string]*fakeChain, error) {
	t, ok := f.tables[name]
	if !ok {
		return nil, fmt.Errorf("table %q does not exist: %w", name, ErrNotFound)
	}
	return t, nil
}

func (f *FakeTables) chain(table, chain string) (*fakeChain, error) {
	t, err := f.table(table)
	if err != nil {
		return nil, err
	}
	c, ok := t[chain]
	if !ok {
		return nil, fmt.Errorf("chain %s in %s: %w", chain, table, ErrNotFound)
	}
	return c, nil
}

func (f *FakeTables) ListChains(table string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, err := f.table(table)
	if err != nil {
		return nil, err
	}
	out := slices.Clone(builtinChains(table))
	var user []string
	for name, c := range t {
		if !c.builtin {
			user = append(user, name)
		}
	}
	slices.Sort(user)
	return append(out, user...), nil
}

func (f *FakeTables) ListRules(table, chain string) ([]Rule, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := f.chain(table, chain)
	if err != nil {
		return nil, fmt.Errorf("list %s %s: %w", table, chain, err)
	}
	out := make([]Rule, len(c.rules))
	for i, r := range c.rules {
		out[i] = slices.Clone(r)
	}
	return out, nil
}

func (f *FakeTables) NewChain(table, chain string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops = append(f.ops, fmt.Sprintf("new-chain %s %s", table, chain))
	t, err := f.table(table)
	if err != nil {
		return err
	}
	if _, ok := t[chain]; ok {
		return fmt.Errorf("new chain %s %s: %w", table, chain, ErrExists)
	}
	if len(chain) > maxChainNameLen || chain == "" || isBuiltinTarget(chain) {
		return fmt.Errorf("new chain %s %s: invalid chain name", table, chain)
	}
	t[chain] = &fakeChain{}
	return nil
}

func (f *FakeTables) ClearChain(table, chain string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops = append(f.ops, fmt.Sprintf("clear-chain %s %s", table, chain))
	t, err := f.table(table)
	if err != nil {
		return err
	}
	if c, ok := t[chain]; ok {
		c.rules = nil
		return nil
	}
	t[chain] = &fakeChain{}
	return nil
}

func (f *FakeTables) DeleteChain(table, chain string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops = append(f.ops, fmt.Sprintf("delete-chain %s %s", table, chain))
	c, err := f.chain(table, chain)
	if err != nil {
		return fmt.Errorf("delete chain: %w", err)
	}
	switch {
	case c.builtin:
		return fmt.Errorf("delete chain %s %s: built-in chain", table, chain)
	case len(c.rules) > 0:
		return fmt.Errorf("delete chain %s %s: %w: chain not empty", table, chain, ErrInUse)
	case f.referencesChain(table, chain):
		return fmt.Errorf("delete chain %s %s: %w: chain referenced", table, chain, ErrInUse)
	}
	delete(f.tables[table], chain)
	return nil
}

func (f *FakeTables) Append(table, chain string, r Rule) error {
	return f.insert("append", table, chain, -1, r)
}

func (f *FakeTables) Insert(table, chain string, pos int, r Rule) error {
	return f.insert("insert", table, chain, pos, r)
}

func (f *FakeTables) insert(op, table, chain string, pos int, r Rule) error {
	// Set references are checked before taking our lock (see FakeIPSet.Destroy).
	if err := f.checkSets(r); err != nil {
		return fmt.Errorf("%s %s %s: %w", op, table, r.Line(chain), err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops = append(f.ops, fmt.Sprintf("%s %s %s", op, table, r.Line(chain)))
	c, err := f.chain(table, chain)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if pos == -1 {
		pos = len(c.rules) + 1
	}
	if pos < 1 || pos > len(c.rules)+1 {
		return fmt.Errorf("%s %s %s: index of insertion too big", op, table, chain)
	}
	if err := f.checkTarget(table, chain, r); err != nil {
		return fmt.Errorf("%s %s %s: %w", op, table, r.Line(chain), err)
	}
	c.rules = slices.Insert(c.rules, pos-1, slices.Clone(r))
	if err := f.checkNATTargets(table); err != nil {
		c.rules = slices.Delete(c.rules, pos-1, pos)
		return fmt.Errorf("%s %s %s: %w", op, table, r.Line(chain), err)
	}
	return nil
}

func (f *FakeTables) Replace(table, chain string, pos int, r Rule) error {
	if err := f.checkSets(r); err != nil {
		return fmt.Errorf("replace %s %s: %w", table, r.Line(chain), err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops = append(f.ops, fmt.Sprintf("replace %s %d %s", table, pos, r.Line(chain)))
	c, err := f.chain(table, chain)
	if err != nil {
		return fmt.Errorf("replace: %w", err)
	}
	if pos < 1 || pos > len(c.rules) {
		return fmt.Errorf("replace %s %s %d: index of replacement too big", table, chain, pos)
	}
	if err := f.checkTarget(table, chain, r); err != nil {
		return fmt.Errorf("replace %s %s: %w", table, r.Line(chain), err)
	}
	old := c.rules[pos-1]
	c.rules[pos-1] = slices.Clone(r)
	if err := f.checkNATTargets(table); err != nil {
		c.rules[pos-1] = old
		return fmt.Errorf("replace %s %s: %w", table, r.Line(chain), err)
	}
	return nil
}

func (f *FakeTables) Delete(table, chain string, r Rule) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops = append(f.ops, fmt.Sprintf("delete %s %s", table, r.Line(chain)))
	c, err := f.chain(table, chain)
	if err != nil {
		return fmt.Errorf("delete: %w", err)
	}
	i := slices.IndexFunc(c.rules, r.Equal)
	if i < 0 {
		return fmt.Errorf("delete %s %s: %w: bad rule (does a matching rule exist in that chain?)", table, r.Line(chain), ErrNotFound)
	}
	c.rules = slices.Delete(c.rules, i, i+1)
	return nil
}

func (f *FakeTables) DeleteAt(table, chain string, pos int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops = append(f.ops, fmt.Sprintf("delete-at %s %s %d", table, chain, pos))
	c, err := f.chain(table, chain)
	if err != nil {
		return fmt.Errorf("delete: %w", err)
	}
	if pos < 1 || pos > len(c.rules) {
		return fmt.Errorf("delete %s %s %d: index of deletion too big", table, chain, pos)
	}
	c.rules = slices.Delete(c.rules, pos-1, pos)
	return nil
}

func (f *FakeTables) Exists(table, chain string, r Rule) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := f.chain(table, chain)
	if err != nil {
		return false, fmt.Errorf("check: %w", err)
	}
	return slices.ContainsFunc(c.rules, r.Equal), nil
}

// checkTarget refuses a jump to a missing chain, to a built-in chain, or to
// an unknown target. Called with f.mu held.
func (f *FakeTables) checkTarget(table, chain string, r Rule) error {
	target := r.Target()
	if target == "" || isBuiltinTarget(target) {
		return nil
	}
	c, ok := f.tables[table][target]
	if !ok {
		return fmt.Errorf("%w: couldn't load target %q", ErrNotFound, target)
	}
	if c.builtin || target == chain {
		return fmt.Errorf("invalid jump to %s", target)
	}
	return nil
}

// checkSets refuses a rule naming a set that does not exist or is of the
// other family, and a rule with an address of the other family.
func (f *FakeTables) checkSets(r Rule) error {
	if err := f.checkAddrs(r); err != nil {
		return err
	}
	if f.sets == nil {
		return nil
	}
	if name := r.value("--match-set"); name != "" {
		fam, ok := f.sets.family(name)
		if !ok {
			return fmt.Errorf("%w: set %s doesn't exist", ErrNotFound, name)
		}
		if fam != f.fam {
			return fmt.Errorf("the protocol family of set %s is %s, which is not applicable in %s tables", name, fam, f.fam)
		}
	}
	return nil
}

// checkAddrs refuses -s and -d values that are not an address or prefix of
// the fake's family, as iptables ("host/network not found") and ip6tables
// do.
func (f *FakeTables) checkAddrs(r Rule) error {
	for i := 0; i+1 < len(r); i++ {
		if r[i] != "-s" && r[i] != "-d" {
			continue
		}
		v := r[i+1]
		p, err := netip.ParsePrefix(v)
		if err != nil {
			a, aerr := netip.ParseAddr(v)
			if aerr != nil {
				return fmt.Errorf("host/network `%s' not found", v)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if p.Addr().Is4() != (f.fam != FamilyINet6) {
			return fmt.Errorf("host/network `%s' not found: not a %s address", v, f.fam)
		}
	}
	return nil
}

// natTargetHooks says from which built-in nat chains a NAT target may be
// reached; the kernel refuses a rule that makes one reachable from
// elsewhere ("Invalid argument"). ok is false for other targets.
func natTargetHooks(target string) (hooks []string, ok bool) {
	switch target {
	case "MASQUERADE":
		return []string{builtinPostrouting}, true
	case "SNAT":
		return []string{builtinPostrouting, "INPUT"}, true
	case "DNAT":
		return []string{builtinPrerouting, builtinOutput}, true
	}
	return nil, false
}

// checkNATTargets walks the nat table from each built-in chain and fails if
// a NAT target is reachable from a hook that does not allow it. Called with
// f.mu held.
func (f *FakeTables) checkNATTargets(table string) error {
	if table != TableNAT {
		return nil
	}
	t := f.tables[table]
	for _, hook := range builtinChains(TableNAT) {
		seen := map[string]bool{}
		var walk func(chain string) error
		walk = func(chain string) error {
			if seen[chain] {
				return nil
			}
			seen[chain] = true
			for _, r := range t[chain].rules {
				target := r.Target()
				if allowed, ok := natTargetHooks(target); ok && !slices.Contains(allowed, hook) {
					return fmt.Errorf("%s reachable from %s via %s: invalid argument", target, hook, chain)
				}
				if c, ok := t[target]; ok && !c.builtin {
					if err := walk(target); err != nil {
						return err
					}
				}
			}
			return nil
		}
		if err := walk(hook); err != nil {
			return err
		}
	}
	return nil
}

func (f *FakeTables) referencesChain(table, chain string) bool {
	for _, c := range f.tables[table] {
		for _, r := range c.rules {
			if r.Target() == chain {
				return true
			}
		}
	}
	return false
}

func (f *FakeTables) referencesSet(name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, t := range f.tables {
		for _, c := range t {
			for _, r := range c.rules {
				if r.value("--match-set") == name {
					return true
				}
			}
		}
	}
	return false
}

// Ops returns the mutating calls made so far, including failed ones.
func (f *FakeTables) Ops() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.ops)
}

// ResetOps forgets the recorded calls.
func (f *FakeTables) ResetOps() {
	f.mu.Lock()
	f.ops = nil
	f.mu.Unlock()
}

// Dump renders both tables like `iptables -S` per chain: built-in chains
// first in hook order, then user chains sorted by name; a chain's header
// line is "table chain".
func (f *FakeTables) Dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var b strings.Builder
	for _, table := range tableNames() {
		t := f.tables[table]
		names := builtinChains(table)
		var user []string
		for name, c := range t {
			if !c.builtin {
				user = append(user, name)
			}
		}
		slices.Sort(user)
		for _, name := range append(names, user...) {
			writeChain(&b, table, name, t[name].rules)
		}
	}
	return b.String()
}

func writeChain(b *strings.Builder, table, chain string, rules []Rule) {
	fmt.Fprintf(b, "chain %s %s\n", table, chain)
	for _, r := range rules {
		fmt.Fprintf(b, "  %s\n", r.Line(chain))
	}
}
