package healthcheck

import (
	"fmt"
	"net/http"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/utils/clock"

	"github.com/switchyard/switchyard/dataplane"
)

// ToBeDeletedTaint is the taint the cluster autoscaler puts on a node it
// is about to remove; kube-proxy's /healthz then fails so load balancers
// drain the node first.
const ToBeDeletedTaint = "ToBeDeletedByClusterAutoscaler"

// ProxyHealth is the agent's own health, kube-proxy's ProxyHealthServer
// semantics: the proxy is unhealthy when an update was queued (a source
// event) and no sync has completed for longer than the health timeout
// since; /healthz is also unhealthy while this node is being deleted
// (deletion timestamp or the autoscaler's taint). /livez ignores the node.
// Methods are safe for concurrent use.
type ProxyHealth struct {
	clock   clock.PassiveClock
	timeout time.Duration

	mu sync.Mutex
	// oldestPendingQueued is when the oldest update not yet synced was
	// queued; zero when none is pending.
	oldestPendingQueued time.Time
	lastUpdated         time.Time
	nodeEligible        bool
}

// NewProxyHealth returns a ProxyHealth that turns unhealthy when a queued
// update is older than timeout (kube-proxy uses twice the sync period).
func NewProxyHealth(timeout time.Duration, clk clock.PassiveClock) *ProxyHealth {
	if clk == nil {
		clk = clock.RealClock{}
	}
	return &ProxyHealth{clock: clk, timeout: timeout, nodeEligible: true}
}

// QueuedUpdate records that a change is waiting for a sync.
func (h *ProxyHealth) QueuedUpdate() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.oldestPendingQueued.IsZero() {
		h.oldestPendingQueued = h.clock.Now()
	}
}

// Updated records a successful sync: nothing is pending any more.
func (h *ProxyHealth) Updated() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.oldestPendingQueued = time.Time{}
	h.lastUpdated = h.clock.Now()
}

// SyncNode follows this node's Node object: a node being deleted, or
// tainted for deletion by the cluster autoscaler, is not eligible for
// load-balancer traffic.
func (h *ProxyHealth) SyncNode(node *v1.Node) {
	eligible := node.DeletionTimestamp.IsZero()
	for _, t := range node.Spec.Taints {
		if t.Key == ToBeDeletedTaint {
			eligible = false
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.nodeEligible = eligible
}

// Status reports whether the proxy is healthy (no update overdue), the
// last successful sync and whether the node is eligible.
func (h *ProxyHealth) Status() (healthy bool, lastUpdated time.Time, nodeEligible bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	healthy = h.oldestPendingQueued.IsZero() || h.clock.Since(h.oldestPendingQueued) < h.timeout
	return healthy, h.lastUpdated, h.nodeEligible
}

// Queued and Synced make ProxyHealth a dataplane.SyncObserver: every
// source event queues an update, every successful sync clears them.
func (h *ProxyHealth) Queued() { h.QueuedUpdate() }

func (h *ProxyHealth) Synced(r dataplane.SyncResult) {
	if r.Err == nil {
		h.Updated()
	}
}

var _ dataplane.SyncObserver = (*ProxyHealth)(nil)

// Healthy is Status's first result.
func (h *ProxyHealth) Healthy() bool {
	ok, _, _ := h.Status()
	return ok
}

// Handler serves /healthz and /livez with kube-proxy's bodies:
// {"lastUpdated": "...","currentTime": "...", "nodeEligible": true} and
// {"lastUpdated": "...","currentTime": "..."}; 200 when healthy, 503 not.
func (h *ProxyHealth) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		healthy, last, eligible := h.Status()
		h.write(w, healthy && eligible, fmt.Sprintf(`{"lastUpdated": %q,"currentTime": %q, "nodeEligible": %v}`,
			formatTime(last), formatTime(h.clock.Now()), eligible))
	})
	mux.HandleFunc("/livez", func(w http.ResponseWriter, _ *http.Request) {
		healthy, last, _ := h.Status()
		h.write(w, healthy, fmt.Sprintf(`{"lastUpdated": %q,"currentTime": %q}`, formatTime(last), formatTime(h.clock.Now())))
	})
	return mux
}

func (h *ProxyHealth) write(w http.ResponseWriter, healthy bool, body string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if healthy {
		w.WriteHeader(http.StatusOK)
	} else {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	fmt.Fprint(w, body)
}

// formatTime prints t as kube-proxy does (time.Time's String), without
// the monotonic clock reading.
func formatTime(t time.Time) string { return t.Round(0).String() }
