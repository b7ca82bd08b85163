package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchyard/switchyard/conntrack/rebalance"
	"github.com/switchyard/switchyard/dataplane"
)

// Rebalance holds the rebalancer's metrics; it is a rebalance.Observer.
// Series exist only for Service ports that opted in, and go when they
// opt out or disappear.
type Rebalance struct {
	conns   *prometheus.GaugeVec
	ratio   *prometheus.GaugeVec
	planned *prometheus.GaugeVec
	rounds  *prometheus.CounterVec
	resets  *prometheus.CounterVec
	errors  *prometheus.CounterVec
}

var _ rebalance.Observer = (*Rebalance)(nil)

// AddRebalance registers the rebalancer's metrics.
func (m *Metrics) AddRebalance() *Rebalance {
	r := &Rebalance{
		conns: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "switchyard", Name: "rebalance_backend_connections",
			Help: "Established connections per backend of an opted-in Service port, as the last rebalancer round measured them (conntrack flows this node NATs and socket-LB sockets; connections already shed and not yet gone excluded)"},
			[]string{"service", "backend"}),
		ratio: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "switchyard", Name: "rebalance_imbalance_ratio",
			Help: "max/mean of established connections per backend of an opted-in Service port, as the last rebalancer round measured it (reconnects in flight placed on the least-loaded backends)"},
			[]string{"service"}),
		planned: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "switchyard", Name: "rebalance_planned_resets",
			Help: "Connections the last round's plan would shed to reach max/mean <= 1+tolerance (dry runs included)"},
			[]string{"service"}),
		rounds: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "switchyard", Name: "rebalance_rounds_total",
			Help: "Rebalancer rounds by outcome: balanced, shed, dry-run, settling, rate-limited, min-age, single-backend, no-connections"},
			[]string{"service", "outcome"}),
		resets: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "switchyard", Name: "rebalance_resets_total",
			Help: "Connections the rebalancer closed, by mechanism (socketlb: sockets on this node, destroyed; conntrack: flows this node NATs, marked for the dataplane to reset at their next packet)"},
			[]string{"service", "mechanism"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "switchyard", Name: "rebalance_errors_total",
			Help: "Rebalancer attempts to close connections that failed, by mechanism"},
			[]string{"service", "mechanism"}),
	}
	m.Registry.MustRegister(r.conns, r.ratio, r.planned, r.rounds, r.resets, r.errors)
	return r
}

// Round implements rebalance.Observer.
func (r *Rebalance) Round(name dataplane.ServicePortName, plan rebalance.Plan, toClose int, dryRun bool) {
	s := name.String()
	// Backends come and go with the endpoints: replace the port's series.
	r.conns.DeletePartialMatch(prometheus.Labels{"service": s})
	for b, n := range plan.Measured {
		r.conns.WithLabelValues(s, b.String()).Set(float64(n))
	}
	r.ratio.WithLabelValues(s).Set(plan.Ratio)
	r.planned.WithLabelValues(s).Set(float64(len(plan.Shed)))
	outcome := plan.Reason
	if dryRun && len(plan.Shed) > 0 && outcome != "settling" {
		outcome = "dry-run"
	}
	r.rounds.WithLabelValues(s, outcome).Inc()
}

// Closed implements rebalance.Observer.
func (r *Rebalance) Closed(name dataplane.ServicePortName, mechanism string, n int, err error) {
	r.resets.WithLabelValues(name.String(), mechanism).Add(float64(n))
	if err != nil {
		r.errors.WithLabelValues(name.String(), mechanism).Inc()
	}
}

// Forget implements rebalance.Observer.
func (r *Rebalance) Forget(name dataplane.ServicePortName) {
	l := prometheus.Labels{"service": name.String()}
	r.conns.DeletePartialMatch(l)
	r.ratio.DeletePartialMatch(l)
	r.planned.DeletePartialMatch(l)
	r.rounds.DeletePartialMatch(l)
	r.resets.DeletePartialMatch(l)
	r.errors.DeletePartialMatch(l)
}
