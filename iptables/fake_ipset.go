package iptables

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
)

// FakeIPSet is an in-memory IPSet with the kernel's semantics: creating an
// existing set or adding an existing member fails with ErrExists, deleting
// a missing one with ErrNotFound, a hash set refuses members beyond
// maxelem, members must fit the set's type and family, swap requires the
// same type and family, and a set referenced by a FakeTables rule cannot be
// destroyed. Dump is deterministic.
//
// Unlike the kernel it keeps no hash size and no per-set counters.
type FakeIPSet struct {
	mu   sync.Mutex
	sets map[string]*fakeSet
	ops  []string
	// inUse report whether a rule references the set, one per linked
	// FakeTables (an IPv4 and an IPv6 one may share the sets, as iptables
	// and ip6tables share the kernel's ipsets); added by NewFakeTables.
	inUse []func(name string) bool
}

type fakeSet struct {
	spec    SetSpec
	members map[Member]struct{}
}

var _ IPSet = (*FakeIPSet)(nil)

// NewFakeIPSet returns an empty fake.
func NewFakeIPSet() *FakeIPSet { return &FakeIPSet{sets: map[string]*fakeSet{}} }

func (f *FakeIPSet) ListNames() ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Sorted(maps.Keys(f.sets)), nil
}

func (f *FakeIPSet) Get(name string) (*Set, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.sets[name]
	if !ok {
		return nil, fmt.Errorf("ipset list %s: %w", name, ErrNotFound)
	}
	out := &Set{SetSpec: s.spec, Members: slices.Collect(maps.Keys(s.members))}
	slices.SortFunc(out.Members, compareMembers)
	return out, nil
}

func (f *FakeIPSet) Create(spec SetSpec) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops = append(f.ops, "create "+spec.Name)
	if len(spec.Name) > maxSetNameLen {
		return fmt.Errorf("ipset create %s: name longer than %d", spec.Name, maxSetNameLen)
	}
	if _, ok := f.sets[spec.Name]; ok {
		return fmt.Errorf("ipset create %s: %w", spec.Name, ErrExists)
	}
	switch spec.Type {
	case HashIPPort, HashIPPortIP, HashIPPortNet, HashNetPort:
		if spec.Family != FamilyINet && spec.Family != FamilyINet6 {
			return fmt.Errorf("ipset create %s: invalid family %q", spec.Name, spec.Family)
		}
		if spec.MaxElem == 0 {
			// The kernel defaults maxelem to 65536; be explicit instead.
			spec.MaxElem = 65536
		}
	default:
		return fmt.Errorf("ipset create %s: unknown type %q", spec.Name, spec.Type)
	}
	f.sets[spec.Name] = &fakeSet{spec: spec, members: map[Member]struct{}{}}
	return nil
}

func (f *FakeIPSet) Add(set string, m Member) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops = append(f.ops, "add "+set+" "+m.String())
	s, ok := f.sets[set]
	if !ok {
		return fmt.Errorf("ipset add %s %s: %w", set, m, ErrNotFound)
	}
	if why := validMember(s.spec, m); why != "" {
		return fmt.Errorf("ipset add %s %s: %s", set, m, why)
	}
	if _, ok := s.members[m]; ok {
		return fmt.Errorf("ipset add %s %s: %w", set, m, ErrExists)
	}
	if uint32(len(s.members)) >= s.spec.MaxElem {
		return fmt.Errorf("ipset add %s %s: hash is full, cannot add more elements", set, m)
	}
	s.members[m] = struct{}{}
	return nil
}

func (f *FakeIPSet) Del(set string, m Member) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops = append(f.ops, "del "+set+" "+m.String())
	s, ok := f.sets[set]
	if !ok {
		return fmt.Errorf("ipset del %s %s: %w", set, m, ErrNotFound)
	}
	if _, ok := s.members[m]; !ok {
		return fmt.Errorf("ipset del %s %s: %w", set, m, ErrNotFound)
	}
	delete(s.members, m)
	return nil
}

