package metrics

import (
	"context"
	"sync"
	"time"

	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
)

// DefaultRefreshInterval is how often a Refresher reads by default.
const DefaultRefreshInterval = 15 * time.Second

// RefreshFunc reads one dataplane statistic (the IPVS table, conntrack)
// and stores it where its collector finds it. It runs on the Refresher's
// goroutine only.
type RefreshFunc struct {
	Name string
	Read func(ctx context.Context) error
}

// Refresher reads what would be too costly to read on a scrape (the whole
// IPVS table, the conntrack table) in the background, every Interval: once
// at start, then on each tick. A read that fails keeps the previous values
// and is logged when its error changes. Reads run one after the other; a
// slow one delays the next tick, it never piles up.
type Refresher struct {
	interval time.Duration
	clock    clock.WithTicker
	funcs    []RefreshFunc

	mu      sync.Mutex
	lastErr map[string]string
}

// NewRefresher returns a Refresher of funcs. interval <= 0 is
// DefaultRefreshInterval; clk nil is the real clock.
func NewRefresher(interval time.Duration, clk clock.WithTicker, funcs ...RefreshFunc) *Refresher {
	if interval <= 0 {
		interval = DefaultRefreshInterval
	}
	if clk == nil {
		clk = clock.RealClock{}
	}
	return &Refresher{interval: interval, clock: clk, funcs: funcs, lastErr: map[string]string{}}
}

// Run refreshes until ctx ends.
func (r *Refresher) Run(ctx context.Context) {
	if len(r.funcs) == 0 {
		return
	}
	t := r.clock.NewTicker(r.interval)
	defer t.Stop()
	for {
		r.RefreshNow(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
	}
}

// RefreshNow runs every read once.
func (r *Refresher) RefreshNow(ctx context.Context) {
	for _, f := range r.funcs {
		if ctx.Err() != nil {
			return
		}
		err := f.Read(ctx)
		msg := ""
		if err != nil {
			msg = err.Error()
		}
		r.mu.Lock()
		changed := r.lastErr[f.Name] != msg
		r.lastErr[f.Name] = msg
		r.mu.Unlock()
		switch {
		case err != nil && changed:
			klog.ErrorS(err, "Cannot refresh metrics; keeping the last values", "source", f.Name)
		case err == nil && changed:
			klog.InfoS("Refreshing metrics again", "source", f.Name)
		}
	}
}
