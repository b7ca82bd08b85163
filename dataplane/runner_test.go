package dataplane

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

type runnerCall struct {
	at       time.Time
	periodic bool
}

// runnerHarness drives a Runner on a fake clock. Each call of fn is
// reported on calls and answered with the next error from results.
type runnerHarness struct {
	t       *testing.T
	clock   *clocktesting.FakeClock
	runner  *Runner
	calls   chan runnerCall
	results chan error
	idle    atomic.Bool
}

func newRunnerHarness(t *testing.T, min, max, retry time.Duration) *runnerHarness {
	h := &runnerHarness{
		t:       t,
		clock:   clocktesting.NewFakeClock(time.Unix(1000, 0)),
		calls:   make(chan runnerCall, 10),
		results: make(chan error, 10),
	}
	h.runner = newRunner(func(ctx context.Context, periodic bool) error {
		h.calls <- runnerCall{at: h.clock.Now(), periodic: periodic}
		select {
		case err := <-h.results:
			return err
		case <-time.After(5 * time.Second):
			t.Error("runner harness: no result queued for a call")
			return nil
		}
	}, min, max, retry, h.clock)
	h.runner.idle = h.idle.Store
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { h.runner.Loop(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return h
}

// expectCall waits (in real time, bounded) for a call and checks its time
// offset from the start and its periodic flag.
func (h *runnerHarness) expectCall(offset time.Duration, periodic bool, result error) {
	h.t.Helper()
	h.results <- result
	select {
	case c := <-h.calls:
		if got := c.at.Sub(time.Unix(1000, 0)); got != offset || c.periodic != periodic {
			h.t.Fatalf("call at +%v periodic=%v, want +%v periodic=%v", got, c.periodic, offset, periodic)
		}
	case <-time.After(5 * time.Second):
		h.t.Fatalf("no call, want one at +%v", offset)
	}
}

func (h *runnerHarness) expectNoCall() {
	h.t.Helper()
	select {
	case c := <-h.calls:
		h.t.Fatalf("unexpected call at %v", c.at)
	case <-time.After(50 * time.Millisecond):
	}
}

// waitTimer waits until the loop is idle with its timer armed, so clock
// steps and requests are seen by it in order.
func (h *runnerHarness) waitTimer() {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for stable := 0; stable < 3; {
		if time.Now().After(deadline) {
			h.t.Fatal("runner never went idle")
		}
		if h.idle.Load() && len(h.runner.requests) == 0 && len(h.calls) == 0 {
			stable++
		} else {
			stable = 0
		}
		time.Sleep(time.Millisecond)
	}
}

func (h *runnerHarness) step(d time.Duration) {
	h.t.Helper()
	h.waitTimer()
	h.clock.Step(d)
}

func TestRunnerFirstRequestRunsImmediately(t *testing.T) {
	h := newRunnerHarness(t, time.Second, 30*time.Second, time.Second)
	h.waitTimer()
	h.runner.Run()
	h.expectCall(0, false, nil)
}

func TestRunnerCoalescesWithinMinInterval(t *testing.T) {
	h := newRunnerHarness(t, time.Second, 30*time.Second, time.Second)
	h.waitTimer()
	h.runner.Run()
	h.expectCall(0, false, nil)
	h.waitTimer()
	// Three requests inside the min interval make one call at its end.
	h.runner.Run()
	h.runner.Run()
	h.runner.Run()
	h.expectNoCall()
	h.step(500 * time.Millisecond)
	h.expectNoCall()
	h.step(500 * time.Millisecond)
	h.expectCall(time.Second, false, nil)
	h.expectNoCall()
}

func TestRunnerPeriodicAtMaxInterval(t *testing.T) {
	h := newRunnerHarness(t, time.Second, 30*time.Second, time.Second)
	h.step(29 * time.Second)
	h.expectNoCall()
	h.step(time.Second)
	h.expectCall(30*time.Second, true, nil)
	h.step(30 * time.Second)
	h.expectCall(60*time.Second, true, nil)
}

func TestRunnerRetriesWithBackoff(t *testing.T) {
	h := newRunnerHarness(t, 0, 30*time.Second, time.Second)
	h.waitTimer()
	h.runner.Run()
	boom := errors.New("boom")
	h.expectCall(0, false, boom)
	h.step(time.Second)
	h.expectCall(time.Second, false, boom)
	h.step(time.Second) // second retry waits 2s
	h.expectNoCall()
	h.step(time.Second)
	h.expectCall(3*time.Second, false, nil)
	// Success resets to the max interval.
	h.step(29 * time.Second)
	h.expectNoCall()
	h.step(time.Second)
	h.expectCall(33*time.Second, true, nil)
}

func TestRunnerBackoffCappedAtMaxInterval(t *testing.T) {
	r := newRunner(nil, time.Second, 10*time.Second, time.Second, clocktesting.NewFakeClock(time.Now()))
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second, 10 * time.Second}
	for i, w := range want {
		if got := r.backoff(i + 1); got != w {
			t.Errorf("backoff(%d) = %v, want %v", i+1, got, w)
		}
	}
}
