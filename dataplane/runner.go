package dataplane

import (
	"context"
	"time"

	"k8s.io/utils/clock"
)

// Runner calls a sync function with bounded frequency, like kube-proxy's
// BoundedFrequencyRunner. It guarantees:
//
//  1. at most one call per MinInterval: requests (Run) arriving sooner are
//     coalesced into a single call at the end of the interval;
//  2. at least one call per MaxInterval, even with no requests (the periodic
//     full resync that repairs drift);
//  3. after a failed call, a retry with exponential backoff, starting at
//     RetryMin and doubling up to MaxInterval, until a call succeeds.
//
// Calls never overlap: they run on the goroutine that runs Loop.
type Runner struct {
	fn          func(ctx context.Context, periodic bool) error
	minInterval time.Duration
	maxInterval time.Duration
	retryMin    time.Duration
	clock       clock.Clock

	requests chan struct{}
	// idle, when set (tests), is called with true when the loop is about to
	// wait with its timer armed, and with false when it wakes.
	idle func(bool)
}

// NewRunner returns a Runner. fn receives periodic=true when the call is due
// to MaxInterval elapsing without any other call.
func NewRunner(fn func(ctx context.Context, periodic bool) error, minInterval, maxInterval time.Duration) *Runner {
	return newRunner(fn, minInterval, maxInterval, time.Second, clock.RealClock{})
}

func newRunner(fn func(ctx context.Context, periodic bool) error, minInterval, maxInterval, retryMin time.Duration, clk clock.Clock) *Runner {
	if maxInterval < minInterval {
		maxInterval = minInterval
	}
	if retryMin <= 0 {
		retryMin = time.Second
	}
	if retryMin > maxInterval && maxInterval > 0 {
		retryMin = maxInterval
	}
	return &Runner{
		fn:          fn,
		minInterval: minInterval,
		maxInterval: maxInterval,
		retryMin:    retryMin,
		clock:       clk,
		requests:    make(chan struct{}, 1),
	}
}

// Run requests a call. It never blocks; requests made while one is pending
// are merged.
func (r *Runner) Run() {
	select {
	case r.requests <- struct{}{}:
	default:
	}
}

// Loop runs until ctx is done. The first call happens as soon as Run is
// called or MaxInterval elapses.
func (r *Runner) Loop(ctx context.Context) {
	var (
		lastRun  time.Time
		pending  bool // a request waits for MinInterval to pass
		failures int
	)
	timer := r.clock.NewTimer(r.maxInterval)
	defer timer.Stop()
	reset := func(d time.Duration) {
		if !timer.Stop() {
			select {
			case <-timer.C():
			default:
			}
		}
		timer.Reset(d)
	}
	for {
		periodic := false
		if r.idle != nil {
			r.idle(true)
		}
		select {
		case <-ctx.Done():
			return
		case <-r.requests:
			r.markBusy()
			pending = true
		case <-timer.C():
			r.markBusy()
			// Either the min-interval wait of a pending request, a retry,
			// or the max interval elapsing with no call at all.
			periodic = !pending && failures == 0
			pending = false
		}
		if !lastRun.IsZero() {
			if wait := r.minInterval - r.clock.Since(lastRun); wait > 0 && pending {
				reset(wait)
				continue
			}
		}
		pending = false
		lastRun = r.clock.Now()
		if err := r.fn(ctx, periodic); err != nil {
			failures++
			reset(r.backoff(failures))
			continue
		}
		failures = 0
		reset(r.maxInterval)
	}
}

func (r *Runner) markBusy() {
	if r.idle != nil {
		r.idle(false)
	}
}

func (r *Runner) backoff(failures int) time.Duration {
	d := r.retryMin
	for i := 1; i < failures && d < r.maxInterval; i++ {
		d *= 2
	}
	if d > r.maxInterval {
		d = r.maxInterval
	}
	if d < r.minInterval {
		d = r.minInterval
	}
	return d
}
