package ipvs

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
)

// FakeLinks is an in-memory node: named links with addresses. The dummy
// link behaves like NetlinkLinks' (ErrNotFound when absent, ErrExists for a
// duplicate address); other links are set up with SetHostAddresses and are
// only ever read.
type FakeLinks struct {
	mu    sync.Mutex
	name  string
	links map[string]map[netip.Addr]bool
	calls []string
	// NoIPv6 makes AddAddress refuse IPv6 like a node booted without it.
	NoIPv6 bool
	// Fail, when set, is consulted before every call with its name and
	// address (zero for calls without one).
	Fail func(op string, a netip.Addr) error
}

var _ Links = (*FakeLinks)(nil)

// NewFakeLinks returns a node without the dummy link (name, or
// DefaultLinkName when empty) and with lo holding 127.0.0.1 and ::1.
func NewFakeLinks(name string) *FakeLinks {
	if name == "" {
		name = DefaultLinkName
	}
	return &FakeLinks{name: name, links: map[string]map[netip.Addr]bool{
		"lo": {netip.MustParseAddr("127.0.0.1"): true, netip.MustParseAddr("::1"): true},
	}}
}

// SetHostAddresses replaces the addresses of a non-dummy link.
func (f *FakeLinks) SetHostAddresses(link string, addrs ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := map[netip.Addr]bool{}
	for _, a := range addrs {
		m[netip.MustParseAddr(a)] = true
	}
	f.links[link] = m
}

// Calls returns every call made so far.
func (f *FakeLinks) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// Mutations returns the calls that changed (or tried to change) state;
// EnsureLink is counted only when it created the link.
func (f *FakeLinks) Mutations() []string {
	var out []string
	for _, c := range f.Calls() {
		if strings.HasPrefix(c, "AddAddress") || strings.HasPrefix(c, "Delete") || c == "CreateLink" {
			out = append(out, c)
		}
	}
	return out
}

// ResetCalls forgets recorded calls.
func (f *FakeLinks) ResetCalls() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = nil
}

func (f *FakeLinks) record(op string, a netip.Addr) error {
	c := op
	if a.IsValid() {
		c += " " + a.String()
	}
	f.calls = append(f.calls, c)
	if f.Fail != nil {
		return f.Fail(op, a)
	}
	return nil
}

func (f *FakeLinks) EnsureLink() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("EnsureLink", netip.Addr{}); err != nil {
		return err
	}
	if _, ok := f.links[f.name]; !ok {
		f.calls = append(f.calls, "CreateLink")
		f.links[f.name] = map[netip.Addr]bool{}
	}
	return nil
}

func (f *FakeLinks) Addresses() ([]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("Addresses", netip.Addr{}); err != nil {
		return nil, err
	}
	m, ok := f.links[f.name]
	if !ok {
		return nil, fmt.Errorf("link %s: %w", f.name, ErrNotFound)
	}
	return slices.SortedFunc(maps.Keys(m), netip.Addr.Compare), nil
}

func (f *FakeLinks) AddAddress(a netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("AddAddress", a); err != nil {
		return err
	}
	m, ok := f.links[f.name]
	if !ok {
		return fmt.Errorf("link %s: %w", f.name, ErrNotFound)
	}
	if a.Is6() && f.NoIPv6 {
		return fmt.Errorf("add %s to %s: %w", a, f.name, ErrFamilyUnsupported)
	}
	if m[a] {
		return fmt.Errorf("add %s to %s: %w", a, f.name, ErrExists)
	}
	m[a] = true
	return nil
}

func (f *FakeLinks) DeleteAddress(a netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("DeleteAddress", a); err != nil {
		return err
	}
	m, ok := f.links[f.name]
	if !ok {
		return fmt.Errorf("link %s: %w", f.name, ErrNotFound)
	}
	if !m[a] {
		return fmt.Errorf("delete %s from %s: %w", a, f.name, ErrNotFound)
	}
	delete(m, a)
	return nil
}

func (f *FakeLinks) NodeAddresses() ([]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("NodeAddresses", netip.Addr{}); err != nil {
		return nil, err
	}
	var out []netip.Addr
	for name, m := range f.links {
		if name == f.name {
			continue
		}
		for a := range m {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out), nil
}

func (f *FakeLinks) DeleteLink() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("DeleteLink", netip.Addr{}); err != nil {
		return err
	}
	if _, ok := f.links[f.name]; !ok {
		return fmt.Errorf("link %s: %w", f.name, ErrNotFound)
	}
	delete(f.links, f.name)
	return nil
}

// HasLink reports whether the dummy link exists.
func (f *FakeLinks) HasLink() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.links[f.name]
	return ok
}

// Dump lists every link and its addresses in name and address order.
func (f *FakeLinks) Dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var b strings.Builder
	for _, name := range slices.Sorted(maps.Keys(f.links)) {
		b.WriteString("link " + name + "\n")
		for _, a := range slices.SortedFunc(maps.Keys(f.links[name]), netip.Addr.Compare) {
			b.WriteString("  addr " + a.String() + "\n")
		}
	}
	return b.String()
}