func (f *FakeIPSet) Test(set string, m Member) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.sets[set]
	if !ok {
		return false, fmt.Errorf("ipset test %s %s: %w", set, m, ErrNotFound)
	}
	if why := validMember(s.spec, m); why != "" {
		return false, fmt.Errorf("ipset test %s %s: %s", set, m, why)
	}
	if _, ok = s.members[m]; ok {
		return true, nil
	}
	// As the kernel: a host address in a network field matches every
	// member whose network holds it.
	for o := range s.members {
		if m.Proto == o.Proto && m.Port == o.Port && m.IP2 == o.IP2 &&
			coveredBy(m.Net, o.Net) && coveredBy(m.Net2, o.Net2) {
			return true, nil
		}
	}
	return false, nil
}

// coveredBy reports whether a test value p matches a member's field q:
// equal, or p a host address inside network q.
func coveredBy(p, q netip.Prefix) bool {
	return p == q || (p.IsSingleIP() && q.Contains(p.Addr()))
}

func (f *FakeIPSet) Swap(a, b string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops = append(f.ops, "swap "+a+" "+b)
	sa, oka := f.sets[a]
	sb, okb := f.sets[b]
	if !oka || !okb {
		return fmt.Errorf("ipset swap %s %s: %w", a, b, ErrNotFound)
	}
	if sa.spec.Type != sb.spec.Type || sa.spec.Family != sb.spec.Family {
		return fmt.Errorf("ipset swap %s %s: type or family mismatch", a, b)
	}
	// Names stay, everything else moves: that is what references see.
	sa.spec, sb.spec = sb.spec, sa.spec
	sa.spec.Name, sb.spec.Name = a, b
	sa.members, sb.members = sb.members, sa.members
	return nil
}

func (f *FakeIPSet) Destroy(name string) error {
	// Ask the tables first, without our lock: FakeTables takes its own lock
	// and asks us whether sets exist.
	inUse := false
	for _, used := range f.inUse {
		inUse = inUse || used(name)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops = append(f.ops, "destroy "+name)
	if _, ok := f.sets[name]; !ok {
		return nil // as the kernel without NLM_F_EXCL; see IPSet.Destroy
	}
	if inUse {
		return fmt.Errorf("ipset destroy %s: %w: referenced by a rule", name, ErrInUse)
	}
	delete(f.sets, name)
	return nil
}

func (f *FakeIPSet) exists(name string) bool {
	_, ok := f.family(name)
	return ok
}

// family returns the family of set name, false if there is no such set.
func (f *FakeIPSet) family(name string) (Family, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.sets[name]
	if !ok {
		return "", false
	}
	return s.spec.Family, true
}

// Ops returns the mutating calls made so far ("add SET MEMBER", ...),
// including failed ones.
func (f *FakeIPSet) Ops() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.ops)
}

// ResetOps forgets the recorded calls.
func (f *FakeIPSet) ResetOps() {
	f.mu.Lock()
	f.ops = nil
	f.mu.Unlock()
}

// Dump renders every set, sorted by name, members in numeric order:
//
//	set NAME type hash:ip,port family inet maxelem 65536
//	  10.96.0.10,tcp:80
func (f *FakeIPSet) Dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var b strings.Builder
	for _, name := range slices.Sorted(maps.Keys(f.sets)) {
		s := f.sets[name]
		members := slices.Collect(maps.Keys(s.members))
		slices.SortFunc(members, compareMembers)
		writeSet(&b, s.spec, members)
	}
	return b.String()
}

func writeSet(b *strings.Builder, spec SetSpec, members []Member) {
	fmt.Fprintf(b, "set %s %s\n", spec.Name, spec)
	for _, m := range members {
		fmt.Fprintf(b, "  %s\n", m)
	}
}
