package rebalance

import (
	"maps"
	"net/netip"
	"sync"
	"time"

	"github.com/switchyard/switchyard/dataplane"
)

// Status is what the last round of one opted-in Service port measured
// and decided, for yardctl.
type Status struct {
	// At is when the round ran.
	At     time.Time
	DryRun bool
	// Reason is the plan's (Plan.Reason), "dry-run" when a dry run
	// would have shed.
	Reason            string
	Ratio, RatioAfter float64
	// Planned is how many the plan sheds; Closed how many the round
	// closed (rate limited).
	Planned, Closed int
	// Measured, Before, After and Steer are the plan's.
	Measured, Before, After, Steer map[netip.AddrPort]int
	// Resets counts what the rebalancer closed for the port since it
	// opted in (or the agent started).
	Resets int
}

// Recorder is an Observer that keeps each opted-in port's Status. It is
// safe for concurrent use (rounds write, the agent's API reads).
type Recorder struct {
	mu    sync.Mutex
	ports map[dataplane.ServicePortName]*Status
	now   func() time.Time
}

var _ Observer = (*Recorder)(nil)

// NewRecorder returns an empty Recorder.
func NewRecorder() *Recorder {
	return &Recorder{ports: map[dataplane.ServicePortName]*Status{}, now: time.Now}
}

// Round implements Observer.
func (r *Recorder) Round(name dataplane.ServicePortName, plan Plan, toClose int, dryRun bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.ports[name]
	if st == nil {
		st = &Status{}
		r.ports[name] = st
	}
	reason := plan.Reason
	if dryRun && len(plan.Shed) > 0 && reason != "settling" {
		reason = "dry-run"
	}
	*st = Status{At: r.now(), DryRun: dryRun, Reason: reason, Ratio: plan.Ratio, RatioAfter: plan.RatioAfter,
		Planned: len(plan.Shed), Measured: plan.Measured, Before: plan.Before, After: plan.After, Steer: plan.Steer,
		Resets: st.Resets}
}

// Closed implements Observer.
func (r *Recorder) Closed(name dataplane.ServicePortName, _ string, n int, _ error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if st := r.ports[name]; st != nil {
		st.Closed += n
		st.Resets += n
	}
}

// Forget implements Observer.
func (r *Recorder) Forget(name dataplane.ServicePortName) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.ports, name)
}

// Statuses returns a copy of every opted-in port's Status.
func (r *Recorder) Statuses() map[dataplane.ServicePortName]Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[dataplane.ServicePortName]Status, len(r.ports))
	for n, st := range r.ports {
		c := *st
		c.Measured, c.Before, c.After, c.Steer = maps.Clone(st.Measured), maps.Clone(st.Before), maps.Clone(st.After), maps.Clone(st.Steer)
		out[n] = c
	}
	return out
}

// Observers fans each call out to every Observer in order.
type Observers []Observer

var _ Observer = Observers(nil)

// Round implements Observer.
func (os Observers) Round(name dataplane.ServicePortName, plan Plan, toClose int, dryRun bool) {
	for _, o := range os {
		o.Round(name, plan, toClose, dryRun)
	}
}

// Closed implements Observer.
func (os Observers) Closed(name dataplane.ServicePortName, mechanism string, n int, err error) {
	for _, o := range os {
		o.Closed(name, mechanism, n, err)
	}
}

// Forget implements Observer.
func (os Observers) Forget(name dataplane.ServicePortName) {
	for _, o := range os {
		o.Forget(name)
	}
}
