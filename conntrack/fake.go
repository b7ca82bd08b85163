package conntrack

import (
	"slices"
	"sync"
)

// Fake is an in-memory conntrack table. ClearFlows validates like Netlink
// (a bad filter list clears and records nothing), deletes the matching
// Flows, and records each successful call's filters in Cleared; MarkFlows
// likewise sets the mark bits of the matching Flows and records the call
// in Marked.
type Fake struct {
	mu sync.Mutex
	// Flows is the table; tests may seed it directly or with NewFake.
	Flows []Flow
	// Cleared holds the filters of each successful ClearFlows call, in
	// call order.
	Cleared [][]Filter
	// Marked holds each successful MarkFlows call, in call order.
	Marked []MarkCall
	// Err, when set, makes ClearFlows and MarkFlows fail with it without
	// touching anything (like a netlink error before the dump).
	Err error
}

var _ Interface = (*Fake)(nil)

// NewFake returns a Fake holding flows.
func NewFake(flows ...Flow) *Fake {
	return &Fake{Flows: slices.Clone(flows)}
}

// ClearFlows implements Interface.
func (f *Fake) ClearFlows(filters []Filter) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Err != nil {
		return 0, f.Err
	}
	if err := ValidateFilters(filters); err != nil {
		return 0, err
	}
	before := len(f.Flows)
	f.Flows = slices.DeleteFunc(f.Flows, func(fl Flow) bool {
		return slices.ContainsFunc(filters, func(flt Filter) bool { return flt.Matches(fl) })
	})
	f.Cleared = append(f.Cleared, slices.Clone(filters))
	return before - len(f.Flows), nil
}

// ListFlows implements Interface.
func (f *Fake) ListFlows() ([]Flow, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.Flows), nil
}

// ClearedFilters returns the filters of every successful call, flattened.
func (f *Fake) ClearedFilters() []Filter {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Filter
	for _, c := range f.Cleared {
		out = append(out, c...)
	}
	return out
}

// Reset forgets recorded calls (the table stays).
func (f *Fake) Reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Cleared = nil
	f.Marked = nil
}
