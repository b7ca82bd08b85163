package connfleet

import (
	"math"
	"slices"
	"sync"
	"time"
)

// Imbalance is max/mean of counts (0 without connections): 1 is even, 2
// is all on half of the backends.
func Imbalance(counts []int) float64 {
	total := 0
	for _, n := range counts {
		total += n
	}
	if total == 0 || len(counts) == 0 {
		return 0
	}
	return float64(slices.Max(counts)) / (float64(total) / float64(len(counts)))
}

// Balanced tells whether counts are within max/mean <= 1+tol.
func Balanced(counts []int, tol float64) bool {
	r := Imbalance(counts)
	return r > 0 && r <= 1+tol+1e-9
}

// MinimumResets is the fewest connections to shed so that counts, with
// the shed ones reconnected to the least-loaded backends, reach max/mean
// <= 1+tol: each backend keeps at most max(ceil(mean), floor((1+tol)*mean))
// (whole connections), the rest must go. With tol 0 it is the minimum for
// an exactly even spread: 500 for 500/500/0/0.
func MinimumResets(counts []int, tol float64) int {
	if len(counts) == 0 {
		return 0
	}
	total := 0
	for _, n := range counts {
		total += n
	}
	mean := float64(total) / float64(len(counts))
	limit := max(int(math.Ceil(mean-1e-9)), int(math.Floor((1+tol)*mean+1e-9)))
	need := 0
	for _, n := range counts {
		need += max(0, n-limit)
	}
	return need
}

// Sample is the fleet's view at one moment of a Recorder.
type Sample struct {
	At time.Time
	// Counts are the clients per backend, in Config.Backends order.
	Counts      []int
	Unconnected int
	// Lost and Failed are the totals so far.
	Lost   int64
	Failed int
}

// Recorder samples a fleet periodically.
type Recorder struct {
	stop    chan struct{}
	done    chan struct{}
	mu      sync.Mutex
	samples []Sample
}

// Record samples f every interval, at most max times, until Stop.
func (f *Fleet) Record(every time.Duration, max int) *Recorder {
	r := &Recorder{stop: make(chan struct{}), done: make(chan struct{})}
	take := func() {
		s := f.Snapshot()
		r.mu.Lock()
		r.samples = append(r.samples, Sample{At: time.Now(), Counts: s.Counts, Unconnected: s.Unconnected, Lost: s.Lost, Failed: s.Failed})
		r.mu.Unlock()
	}
	go func() {
		defer close(r.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		take()
		for n := 1; n < max; n++ {
			select {
			case <-r.stop:
				return
			case <-tick.C:
				take()
			}
		}
	}()
	return r
}

// Samples are the samples so far.
func (r *Recorder) Samples() []Sample {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.samples)
}

// Stop ends the sampling and returns every sample; idempotent.
func (r *Recorder) Stop() []Sample {
	select {
	case <-r.stop:
	default:
		close(r.stop)
	}
	<-r.done
	return r.Samples()
}

// SettledAt is the time of the first sample from which every later one
// is balanced (max/mean <= 1+tol) with no client reconnecting, and
// whether there is one (the last sample must be balanced).
func SettledAt(samples []Sample, tol float64) (time.Time, bool) {
	var at time.Time
	ok := false
	for _, s := range samples {
		if Balanced(s.Counts, tol) && s.Unconnected == 0 {
			if !ok {
				at, ok = s.At, true
			}
		} else {
			at, ok = time.Time{}, false
		}
	}
	return at, ok
}
