package healthcheck

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"
)

type healthzBody struct {
	LastUpdated  string `json:"lastUpdated"`
	CurrentTime  string `json:"currentTime"`
	NodeEligible *bool  `json:"nodeEligible"`
}

func getHealthz(t *testing.T, h http.Handler, path string) (int, healthzBody, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	raw, _ := io.ReadAll(rec.Body)
	var b healthzBody
	if err := json.Unmarshal(raw, &b); err != nil {
		t.Fatalf("%s: body %q: %v", path, raw, err)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s: Content-Type %q", path, ct)
	}
	return rec.Code, b, string(raw)
}

// TestProxyHealthTransitions walks kube-proxy's states: healthy at start,
// still healthy while a queued update is younger than the timeout,
// unhealthy once it is overdue, healthy again after a sync; node deletion
// and the autoscaler's taint fail /healthz but not /livez.
func TestProxyHealthTransitions(t *testing.T) {
	start := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	clk := clocktesting.NewFakePassiveClock(start)
	h := NewProxyHealth(time.Minute, clk)
	srv := h.Handler()
	expect := func(what string, healthz, livez int, eligible bool) {
		t.Helper()
		code, b, raw := getHealthz(t, srv, "/healthz")
		if code != healthz || b.NodeEligible == nil || *b.NodeEligible != eligible || b.CurrentTime != clk.Now().String() {
			t.Errorf("%s: /healthz %d %s, want %d nodeEligible %v", what, code, raw, healthz, eligible)
		}
		code, b, raw = getHealthz(t, srv, "/livez")
		if code != livez || b.NodeEligible != nil {
			t.Errorf("%s: /livez %d %s, want %d without nodeEligible", what, code, raw, livez)
		}
	}

	expect("at start", 200, 200, true)
	h.QueuedUpdate()
	clk.SetTime(start.Add(59 * time.Second))
	expect("update pending, not late", 200, 200, true)
	h.QueuedUpdate() // a later event does not reset the oldest
	clk.SetTime(start.Add(61 * time.Second))
	expect("update overdue", 503, 503, true)

	h.Updated()
	expect("after a sync", 200, 200, true)
	if _, b, _ := getHealthz(t, srv, "/healthz"); b.LastUpdated != start.Add(61*time.Second).String() {
		t.Errorf("lastUpdated %q, want the sync time", b.LastUpdated)
	}

	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n"}}
	node.Spec.Taints = []v1.Taint{{Key: ToBeDeletedTaint, Effect: v1.TaintEffectNoSchedule}}
	h.SyncNode(node)
	expect("autoscaler taint", 503, 200, false)
	node.Spec.Taints = nil
	h.SyncNode(node)
	expect("taint removed", 200, 200, true)
	now := metav1.NewTime(start)
	node.DeletionTimestamp = &now
	h.SyncNode(node)
	expect("node being deleted", 503, 200, false)
}
