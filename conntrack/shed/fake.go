package shed

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
)

// Fake is an in-memory Closer with SockDiag's semantics: sockets live in
// namespaces; a target in an unknown namespace fails with
// ErrNetnsNotFound, a target without a matching open socket (or whose
// Cookie differs from the socket's) is NotFound, anything else is removed
// and Closed. Invalid targets and a cancelled ctx fail as in SockDiag.
type Fake struct {
	mu         sync.Mutex
	netns      map[uint64]map[FakeSocket]uint64 // netns cookie -> socket -> socket cookie
	calls      [][]Target
	closed     []Target
	nextCookie uint64
	// Err, when set, makes Close fail every target with it, touching
	// nothing (like a kernel without socket destroy).
	Err error
}

// FakeSocket is a socket's addresses as the Fake keys them.
type FakeSocket struct{ Local, Remote netip.AddrPort }

var _ Closer = (*Fake)(nil)

// NewFake returns a Fake with no namespaces.
func NewFake() *Fake { return &Fake{netns: map[uint64]map[FakeSocket]uint64{}} }

// AddNetns makes a namespace exist (AddSocket does too).
func (f *Fake) AddNetns(netnsCookie uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.netns[netnsCookie] == nil {
		f.netns[netnsCookie] = map[FakeSocket]uint64{}
	}
}

// RemoveNetns deletes a namespace and its sockets.
func (f *Fake) RemoveNetns(netnsCookie uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.netns, netnsCookie)
}

// AddSocket opens a socket in a namespace and returns its cookie (unique
// in this Fake, never 0).
func (f *Fake) AddSocket(netnsCookie uint64, local, remote netip.AddrPort) uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.netns[netnsCookie] == nil {
		f.netns[netnsCookie] = map[FakeSocket]uint64{}
	}
	f.nextCookie++
	f.netns[netnsCookie][FakeSocket{unmapAP(local), unmapAP(remote)}] = f.nextCookie
	return f.nextCookie
}

// Sockets returns the open sockets of a namespace, sorted.
func (f *Fake) Sockets(netnsCookie uint64) []FakeSocket {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []FakeSocket
	for s := range f.netns[netnsCookie] {
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b FakeSocket) int {
		if c := a.Local.Compare(b.Local); c != 0 {
			return c
		}
		return a.Remote.Compare(b.Remote)
	})
	return out
}

// Calls returns the targets of every Close call, in call order.
func (f *Fake) Calls() [][]Target {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([][]Target, len(f.calls))
	for i, c := range f.calls {
		out[i] = slices.Clone(c)
	}
	return out
}

// Closed returns the targets that were closed, in order.
func (f *Fake) Closed() []Target {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.closed)
}

// Close implements Closer.
func (f *Fake) Close(ctx context.Context, targets []Target) (Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, slices.Clone(targets))
	res := newResult(len(targets))
	if f.Err != nil {
		for i := range targets {
			res.set(i, Failed)
		}
		return res, fmt.Errorf("shed: %d targets: %w", len(targets), f.Err)
	}
	var errs []error
	order, groups, norm := groupByNetns(targets, false, &res, &errs)
	for _, nc := range order {
		idx := groups[nc]
		if err := ctx.Err(); err != nil {
			failAll(&res, &errs, idx, fmt.Errorf("shed: %d targets in netns %d not tried: %w", len(idx), nc, err))
			continue
		}
		socks := f.netns[nc]
		if socks == nil {
			failAll(&res, &errs, idx, fmt.Errorf("shed: %d targets: netns cookie %d: %w", len(idx), nc, ErrNetnsNotFound))
			continue
		}
		for _, i := range idx {
			t := norm[i]
			k := FakeSocket{t.Local, t.Remote}
			c, ok := socks[k]
			if !ok || (t.Cookie != 0 && t.Cookie != c) {
				res.set(i, NotFound)
				continue
			}
			delete(socks, k)
			f.closed = append(f.closed, t)
			res.set(i, Closed)
		}
	}
	return res, errors.Join(errs...)
}

func unmapAP(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}
