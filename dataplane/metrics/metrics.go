// Package metrics holds the agent's Prometheus metrics: kube-proxy's
// names (kubeproxy_*) where the meaning is the same, switchyard_* for what
// is switchyard's own. Everything is registered on a Registry the caller
// owns (no global registry), and a scrape only reads values already
// computed: the sync loop and the sources update them as they go, and
// dataplane statistics come from a cache refreshed in the background.
package metrics

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/switchyard/switchyard/dataplane"
)

// AnnotationLastChangeTriggerTime is set by the EndpointSlice controller
// to the time of the change (Pod or Service) that led to the slice's
// latest update; network programming latency is measured from it.
const AnnotationLastChangeTriggerTime = "endpoints.kubernetes.io/last-change-trigger-time"

// syncBuckets are kube-proxy's: 1 ms to about 16 s.
var syncBuckets = prometheus.ExponentialBuckets(0.001, 2, 15)

// Metrics is the agent's metrics. It is a dataplane.SyncObserver; the
// sources report through ServiceChanged, EndpointSliceChanged and
// ObjectProblem.
type Metrics struct {
	Registry *prometheus.Registry
	clock    clock.PassiveClock

	syncDuration        prometheus.Histogram
	syncFullDuration    prometheus.Histogram
	syncPartialDuration prometheus.Histogram
	lastSync            prometheus.Gauge
	lastQueued          prometheus.Gauge
	programming         prometheus.Histogram
	endpointChanges     prometheus.Counter
	serviceChanges      prometheus.Counter
	endpointPending     prometheus.Gauge
	servicePending      prometheus.Gauge
	syncErrors          *prometheus.CounterVec
	objectProblems      *prometheus.CounterVec
	servicePorts        prometheus.Gauge
	dataplaneInfo       *prometheus.GaugeVec
	hostPortProblems    *prometheus.GaugeVec
	bpfSocketLB         *prometheus.GaugeVec

	mu sync.Mutex
	// triggers are the last-change-trigger-times of the slice updates
	// received since the last successful sync, per slice.
	triggers        map[string]time.Time
	pendingServices int
	pendingSlices   int
}

var _ dataplane.SyncObserver = (*Metrics)(nil)

// New registers the agent's metrics on a new Registry, with the Go and
// process collectors. clk nil is the real clock.
func New(clk clock.PassiveClock) *Metrics {
	if clk == nil {
		clk = clock.RealClock{}
	}
	h := func(name, help string) prometheus.Histogram {
		return prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "kubeproxy", Name: name, Help: help, Buckets: syncBuckets})
	}
	m := &Metrics{
		Registry:            prometheus.NewRegistry(),
		clock:               clk,
		syncDuration:        h("sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds"),
		syncFullDuration:    h("sync_full_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for full resyncs"),
		syncPartialDuration: h("sync_partial_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for partial resyncs"),
		lastSync: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "kubeproxy", Name: "sync_proxy_rules_last_timestamp_seconds",
			Help: "The last time proxy rules were successfully synced"}),
		lastQueued: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "kubeproxy", Name: "sync_proxy_rules_last_queued_timestamp_seconds",
			Help: "The last time a sync of proxy rules was queued"}),
		programming: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "kubeproxy", Name: "network_programming_duration_seconds",
			Help: "In Cluster Network Programming Latency in seconds",
			Buckets: merge(prometheus.LinearBuckets(0.25, 0.25, 2), prometheus.LinearBuckets(1, 1, 59),
				prometheus.LinearBuckets(60, 5, 12), prometheus.LinearBuckets(120, 30, 7))}),
		endpointChanges: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "kubeproxy", Name: "sync_proxy_rules_endpoint_changes_total",
			Help: "Cumulative proxy rules Endpoint changes"}),
		serviceChanges: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "kubeproxy", Name: "sync_proxy_rules_service_changes_total",
			Help: "Cumulative proxy rules Service changes"}),
		endpointPending: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "kubeproxy", Name: "sync_proxy_rules_endpoint_changes_pending",
			Help: "Pending proxy rules Endpoint changes"}),
		servicePending: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "kubeproxy", Name: "sync_proxy_rules_service_changes_pending",
			Help: "Pending proxy rules Service changes"}),
		syncErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "switchyard", Name: "sync_errors_total",
			Help: "Failed dataplane syncs, by the dataplane stage that failed"}, []string{"stage"}),
		objectProblems: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "switchyard", Name: "objects_invalid_total",
			Help: "Objects (or parts of them) the agent rejected or corrected, by reason"}, []string{"kind", "reason", "action"}),
		servicePorts: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "switchyard", Name: "service_ports",
			Help: "Service ports in the last synced state"}),
		dataplaneInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "switchyard", Name: "dataplane_info",
			Help: "The dataplane in use (value 1)"}, []string{"dataplane"}),
		hostPortProblems: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "switchyard", Name: "hostport_problems",
			Help: "hostPorts of this node's Pods not programmed as asked: conflict (another Pod holds the port), nodeport (collides with a Service's NodePort), or the invalid-port reason"},
			[]string{"kind"}),
		bpfSocketLB: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "switchyard", Name: "bpf_socket_lb_enabled",
			Help: "1 when the BPF socket load balancer (--bpf-socket-lb) is attached by this agent (its programs run), else 0; requested=\"true\" with 0 means it was asked for and the kernel or machine cannot run it (the agent logs why)"},
			[]string{"requested"}),
		triggers: map[string]time.Time{},
	}
	m.Registry.MustRegister(m.syncDuration, m.syncFullDuration, m.syncPartialDuration, m.lastSync, m.lastQueued,
		m.programming, m.endpointChanges, m.serviceChanges, m.endpointPending, m.servicePending,
		m.syncErrors, m.objectProblems, m.servicePorts, m.dataplaneInfo, m.hostPortProblems, m.bpfSocketLB,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func merge(bs ...[]float64) []float64 {
	var out []float64
	for _, b := range bs {
		out = append(out, b...)
	}
	return out
}

// SetDataplane records the dataplane in use (its chain's name).
func (m *Metrics) SetDataplane(name string) {
	m.dataplaneInfo.Reset()
	m.dataplaneInfo.WithLabelValues(name).Set(1)
}

// SetHostPortProblems sets the current hostPort problems by kind (every
// kind reported before and absent now goes to zero).
func (m *Metrics) SetHostPortProblems(byKind map[string]int) {
	m.hostPortProblems.Reset()
	for k, n := range byKind {
		m.hostPortProblems.WithLabelValues(k).Set(float64(n))
	}
}

// ServiceChanged counts a Service event.
func (m *Metrics) ServiceChanged() {
	m.serviceChanges.Inc()
	m.mu.Lock()
	m.pendingServices++
	m.servicePending.Set(float64(m.pendingServices))
	m.mu.Unlock()
}

// EndpointSliceChanged counts an EndpointSlice event and remembers its
// last-change-trigger-time for the programming latency observed when the
// change is synced. A slice deleted or without the annotation has none.
func (m *Metrics) EndpointSliceChanged(slice *discovery.EndpointSlice, deleted bool) {
	m.endpointChanges.Inc()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.pendingSlices++
	m.endpointPending.Set(float64(m.pendingSlices))
	key := slice.Namespace + "/" + slice.Name
	if deleted {
		delete(m.triggers, key)
		return
	}
	if v, ok := slice.Annotations[AnnotationLastChangeTriggerTime]; ok {
		if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
			m.triggers[key] = t
		}
	}
}

