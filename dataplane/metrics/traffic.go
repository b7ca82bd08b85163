package metrics

import (
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"
)

// Traffic is the cumulative traffic of one backend through one frontend
// (Backend set) or of the frontend as a whole (Backend ""), as the
// dataplane counts it: IPVS real server and virtual server statistics.
// In: client to backend; out: backend to client.
type Traffic struct {
	Service  string // namespace/name:port/protocol, "" when none wants it
	Frontend string // VIP:port/protocol
	Backend  string // IP:port; "" for a frontend's total
	PacketsIn, PacketsOut,
	BytesIn, BytesOut uint64
}

// Cache holds the last value a Refresher read, for a collector: Store
// from the refresher, Load from scrapes.
type Cache[T any] struct{ v atomic.Pointer[T] }

// Store replaces the cached value.
func (c *Cache[T]) Store(v T) { c.v.Store(&v) }

// Load returns the cached value (the zero value before the first Store).
func (c *Cache[T]) Load() T {
	if p := c.v.Load(); p != nil {
		return *p
	}
	var zero T
	return zero
}

// TrafficCache is the cache of a traffic source.
type TrafficCache = Cache[[]Traffic]

var (
	backendPacketsDesc = prometheus.NewDesc("switchyard_backend_packets_total",
		"Packets to (direction in) and from (out) a backend through a Service frontend, as the dataplane counts them (IPVS real server statistics), read every --metrics-refresh-interval. IPVS packet counters are 32-bit and wrap; a wrap, or a backend re-created, shows as a counter reset",
		[]string{"service", "frontend", "backend", "direction"}, nil)
	backendBytesDesc = prometheus.NewDesc("switchyard_backend_bytes_total",
		"Bytes to (direction in) and from (out) a backend through a Service frontend, as the dataplane counts them (IPVS real server statistics), read every --metrics-refresh-interval",
		[]string{"service", "frontend", "backend", "direction"}, nil)
	servicePacketsDesc = prometheus.NewDesc("switchyard_service_packets_total",
		"Packets through a Service frontend (IPVS virtual server statistics, all its backends past and present), by direction, read every --metrics-refresh-interval. 32-bit in IPVS: a wrap shows as a counter reset",
		[]string{"service", "frontend", "direction"}, nil)
	serviceBytesDesc = prometheus.NewDesc("switchyard_service_bytes_total",
		"Bytes through a Service frontend (IPVS virtual server statistics, all its backends past and present), by direction, read every --metrics-refresh-interval",
		[]string{"service", "frontend", "direction"}, nil)
)

// trafficCollector exposes cached Traffic: no kernel access on a scrape.
type trafficCollector struct {
	source     func() []Traffic
	perBackend bool
	cap        int

	mu           sync.Mutex
	cappedLogged bool
}

// AddTrafficSource exposes source's traffic counters: per frontend always,
// per backend when perBackend and there are at most cap backends (beyond,
// per-frontend only, logged once). source must be cheap (a cache).
func (m *Metrics) AddTrafficSource(source func() []Traffic, perBackend bool, cap int) {
	if cap <= 0 {
		cap = DefaultBackendSeriesCap
	}
	m.Registry.MustRegister(&trafficCollector{source: source, perBackend: perBackend, cap: cap})
}

func (c *trafficCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- backendPacketsDesc
	ch <- backendBytesDesc
	ch <- servicePacketsDesc
	ch <- serviceBytesDesc
}

func (c *trafficCollector) Collect(ch chan<- prometheus.Metric) {
	ts := c.source()
	perBackend := c.perBackend
	if perBackend {
		n := 0
		for _, t := range ts {
			if t.Backend != "" {
				n++
			}
		}
		if n > c.cap {
			perBackend = false
			c.mu.Lock()
			if !c.cappedLogged {
				c.cappedLogged = true
				klog.InfoS("Too many backends for per-backend traffic metrics; exposing per-frontend counters only", "backends", n, "cap", c.cap)
			}
			c.mu.Unlock()
		}
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	for _, t := range ts {
		switch {
		case t.Backend == "":
			counter(servicePacketsDesc, t.PacketsIn, t.Service, t.Frontend, "in")
			counter(servicePacketsDesc, t.PacketsOut, t.Service, t.Frontend, "out")
			counter(serviceBytesDesc, t.BytesIn, t.Service, t.Frontend, "in")
			counter(serviceBytesDesc, t.BytesOut, t.Service, t.Frontend, "out")
		case perBackend:
			counter(backendPacketsDesc, t.PacketsIn, t.Service, t.Frontend, t.Backend, "in")
			counter(backendPacketsDesc, t.PacketsOut, t.Service, t.Frontend, t.Backend, "out")
			counter(backendBytesDesc, t.BytesIn, t.Service, t.Frontend, t.Backend, "in")
			counter(backendBytesDesc, t.BytesOut, t.Service, t.Frontend, t.Backend, "out")
		}
	}
}
