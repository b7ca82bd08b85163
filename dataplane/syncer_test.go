package dataplane

import (
	"context"
	"errors"
	"testing"
)

// recordingDataplane records each Sync's full flag and changed Services.
type recordingDataplane struct {
	fail  error
	syncs []Changes
	dumps []string
}

func (r *recordingDataplane) Name() string { return "recording" }
func (r *recordingDataplane) Sync(_ context.Context, st *State, c Changes) error {
	r.syncs = append(r.syncs, c)
	r.dumps = append(r.dumps, st.Dump())
	return r.fail
}
func (r *recordingDataplane) Cleanup(context.Context) error { return nil }

func TestSyncerWaitsForSourcesThenFullThenPartial(t *testing.T) {
	tr := NewTracker("node-a", TranslateOptions{}, nil)
	dp := &recordingDataplane{}
	s := NewSyncer(tr, dp, 0, 0)
	ctx := context.Background()

	tr.OnServiceUpsert(svc("demo", "web"))
	if err := s.syncOnce(ctx, false); err != nil || len(dp.syncs) != 0 {
		t.Fatalf("synced before sources were synced: %v %v", err, dp.syncs)
	}
	tr.SetServicesSynced()
	tr.SetEndpointSlicesSynced()

	// First sync is full.
	if err := s.syncOnce(ctx, false); err != nil {
		t.Fatal(err)
	}
	if !dp.syncs[0].Full || !dp.syncs[0].Has(ServiceName{"demo", "web"}) {
		t.Fatalf("first sync %+v", dp.syncs[0])
	}
	// Then partial with only what changed.
	tr.OnServiceUpsert(svc("demo", "api"))
	if err := s.syncOnce(ctx, false); err != nil {
		t.Fatal(err)
	}
	if c := dp.syncs[1]; c.Full || changedNames(c) != "demo/api" {
		t.Fatalf("second sync %+v", c)
	}
	// A failure makes the next sync full, even without periodic.
	dp.fail = errors.New("kernel said no")
	tr.OnServiceDelete("demo", "api")
	if err := s.syncOnce(ctx, false); err == nil {
		t.Fatal("error not returned to the runner")
	}
	if _, lastErr, _ := s.Status(); lastErr == nil {
		t.Fatal("status lost the error")
	}
	dp.fail = nil
	if err := s.syncOnce(ctx, false); err != nil {
		t.Fatal(err)
	}
	if c := dp.syncs[3]; !c.Full {
		t.Fatalf("sync after failure not full: %+v", c)
	}
	// Periodic syncs are full.
	if err := s.syncOnce(ctx, true); err != nil {
		t.Fatal(err)
	}
	if c := dp.syncs[4]; !c.Full {
		t.Fatalf("periodic sync not full: %+v", c)
	}
	if last, lastErr, n := s.Status(); last.IsZero() || lastErr != nil || n != 4 {
		t.Fatalf("status %v %v %d", last, lastErr, n)
	}
}

type triggerDataplane struct {
	recordingDataplane
	trigger func()
}

func (d *triggerDataplane) SetTrigger(f func()) { d.trigger = f }

func TestSyncerHandsTriggerToDataplane(t *testing.T) {
	dp := &triggerDataplane{}
	NewSyncer(NewTracker("n", TranslateOptions{}, nil), dp, 0, 0)
	if dp.trigger == nil {
		t.Fatal("Triggerable dataplane got no trigger")
	}
}

type recordingObserver struct {
	queued  int
	results []SyncResult
}

func (o *recordingObserver) Queued()             { o.queued++ }
func (o *recordingObserver) Synced(r SyncResult) { o.results = append(o.results, r) }

// TestSyncerObservers: Notify queues, each sync that runs reports what it
// did (full or partial, sizes, error); syncs skipped before the sources
// are ready report nothing.
func TestSyncerObservers(t *testing.T) {
	tr := NewTracker("node-a", TranslateOptions{}, nil)
	dp := &recordingDataplane{}
	s := NewSyncer(tr, dp, 0, 0)
	o := &recordingObserver{}
	s.Observe(o)
	ctx := context.Background()

	tr.OnServiceUpsert(svc("demo", "web"))
	s.Notify()
	s.Notify()
	_ = s.syncOnce(ctx, false)
	if o.queued != 2 || len(o.results) != 0 {
		t.Fatalf("before sources synced: queued %d, results %+v", o.queued, o.results)
	}
	tr.SetServicesSynced()
	tr.SetEndpointSlicesSynced()
	if err := s.syncOnce(ctx, false); err != nil {
		t.Fatal(err)
	}
	tr.OnServiceUpsert(svc("demo", "api"))
	dp.fail = errors.New("no")
	_ = s.syncOnce(ctx, false)
	if len(o.results) != 2 {
		t.Fatalf("results %+v", o.results)
	}
	first, second := o.results[0], o.results[1]
	if !first.Full || first.Err != nil || first.ServicePorts != 1 || first.Start.IsZero() {
		t.Errorf("first %+v", first)
	}
	if second.Full || second.Err == nil || second.ChangedServices != 1 || second.ServicePorts != 2 {
		t.Errorf("second %+v", second)
	}
}

// TestSyncerRequestFullAndView: RequestFull makes the next sync full even
// without changes; View sees the State of the last sync.
func TestSyncerRequestFullAndView(t *testing.T) {
	tr := NewTracker("node-a", TranslateOptions{}, nil)
	dp := &recordingDataplane{}
	s := NewSyncer(tr, dp, 0, 0)
	ctx := context.Background()
	s.View(func(st *State) {
		if st != nil {
			t.Error("State before the first sync")
		}
	})
	tr.OnServiceUpsert(svc("demo", "web"))
	tr.SetServicesSynced()
	tr.SetEndpointSlicesSynced()
	if err := s.syncOnce(ctx, false); err != nil {
		t.Fatal(err)
	}
	if err := s.syncOnce(ctx, false); err != nil || dp.syncs[1].Full {
		t.Fatalf("second sync %+v %v, want partial", dp.syncs[1], err)
	}
	s.RequestFull()
	if err := s.syncOnce(ctx, false); err != nil || !dp.syncs[2].Full {
		t.Fatalf("after RequestFull: %+v %v, want full", dp.syncs[2], err)
	}
	if err := s.syncOnce(ctx, false); err != nil || dp.syncs[3].Full {
		t.Fatalf("after the requested full sync: %+v %v, want partial", dp.syncs[3], err)
	}
	s.View(func(st *State) {
		if st == nil || len(st.Services) != 1 {
			t.Errorf("View: %v", st)
		}
	})
}

// TestChainHandsTriggerToParts: the agent's dataplane is a Chain (of
// Chains); the IPVS drain timer inside must still get the trigger.
func TestChainHandsTriggerToParts(t *testing.T) {
	inner := &triggerDataplane{}
	outer := &triggerDataplane{}
	NewSyncer(NewTracker("n", TranslateOptions{}, nil), Chain{&recordingDataplane{}, Chain{inner}, outer}, 0, 0)
	if inner.trigger == nil || outer.trigger == nil {
		t.Fatalf("trigger not handed through the chain: inner %v, outer %v", inner.trigger != nil, outer.trigger != nil)
	}
}
