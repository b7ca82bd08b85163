package metrics

import (
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"
)

// BPFConnections is the socket load balancer's count (sockops, in the
// kernel) of established TCP connections of one backend address, in one
// direction, attributed to one Service port.
type BPFConnections struct {
	// Service is namespace/name:port/protocol of a Service port the
	// backend is an endpoint of; "" when it is an endpoint of none (any
	// more): its connections are still open.
	Service string
	Backend string // IP:port
	// Direction is "out" (a socket of this node connected to the
	// backend) or "in" (the backend, on this node, accepted it).
	Direction string
	Count     uint64
}

var (
	bpfBackendConnsDesc = prometheus.NewDesc("switchyard_bpf_backend_connections",
		"Established TCP connections of a backend as the socket load balancer's sockops program counts them, by direction (out: a socket of this node connected to it; in: the backend on this node accepted it), read every --metrics-refresh-interval. A backend of several Service ports appears under each",
		[]string{"service", "backend", "direction"}, nil)
	bpfServiceConnsDesc = prometheus.NewDesc("switchyard_bpf_service_connections",
		"Established TCP connections of a Service port's backends as the socket load balancer counts them, summed over its backends, by direction",
		[]string{"service", "direction"}, nil)
)

// SetBPFSocketLB records whether the socket load balancer was requested
// (--bpf-socket-lb) and whether it runs: switchyard_bpf_socket_lb_enabled.
func (m *Metrics) SetBPFSocketLB(requested, enabled bool) {
	v := 0.0
	if enabled {
		v = 1
	}
	m.bpfSocketLB.Reset()
	m.bpfSocketLB.WithLabelValues(strconv.FormatBool(requested)).Set(v)
}

// bpfCollector exposes cached socket-LB counts: no kernel access on a
// scrape.
type bpfCollector struct {
	source     func() []BPFConnections
	perBackend bool
	cap        int

	mu           sync.Mutex
	cappedLogged bool
}

// AddBPFSource exposes source's socket-LB connection counts: per Service
// port and direction always (entries without a Service are left out of
// the sums), per backend when perBackend and at most cap backends have
// counts (beyond, per-Service only, logged once). source must be cheap (a
// cache the refresher fills).
func (m *Metrics) AddBPFSource(source func() []BPFConnections, perBackend bool, cap int) {
	if cap <= 0 {
		cap = DefaultBackendSeriesCap
	}
	m.Registry.MustRegister(&bpfCollector{source: source, perBackend: perBackend, cap: cap})
}

func (c *bpfCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- bpfBackendConnsDesc
	ch <- bpfServiceConnsDesc
}

func (c *bpfCollector) Collect(ch chan<- prometheus.Metric) {
	conns := c.source()
	perBackend := c.perBackend
	if perBackend {
		type be struct{ service, backend string }
		backends := map[be]bool{}
		for _, b := range conns {
			backends[be{b.Service, b.Backend}] = true
		}
		if len(backends) > c.cap {
			perBackend = false
			c.mu.Lock()
			if !c.cappedLogged {
				c.cappedLogged = true
				klog.InfoS("Too many backends for per-backend socket-LB metrics; exposing per-Service sums only", "backends", len(backends), "cap", c.cap)
			}
			c.mu.Unlock()
		}
	}
	type svcDir struct{ service, direction string }
	sums := map[svcDir]uint64{}
	for _, b := range conns {
		if b.Service != "" {
			sums[svcDir{b.Service, b.Direction}] += b.Count
		}
		if perBackend {
			ch <- prometheus.MustNewConstMetric(bpfBackendConnsDesc, prometheus.GaugeValue, float64(b.Count), b.Service, b.Backend, b.Direction)
		}
	}
	for k, n := range sums {
		ch <- prometheus.MustNewConstMetric(bpfServiceConnsDesc, prometheus.GaugeValue, float64(n), k.service, k.direction)
	}
}
