package dataplane

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/klog/v2"
)

// Triggerable is implemented by dataplanes that have time-driven work (an
// IPVS real server draining, for instance) and need a sync later without a
// model change. The function they get schedules one through the Runner.
type Triggerable interface {
	SetTrigger(func())
}

// SyncObserver follows the sync loop (the agent's health and metrics).
// Calls come from the sources' goroutines (Queued) and the sync goroutine
// (Synced); implementations must be safe for that.
type SyncObserver interface {
	// Queued: a change arrived and waits for a sync.
	Queued()
	// Synced: a sync ran (Err says whether it succeeded).
	Synced(r SyncResult)
}

// SyncResult describes one Dataplane.Sync.
type SyncResult struct {
	Full            bool
	Start           time.Time
	Duration        time.Duration
	Err             error
	ServicePorts    int // in the State synced
	ChangedServices int // in a partial sync
}

// Syncer is the proxy front end: it drains the Tracker and hands the State to
// the Dataplane, paced by a Runner. It is the only caller of Dataplane.Sync.
type Syncer struct {
	tracker *Tracker
	dp      Dataplane
	runner  *Runner

	needFull  bool // owned by the runner goroutine
	observers []SyncObserver
	// fullRequested asks the next sync to be full (RequestFull, from any
	// goroutine).
	fullRequested atomic.Bool

	// view guards the Tracker's State against readers (View): the sync
	// goroutine holds it for writing while Drain applies changes, readers
	// hold it for reading. Dataplane.Sync only reads the State, so it runs
	// without it.
	view  sync.RWMutex
	state *State

	mu          sync.Mutex
	lastSuccess time.Time
	lastErr     error
	syncs       int
	// drainedAt is when the last successful sync drained the Tracker;
	// synced is closed (and replaced) at each successful sync, waking
	// WaitSynced.
	drainedAt time.Time
	synced    chan struct{}
	// unprogrammed: the State changed (or a sync failed) since the last
	// successful sync, so the kernel may not have what View shows.
	unprogrammed bool
}

// NewSyncer wires a Tracker to a Dataplane. minSyncPeriod bounds how often
// the kernel is programmed; syncPeriod is the full-resync interval.
func NewSyncer(t *Tracker, dp Dataplane, minSyncPeriod, syncPeriod time.Duration) *Syncer {
	s := &Syncer{tracker: t, dp: dp, needFull: true, synced: make(chan struct{})}
	s.runner = NewRunner(s.syncOnce, minSyncPeriod, syncPeriod)
	if tr, ok := dp.(Triggerable); ok {
		tr.SetTrigger(s.runner.Run)
	}
	return s
}

// RequestFull makes the next sync full and schedules it (yardctl sync).
func (s *Syncer) RequestFull() {
	s.fullRequested.Store(true)
	s.runner.Run()
}

// View calls f with the State as of the last sync (nil before the first
// one), while no sync changes it. f must not keep or modify it.
func (s *Syncer) View(f func(st *State)) {
	s.view.RLock()
	defer s.view.RUnlock()
	f(s.state)
}

// Observe adds o to the observers of the loop. Call it before Run.
func (s *Syncer) Observe(o SyncObserver) { s.observers = append(s.observers, o) }

// Notify schedules a sync; sources call it after each event.
func (s *Syncer) Notify() {
	for _, o := range s.observers {
		o.Queued()
	}
	s.runner.Run()
}

// Run syncs until ctx is done.
func (s *Syncer) Run(ctx context.Context) { s.runner.Loop(ctx) }

// Programmed reports whether the kernel has the State View shows: the
// last sync succeeded and nothing changed since it drained the Tracker.
// While a sync of changes runs (or after one failed) it is false, so
// readers that act on the dataplane's behalf (the rebalancer) wait
// instead of acting on endpoints the kernel does not have yet.
func (s *Syncer) Programmed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.drainedAt.IsZero() && !s.unprogrammed
}

// WaitSynced returns once a sync that drained the Tracker at or after
// since succeeded: what was recorded in the Tracker before since is in
// the kernel (the rebalancer steers before it sheds). It returns ctx's
// error if that does not happen first.
func (s *Syncer) WaitSynced(ctx context.Context, since time.Time) error {
	for {
		s.mu.Lock()
		done, ch := !s.drainedAt.Before(since), s.synced
		s.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

// Status reports the time of the last successful sync, the last error (nil
// after a success) and how many syncs succeeded.
func (s *Syncer) Status() (lastSuccess time.Time, lastErr error, syncs int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastSuccess, s.lastErr, s.syncs
}

func (s *Syncer) syncOnce(ctx context.Context, periodic bool) error {
	// Until every source listed its objects, programming would remove
	// Services not yet seen (and traffic with them).
	if !s.tracker.Initialized() {
		klog.V(2).InfoS("Not syncing: sources not synced yet")
		return nil
	}
	drainedAt := time.Now()
	s.view.Lock()
	st, changes := s.tracker.Drain()
	s.state = st
	s.view.Unlock()
	if len(changes.Services) > 0 {
		s.mu.Lock()
		s.unprogrammed = true
		s.mu.Unlock()
	}
	changes.Full = s.needFull || periodic || s.fullRequested.Swap(false)
	start := time.Now()
	err := s.dp.Sync(ctx, st, changes)
	elapsed := time.Since(start)
	res := SyncResult{Full: changes.Full, Start: start, Duration: elapsed, Err: err, ServicePorts: len(st.Services), ChangedServices: len(changes.Services)}
	for _, o := range s.observers {
		o.Synced(res)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		// The drained changes are used up: only a full sync can be sure
		// to catch up with them.
		s.needFull = true
		s.lastErr = err
		s.unprogrammed = true
		klog.ErrorS(err, "Sync failed; will retry", "dataplane", s.dp.Name(), "full", changes.Full, "elapsed", elapsed)
		return err
	}
	s.needFull = false
	s.lastErr = nil
	s.lastSuccess = time.Now()
	s.syncs++
	s.drainedAt = drainedAt
	s.unprogrammed = false
	close(s.synced)
	s.synced = make(chan struct{})
	klog.V(2).InfoS("Synced", "dataplane", s.dp.Name(), "full", changes.Full, "changedServices", len(changes.Services), "servicePorts", len(st.Services), "elapsed", elapsed)
	return nil
}
