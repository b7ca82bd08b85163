package dataplane

import (
	"context"
	"errors"
)

// Dataplane programs one kernel subsystem (or a group of them) from the
// desired State. Implementations diff against what the kernel reports and
// apply only the difference; they never flush.
//
// Sync is called by a single goroutine (the sync loop). A returned error makes
// the loop retry with backoff, and the next Sync is then a full one.
type Dataplane interface {
	// Name is a short name for logs and metrics ("ipvs", "nftables", ...).
	Name() string
	// Sync makes the kernel match st. changes narrows the work on partial
	// syncs; see Changes.
	Sync(ctx context.Context, st *State, changes Changes) error
	// Cleanup removes every kernel object the dataplane owns and nothing
	// else. It works without prior Sync (e.g. `switchyard --cleanup`).
	Cleanup(ctx context.Context) error
}

// Chain runs several dataplanes in order as one. Sync stops at the first
// error (later parts would build on a half-applied earlier part); Cleanup
// runs all of them and joins the errors.
type Chain []Dataplane

func (c Chain) Name() string {
	name := ""
	for i, d := range c {
		if i > 0 {
			name += "+"
		}
		name += d.Name()
	}
	return name
}

func (c Chain) Sync(ctx context.Context, st *State, changes Changes) error {
	for _, d := range c {
		if err := d.Sync(ctx, st, changes); err != nil {
			return &SyncError{Dataplane: d.Name(), Err: err}
		}
	}
	return nil
}

func (c Chain) Cleanup(ctx context.Context) error {
	var errs []error
	// Reverse order: later parts may reference objects of earlier ones.
	for i := len(c) - 1; i >= 0; i-- {
		if err := c[i].Cleanup(ctx); err != nil {
			errs = append(errs, &SyncError{Dataplane: c[i].Name(), Err: err})
		}
	}
	return errors.Join(errs...)
}

// SetTrigger hands f to every part that has time-driven work (Triggerable),
// nested Chains included, so the Syncer reaches an IPVS drain timer inside
// the agent's chain.
func (c Chain) SetTrigger(f func()) {
	for _, d := range c {
		if tr, ok := d.(Triggerable); ok {
			tr.SetTrigger(f)
		}
	}
}

var _ Triggerable = Chain(nil)

// SyncError names the dataplane part that failed.
type SyncError struct {
	Dataplane string
	Err       error
}

func (e *SyncError) Error() string { return e.Dataplane + ": " + e.Err.Error() }
func (e *SyncError) Unwrap() error { return e.Err }

// RepairReporter is implemented by dataplanes that can tell drift repairs
// apart from ordinary programming: a sync in which the kernel was found
// differing from what this process had last programmed, with no model
// change behind it, and was written to fix it (something deleted or edited
// an object behind the agent's back). Repairs returns how many syncs did
// so since the process started; it is safe to call from any goroutine
// (metrics scrapes).
type RepairReporter interface {
	Repairs() uint64
}