// ObjectProblem counts an object the translation rejected (fatal) or
// corrected.
func (m *Metrics) ObjectProblem(p dataplane.Problem) {
	kind, _, _ := strings.Cut(p.Object, " ")
	action := "corrected"
	if p.Fatal {
		action = "rejected"
	}
	m.objectProblems.WithLabelValues(kind, p.Reason, action).Inc()
}

// Queued is part of dataplane.SyncObserver.
func (m *Metrics) Queued() { m.lastQueued.Set(float64(m.clock.Now().UnixNano()) / 1e9) }

// Synced is part of dataplane.SyncObserver.
func (m *Metrics) Synced(r dataplane.SyncResult) {
	if r.Err != nil {
		m.syncErrors.WithLabelValues(stageOf(r.Err)).Inc()
		return
	}
	secs := r.Duration.Seconds()
	m.syncDuration.Observe(secs)
	if r.Full {
		m.syncFullDuration.Observe(secs)
	} else {
		m.syncPartialDuration.Observe(secs)
	}
	now := m.clock.Now()
	m.lastSync.Set(float64(now.UnixNano()) / 1e9)
	m.servicePorts.Set(float64(r.ServicePorts))

	m.mu.Lock()
	defer m.mu.Unlock()
	for _, t := range m.triggers {
		// Negative latencies (clock skew with the controller) are
		// dropped.
		if d := now.Sub(t); d >= 0 {
			m.programming.Observe(d.Seconds())
		}
	}
	clear(m.triggers)
	m.pendingSlices, m.pendingServices = 0, 0
	m.endpointPending.Set(0)
	m.servicePending.Set(0)
}

// stageOf names the chain part that failed (a dataplane.SyncError), or
// "dataplane".
func stageOf(err error) string {
	if se, ok := errors.AsType[*dataplane.SyncError](err); ok {
		return se.Dataplane
	}
	return "dataplane"
}

// Handler serves m's registry at /metrics.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{ErrorLog: stdlog{}}))
	return mux
}

// stdlog routes promhttp's error log to klog.
type stdlog struct{}

func (stdlog) Println(v ...any) { klog.ErrorS(nil, "Metrics scrape", "detail", fmt.Sprint(v...)) }
