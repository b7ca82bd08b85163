package metrics

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"
)

// BackendConns is one backend of one frontend as the dataplane last saw
// it: the connections the kernel tracks to it through that frontend.
type BackendConns struct {
	Service  string // namespace/name:port/protocol, "" when not owned
	Frontend string // VIP:port/protocol
	Backend  string // IP:port
	Active   int
	Inactive int
}

// DefaultBackendSeriesCap bounds the per-backend series of one scrape
// (each backend has two: active and inactive).
const DefaultBackendSeriesCap = 20000

var (
	backendConnsDesc = prometheus.NewDesc("switchyard_backend_connections",
		"Connections to a backend through a Service frontend, as the dataplane last read them (IPVS counters; conntrack entries without IPVS), by state (active: established TCP, and UDP and SCTP entries from conntrack; inactive: other TCP states, and UDP flows in IPVS)",
		[]string{"service", "frontend", "backend", "state"}, nil)
	serviceConnsDesc = prometheus.NewDesc("switchyard_service_connections",
		"Connections through a Service frontend, summed over its backends, by state",
		[]string{"service", "frontend", "state"}, nil)
)

// backendCollector reads a cached view (the dataplane's last sync) on
// each scrape: no kernel access, bounded work.
type backendCollector struct {
	source     func() []BackendConns
	perBackend bool
	cap        int

	mu           sync.Mutex
	cappedLogged bool
}

// AddBackendSource exposes source's backends: per backend (when
// perBackend, up to cap backends a scrape; beyond it only the per-frontend
// sums, logged once) and per frontend. source must be cheap: it is called
// on every scrape.
func (m *Metrics) AddBackendSource(source func() []BackendConns, perBackend bool, cap int) {
	if cap <= 0 {
		cap = DefaultBackendSeriesCap
	}
	m.Registry.MustRegister(&backendCollector{source: source, perBackend: perBackend, cap: cap})
}

func (c *backendCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- backendConnsDesc
	ch <- serviceConnsDesc
}

func (c *backendCollector) Collect(ch chan<- prometheus.Metric) {
	conns := c.source()
	perBackend := c.perBackend
	if perBackend && len(conns) > c.cap {
		perBackend = false
		c.mu.Lock()
		if !c.cappedLogged {
			c.cappedLogged = true
			klog.InfoS("Too many backends for per-backend metrics; exposing per-frontend sums only",
				"backends", len(conns), "cap", c.cap)
		}
		c.mu.Unlock()
	}
	type fe struct{ service, frontend string }
	sums := map[fe][2]int{}
	for _, b := range conns {
		k := fe{b.Service, b.Frontend}
		s := sums[k]
		s[0] += b.Active
		s[1] += b.Inactive
		sums[k] = s
		if perBackend {
			ch <- prometheus.MustNewConstMetric(backendConnsDesc, prometheus.GaugeValue, float64(b.Active), b.Service, b.Frontend, b.Backend, "active")
			ch <- prometheus.MustNewConstMetric(backendConnsDesc, prometheus.GaugeValue, float64(b.Inactive), b.Service, b.Frontend, b.Backend, "inactive")
		}
	}
	for k, s := range sums {
		ch <- prometheus.MustNewConstMetric(serviceConnsDesc, prometheus.GaugeValue, float64(s[0]), k.service, k.frontend, "active")
		ch <- prometheus.MustNewConstMetric(serviceConnsDesc, prometheus.GaugeValue, float64(s[1]), k.service, k.frontend, "inactive")
	}
}
