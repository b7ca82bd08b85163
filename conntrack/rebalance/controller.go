package rebalance

import (
	"net/netip"
	"slices"
	"time"

	"github.com/switchyard/switchyard/dataplane"
)

// Timing of the Controller; zero fields take the defaults.
type Timing struct {
	// Settle: after the backend set changes, wait this long before
	// planning (a rollout adds and removes pods one by one).
	Settle time.Duration
	// ReconnectWindow: how long a shed connection counts as pending
	// (expected back on a least-loaded backend) unless a new connection
	// shows up for it first.
	ReconnectWindow time.Duration
}

const (
	DefaultSettle          = 2 * time.Second
	DefaultReconnectWindow = 5 * time.Second
)

// Controller runs rebalancing rounds for many Service ports. It is not
// safe for concurrent use; one goroutine calls Round for each Service port
// per measurement.
type Controller struct {
	timing Timing
	state  map[dataplane.ServicePortName]*serviceState
}

type serviceState struct {
	backends  []netip.AddrPort
	changedAt time.Time
	// tokens is the rate limiter's bucket (resets it may still do now),
	// refilled at spec.MaxResetsPerS up to a burst of one second.
	tokens    float64
	refilled  time.Time
	shedAt    []time.Time // one entry per shed connection still pending
	seen      map[string]bool
	roundSeen bool
}

// NewController returns a Controller with the given timing.
func NewController(t Timing) *Controller {
	if t.Settle == 0 {
		t.Settle = DefaultSettle
	}
	if t.ReconnectWindow == 0 {
		t.ReconnectWindow = DefaultReconnectWindow
	}
	return &Controller{timing: t, state: map[dataplane.ServicePortName]*serviceState{}}
}

// Round is one rebalancing round of one Service port at time now: the plan
// for its current connections and, unless spec is a dry run, the
// connections to close now (at most what the rate limit allows, best
// first). A nil spec (the Service did not opt in) returns nothing and
// forgets the port: such Services are never touched.
func (c *Controller) Round(name dataplane.ServicePortName, spec *dataplane.RebalanceSpec, backends []netip.AddrPort, conns []Conn, now time.Time) (Plan, []Conn) {
	if spec == nil {
		delete(c.state, name)
		return Plan{Reason: "not-opted-in"}, nil
	}
	st := c.state[name]
	sorted := slices.Clone(backends)
	slices.SortFunc(sorted, netip.AddrPort.Compare)
	sorted = slices.Compact(sorted)
	if st == nil {
		st = &serviceState{changedAt: now, refilled: now, tokens: burst(spec)}
		c.state[name] = st
	}
	if !slices.Equal(st.backends, sorted) {
		st.backends, st.changedAt = sorted, now
	}
	// Rate limit: refill.
	st.tokens = min(burst(spec), st.tokens+now.Sub(st.refilled).Seconds()*spec.MaxResetsPerS)
	st.refilled = now

	// Reconnects in flight: each new connection (an ID not seen in the
	// last round) settles one pending shed; the rest expire.
	arrivals := 0
	seen := make(map[string]bool, len(conns))
	for _, conn := range conns {
		seen[conn.ID] = true
		if st.roundSeen && !st.seen[conn.ID] {
			arrivals++
		}
	}
	st.seen, st.roundSeen = seen, true
	st.shedAt = slices.DeleteFunc(st.shedAt, func(t time.Time) bool { return now.Sub(t) > c.timing.ReconnectWindow })
	st.shedAt = st.shedAt[min(arrivals, len(st.shedAt)):]

	// Connections shed but still there (marked, idle since) will move
	// too: pending as long as they are visible, not only for the
	// reconnect window.
	var active []Conn
	closing := 0
	for _, conn := range conns {
		if conn.Closing {
			closing++
		} else {
			active = append(active, conn)
		}
	}
	plan := Compute(Input{
		Backends:  sorted,
		Conns:     active,
		Pending:   max(len(st.shedAt), closing),
		Tolerance: spec.Tolerance,
		MinAge:    spec.MinAge,
	})
	switch {
	case now.Sub(st.changedAt) < c.timing.Settle:
		plan.Reason = "settling"
		return plan, nil
	case spec.DryRun || len(plan.Shed) == 0:
		return plan, nil
	}
	n := min(len(plan.Shed), int(st.tokens))
	if n == 0 {
		plan.Reason = "rate-limited"
		return plan, nil
	}
	st.tokens -= float64(n)
	for range n {
		st.shedAt = append(st.shedAt, now)
	}
	return plan, plan.Shed[:n]
}

// Forget drops the state of Service ports not in keep (deleted Services).
func (c *Controller) Forget(keep func(dataplane.ServicePortName) bool) {
	for name := range c.state {
		if !keep(name) {
			delete(c.state, name)
		}
	}
}

// burst is the bucket size: one second of resets, at least one.
func burst(spec *dataplane.RebalanceSpec) float64 { return max(1, spec.MaxResetsPerS) }
