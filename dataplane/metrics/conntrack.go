package metrics

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"
)

// ConntrackEntries counts the conntrack entries of one Service port to one
// backend through one frontend in one state.
type ConntrackEntries struct {
	Service  string // namespace/name:port/protocol
	Frontend string // the clients' destination, IP:port/protocol
	Backend  string // IP:port
	// State is the conntrack TCP state (ESTABLISHED, TIME_WAIT, ...), or
	// the protocol (UDP, SCTP) for flows without one.
	State string
	Count int
}

var (
	conntrackEntriesDesc = prometheus.NewDesc("switchyard_conntrack_entries",
		"Conntrack entries DNATed to a Service port's backends, by TCP state (or UDP, SCTP), as the last background listing (every --metrics-refresh-interval) found them",
		[]string{"service", "state"}, nil)
	backendConntrackDesc = prometheus.NewDesc("switchyard_backend_conntrack_entries",
		"Conntrack entries to a backend through a Service frontend, by TCP state (or UDP, SCTP), as the last background listing found them",
		[]string{"service", "frontend", "backend", "state"}, nil)
)

type conntrackCollector struct {
	source     func() []ConntrackEntries
	perBackend bool
	cap        int

	mu           sync.Mutex
	cappedLogged bool
}

// AddConntrackSource exposes cached conntrack counts: per Service port and
// state always, per backend when perBackend and at most cap backends have
// entries (beyond, per-Service only, logged once).
func (m *Metrics) AddConntrackSource(source func() []ConntrackEntries, perBackend bool, cap int) {
	if cap <= 0 {
		cap = DefaultBackendSeriesCap
	}
	m.Registry.MustRegister(&conntrackCollector{source: source, perBackend: perBackend, cap: cap})
}

func (c *conntrackCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- conntrackEntriesDesc
	ch <- backendConntrackDesc
}

func (c *conntrackCollector) Collect(ch chan<- prometheus.Metric) {
	es := c.source()
	perBackend := c.perBackend
	if perBackend {
		type be struct{ service, frontend, backend string }
		backends := map[be]bool{}
		for _, e := range es {
			backends[be{e.Service, e.Frontend, e.Backend}] = true
		}
		if len(backends) > c.cap {
			perBackend = false
			c.mu.Lock()
			if !c.cappedLogged {
				c.cappedLogged = true
				klog.InfoS("Too many backends for per-backend conntrack metrics; exposing per-Service counts only", "backends", len(backends), "cap", c.cap)
			}
			c.mu.Unlock()
		}
	}
	type svcState struct{ service, state string }
	sums := map[svcState]int{}
	for _, e := range es {
		sums[svcState{e.Service, e.State}] += e.Count
		if perBackend {
			ch <- prometheus.MustNewConstMetric(backendConntrackDesc, prometheus.GaugeValue, float64(e.Count), e.Service, e.Frontend, e.Backend, e.State)
		}
	}
	for k, n := range sums {
		ch <- prometheus.MustNewConstMetric(conntrackEntriesDesc, prometheus.GaugeValue, float64(n), k.service, k.state)
	}
}
