package rebalance

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/dataplane"
)

// Mechanism is one way this node sees and closes connections of
// Services: the socket LB's sockops records (sockets on this node), or
// conntrack (flows this node NATs). Collect attributes its connections to
// Service ports; Shed closes connections Collect returned (by ID, which
// each mechanism keeps unique and remembers until the next Collect).
type Mechanism interface {
	Name() string
	Collect(ctx context.Context, st *dataplane.State, now time.Time) (map[dataplane.ServicePortName][]Conn, error)
	Shed(ctx context.Context, conns []Conn) (int, error)
}

// Observer receives each round's outcome (metrics).
type Observer interface {
	// Round reports the plan of one opted-in Service port; toClose is
	// what the round closes (0 in a dry run).
	Round(name dataplane.ServicePortName, plan Plan, toClose int, dryRun bool)
	// Closed reports what a mechanism closed for a Service port.
	Closed(name dataplane.ServicePortName, mechanism string, n int, err error)
	// Forget drops a Service port that is gone or no longer opted in.
	Forget(name dataplane.ServicePortName)
}

// Steerer hands steering weights to the dataplanes: for each opted-in
// Service port, the shares new connections get per backend (Plan.Steer);
// ports absent get equal shares again. Steer returns once new connections
// follow the weights (or fails, ctx ending included), so the round sheds
// only what will reconnect where the plan expects.
type Steerer interface {
	Steer(ctx context.Context, weights map[dataplane.ServicePortName]map[netip.AddrPort]int) error
}

// Runner measures, plans, steers and sheds for every opted-in Service
// port, one round at a time. Services without the opt-in are never
// measured for shedding, steered nor touched.
type Runner struct {
	ctrl     *Controller
	mechs    []Mechanism
	observer Observer
	steerer  Steerer
	known    map[dataplane.ServicePortName]bool
}

// NewRunner returns a Runner over the given mechanisms (nil ones are
// skipped). observer may be nil.
func NewRunner(t Timing, observer Observer, mechs ...Mechanism) *Runner {
	r := &Runner{ctrl: NewController(t), observer: observer, known: map[dataplane.ServicePortName]bool{}}
	for _, m := range mechs {
		if m != nil {
			r.mechs = append(r.mechs, m)
		}
	}
	return r
}

// SteerWith makes each round steer through s before it sheds.
func (r *Runner) SteerWith(s Steerer) { r.steerer = s }

// Once runs one round over st at now.
func (r *Runner) Once(ctx context.Context, st *dataplane.State, now time.Time) {
	opted := map[dataplane.ServicePortName]*dataplane.ServicePort{}
	for name, sp := range st.Services {
		if sp.Rebalance != nil && sp.Name.Protocol == dataplane.TCP {
			opted[name] = sp
		}
	}
	r.ctrl.Forget(func(n dataplane.ServicePortName) bool { return opted[n] != nil })
	for name := range r.known {
		if opted[name] == nil {
			delete(r.known, name)
			if r.observer != nil {
				r.observer.Forget(name)
			}
		}
	}
	if len(opted) == 0 {
		if r.steerer != nil {
			// Ports that opted out (or went) get equal shares again.
			if err := r.steerer.Steer(ctx, nil); err != nil {
				klog.ErrorS(err, "Rebalancer: clearing steering failed")
			}
		}
		return
	}
	// Each mechanism's connections, IDs prefixed by the mechanism so
	// they stay unique across mechanisms.
	conns := map[dataplane.ServicePortName][]Conn{}
	for _, m := range r.mechs {
		got, err := m.Collect(ctx, st, now)
		if err != nil {
			klog.ErrorS(err, "Rebalancer: measuring connections failed; this round uses the other mechanisms", "mechanism", m.Name())
			continue
		}
		for name, cs := range got {
			if opted[name] == nil {
				continue
			}
			for _, c := range cs {
				c.ID = m.Name() + "/" + c.ID
				conns[name] = append(conns[name], c)
			}
		}
	}
	names := make([]dataplane.ServicePortName, 0, len(opted))
	for n := range opted {
		names = append(names, n)
	}
	slices.SortFunc(names, dataplane.ServicePortName.Compare)
	type decision struct {
		name dataplane.ServicePortName
		plan Plan
		shed []Conn
	}
	var decided []decision
	weights := map[dataplane.ServicePortName]map[netip.AddrPort]int{}
	for _, name := range names {
		sp := opted[name]
		r.known[name] = true
		backends := Backends(sp, st.Endpoints[name], st.NodeName, st.NodeZone)
		plan, shed := r.ctrl.Round(name, sp.Rebalance, backends, conns[name], now)
		if r.observer != nil {
			r.observer.Round(name, plan, len(shed), sp.Rebalance.DryRun)
		}
		if sp.Rebalance.DryRun {
			// A dry run changes nothing: no shedding, no steering.
			if len(plan.Shed) > 0 && plan.Reason != "settling" {
				klog.V(2).InfoS("Rebalancer dry run: would shed connections", "service", name, "shed", len(plan.Shed),
					"before", FormatCounts(plan.Before), "after", FormatCounts(plan.After), "ratio", plan.Ratio)
			}
			continue
		}
		if plan.Steer != nil {
			weights[name] = plan.Steer
		}
		decided = append(decided, decision{name, plan, shed})
	}
	if r.steerer != nil {
		if err := r.steerer.Steer(ctx, weights); err != nil {
			// Shed anyway: reconnects land anywhere, later rounds
			// even them out at the cost of more resets.
			klog.ErrorS(err, "Rebalancer: steering new connections failed; shedding without it")
		}
	}
	for _, d := range decided {
		if len(d.shed) == 0 {
			continue
		}
		closed := r.shed(ctx, d.name, d.shed)
		klog.InfoS("Rebalanced connections", "service", d.name, "planned", len(d.plan.Shed), "closed", closed,
			"before", FormatCounts(d.plan.Before), "after", FormatCounts(d.plan.After),
			"ratio", fmt.Sprintf("%.2f", d.plan.Ratio), "ratioAfter", fmt.Sprintf("%.2f", d.plan.RatioAfter),
			"steer", FormatCounts(d.plan.Steer))
	}
}

