package metrics

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/switchyard/switchyard/dataplane"
)

func slice(name, trigger string) *discovery.EndpointSlice {
	s := &discovery.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: name}}
	if trigger != "" {
		s.Annotations = map[string]string{AnnotationLastChangeTriggerTime: trigger}
	}
	return s
}

// TestMetricsAfterSyncs drives the observer as the sync loop and the
// sources do and checks the exposed values with kube-proxy's names.
func TestMetricsAfterSyncs(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	clk := clocktesting.NewFakePassiveClock(t0)
	m := New(clk)
	m.SetDataplane("iptables+ipvs")

	m.ServiceChanged()
	m.EndpointSliceChanged(slice("web-1", t0.Add(-3*time.Second).Format(time.RFC3339Nano)), false)
	m.EndpointSliceChanged(slice("web-2", ""), false)           // no annotation: not measured
	m.EndpointSliceChanged(slice("api-1", "not a time"), false) // unparsable: not measured
	m.EndpointSliceChanged(slice("gone-1", t0.Format(time.RFC3339Nano)), false)
	m.EndpointSliceChanged(slice("gone-1", ""), true) // deleted before the sync
	m.Queued()
	if got := testutil.ToFloat64(m.endpointPending); got != 5 {
		t.Errorf("endpoint changes pending %v, want 5", got)
	}

	clk.SetTime(t0.Add(2 * time.Second))
	m.Synced(dataplane.SyncResult{Full: true, Duration: 30 * time.Millisecond, ServicePorts: 7})
	m.Synced(dataplane.SyncResult{Duration: 2 * time.Millisecond, ChangedServices: 1, ServicePorts: 7})
	m.Synced(dataplane.SyncResult{Err: &dataplane.SyncError{Dataplane: "nftables", Err: errors.New("EPERM")}})
	m.Synced(dataplane.SyncResult{Err: errors.New("bare")})
	m.ObjectProblem(dataplane.Problem{Object: "Service demo/bad", Reason: "invalid-port", Fatal: true})
	m.ObjectProblem(dataplane.Problem{Object: "Service demo/odd", Reason: "invalid-annotation"})

	// One latency: triggered 3 s before t0, synced at t0+2 s.
	if n, sum := histogram(t, m, "kubeproxy_network_programming_duration_seconds"); n != 1 || sum != 5 {
		t.Errorf("programming latency: %d observations, sum %v s; want 1 of 5 s", n, sum)
	}

	if err := testutil.CollectAndCompare(m.syncErrors, strings.NewReader(`
# HELP switchyard_sync_errors_total Failed dataplane syncs, by the dataplane stage that failed
# TYPE switchyard_sync_errors_total counter
switchyard_sync_errors_total{stage="dataplane"} 1
switchyard_sync_errors_total{stage="nftables"} 1
`)); err != nil {
		t.Error(err)
	}
	if err := testutil.CollectAndCompare(m.objectProblems, strings.NewReader(`
# HELP switchyard_objects_invalid_total Objects (or parts of them) the agent rejected or corrected, by reason
# TYPE switchyard_objects_invalid_total counter
switchyard_objects_invalid_total{action="corrected",kind="Service",reason="invalid-annotation"} 1
switchyard_objects_invalid_total{action="rejected",kind="Service",reason="invalid-port"} 1
`)); err != nil {
		t.Error(err)
	}
	for name, tc := range map[string]struct {
		got, want float64
	}{
		"sync count":         {count(t, m, "kubeproxy_sync_proxy_rules_duration_seconds"), 2},
		"full sync count":    {count(t, m, "kubeproxy_sync_full_proxy_rules_duration_seconds"), 1},
		"partial sync count": {count(t, m, "kubeproxy_sync_partial_proxy_rules_duration_seconds"), 1},
		"last sync":          {testutil.ToFloat64(m.lastSync), float64(t0.Add(2 * time.Second).Unix())},
		"last queued":        {testutil.ToFloat64(m.lastQueued), float64(t0.Unix())},
		"service changes":    {testutil.ToFloat64(m.serviceChanges), 1},
		"endpoint changes":   {testutil.ToFloat64(m.endpointChanges), 5},
		"endpoint pending":   {testutil.ToFloat64(m.endpointPending), 0},
		"service pending":    {testutil.ToFloat64(m.servicePending), 0},
		"service ports":      {testutil.ToFloat64(m.servicePorts), 7},
		"dataplane info":     {testutil.ToFloat64(m.dataplaneInfo.WithLabelValues("iptables+ipvs")), 1},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %v, want %v", name, tc.got, tc.want)
		}
	}
	// The whole registry gathers (names and help consistent).
	if _, err := m.Registry.Gather(); err != nil {
		t.Fatal(err)
	}
}

func count(t *testing.T, m *Metrics, name string) float64 {
	t.Helper()
	n, _ := histogram(t, m, name)
	return float64(n)
}

func histogram(t *testing.T, m *Metrics, name string) (uint64, float64) {
	t.Helper()
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			h := mf.GetMetric()[0].GetHistogram()
			return h.GetSampleCount(), h.GetSampleSum()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0, 0
}

func TestHostPortProblems(t *testing.T) {
	m := New(nil)
	m.SetHostPortProblems(map[string]int{"conflict": 2, "nodeport": 1})
	m.SetHostPortProblems(map[string]int{"conflict": 1})
	if err := testutil.CollectAndCompare(m.hostPortProblems, strings.NewReader(`
# HELP switchyard_hostport_problems hostPorts of this node's Pods not programmed as asked: conflict (another Pod holds the port), nodeport (collides with a Service's NodePort), or the invalid-port reason
# TYPE switchyard_hostport_problems gauge
switchyard_hostport_problems{kind="conflict"} 1
`)); err != nil {
		t.Error(err)
	}
}