// shed hands each mechanism its share of conns (IDs without the prefix).
func (r *Runner) shed(ctx context.Context, name dataplane.ServicePortName, conns []Conn) int {
	total := 0
	for _, m := range r.mechs {
		prefix := m.Name() + "/"
		var mine []Conn
		for _, c := range conns {
			if id, ok := strings.CutPrefix(c.ID, prefix); ok {
				c.ID = id
				mine = append(mine, c)
			}
		}
		if len(mine) == 0 {
			continue
		}
		n, err := m.Shed(ctx, mine)
		if err != nil {
			klog.ErrorS(err, "Rebalancer: closing connections failed", "service", name, "mechanism", m.Name(), "asked", len(mine), "closed", n)
		}
		if r.observer != nil {
			r.observer.Closed(name, m.Name(), n, err)
		}
		total += n
	}
	return total
}

// Run calls Once every interval with the State view gives, until ctx ends.
// Rounds are skipped while programmed (nil: always) says the kernel does
// not have that State yet: a scale-up's new backends count (and the
// settle time starts) only once the dataplane sends connections there.
func (r *Runner) Run(ctx context.Context, interval time.Duration, view func(func(*dataplane.State)), programmed func() bool) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if programmed != nil && !programmed() {
				klog.V(3).InfoS("Rebalancer: the dataplane is not synced yet; skipping this round")
				continue
			}
			var st *dataplane.State
			view(func(full *dataplane.State) { st = optedIn(full) })
			r.Once(ctx, st, now)
		}
	}
}

// optedIn copies the part of st the rounds need, so they run without
// holding the sync loop's State: the opted-in Service ports, their
// endpoints and the node's identity.
func optedIn(st *dataplane.State) *dataplane.State {
	out := dataplane.NewState()
	out.NodeName, out.NodeZone, out.NodeIPs = st.NodeName, st.NodeZone, slices.Clone(st.NodeIPs)
	for name, sp := range st.Services {
		if sp.Rebalance == nil {
			continue
		}
		cp := *sp
		out.Services[name] = &cp
		out.Endpoints[name] = slices.Clone(st.Endpoints[name])
	}
	return out
}

// Backends are the endpoints new connections of sp go to from this node,
// as the dataplanes choose them: the Cluster endpoints, or the Local ones
// with internalTrafficPolicy Local.
func Backends(sp *dataplane.ServicePort, eps []dataplane.Endpoint, node, zone string) []netip.AddrPort {
	sets := dataplane.CategorizeEndpoints(sp, eps, node, zone)
	chosen := sets.Cluster
	if sp.InternalPolicyLocal {
		chosen = sets.Local
	}
	out := make([]netip.AddrPort, 0, len(chosen))
	for _, e := range chosen {
		out = append(out, e.Addr)
	}
	return out
}

// FormatCounts renders per-backend counts ("addr=n ...") in address
// order, for the round's log line and Event.
func FormatCounts(m map[netip.AddrPort]int) string {
	keys := slices.SortedFunc(maps.Keys(m), netip.AddrPort.Compare)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%d", k, m[k])
	}
	return strings.Join(parts, " ")
}
