package source

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"

	"github.com/switchyard/switchyard/dataplane"
)

const testNode = "node-a"

func testService(ns, name, clusterIP string, port int32, lbls map[string]string) *v1.Service {
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: lbls},
		Spec: v1.ServiceSpec{
			ClusterIP: clusterIP,
			Ports:     []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: port, TargetPort: intstr.FromInt32(8080)}},
		},
	}
}

func testSlice(ns, name, svc string, lbls map[string]string, addrs ...string) *discovery.EndpointSlice {
	l := map[string]string{discovery.LabelServiceName: svc}
	for k, v := range lbls {
		l[k] = v
	}
	sl := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: l},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To[int32](8080)}},
	}
	for _, a := range addrs {
		sl.Endpoints = append(sl.Endpoints, discovery.Endpoint{Addresses: []string{a}, Conditions: discovery.EndpointConditions{Ready: ptr.To(true)}})
	}
	return sl
}

func testNodeObj(name, zone string) *v1.Node {
	return &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{dataplane.LabelTopologyZone: zone}}}
}

// runInformers starts RunInformers and stops it (checking it returned nil)
// when the test ends.
func runInformers(t *testing.T, client *fake.Clientset, h Handler, notify func(), opts InformerOptions) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- RunInformers(ctx, client, testNode, h, notify, opts) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("RunInformers: %v", err)
			}
		case <-time.After(waitTimeout):
			t.Errorf("RunInformers did not return after cancel")
		}
	})
}

func TestRunInformersDeliversEvents(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset(
		testService("demo", "web", "10.96.0.10", 80, nil),
		// Filtered by the API server: another proxy's Service and slice, a
		// headless Service's slice.
		testService("demo", "other", "10.96.0.11", 80, map[string]string{dataplane.LabelServiceProxyName: "other-proxy"}),
		testSlice("demo", "other-1", "other", map[string]string{dataplane.LabelServiceProxyName: "other-proxy"}, "10.244.1.9"),
		testSlice("demo", "headless-1", "headless", map[string]string{LabelHeadless: ""}, "10.244.1.8"),
		testSlice("demo", "web-1", "web", nil, "10.244.1.10"),
		testNodeObj(testNode, "zone-a"),
		testNodeObj("node-b", "zone-b"), // the fake ignores field selectors
	)
	rec := newRecorder()
	runInformers(t, client, rec, rec.notify, InformerOptions{})

	eventually(t, "initial sync", func() bool {
		return rec.with(func(r *recorder) bool { return r.synced["services"] && r.synced["slices"] })
	})
	got := rec.Events()
	// The initial objects arrive before the synced marks, in any order.
	syncAt := slices.Index(got, "synced services")
	initial := slices.Sorted(slices.Values(got[:syncAt]))
	wantInitial := []string{"node+ node-a zone=zone-a", "slice+ demo/web-1", "svc+ demo/web"}
	if !slices.Equal(initial, wantInitial) {
		t.Fatalf("initial events %q, want %q (all events %q)", initial, wantInitial, got)
	}

	// Create, update and delete through the API.
	svcs := client.CoreV1().Services("demo")
	sls := client.DiscoveryV1().EndpointSlices("demo")
	mustDo(t, func() error {
		_, err := svcs.Create(ctx, testService("demo", "api", "10.96.0.12", 443, nil), metav1.CreateOptions{})
		return err
	})
	mustDo(t, func() error {
		_, err := sls.Create(ctx, testSlice("demo", "api-1", "api", nil, "10.244.1.20"), metav1.CreateOptions{})
		return err
	})
	eventually(t, "api Service and slice", func() bool {
		return rec.with(func(r *recorder) bool { return r.services["demo/api"] != nil && r.slices["demo/api-1"] != nil })
	})

	mustDo(t, func() error {
		_, err := svcs.Update(ctx, testService("demo", "api", "10.96.0.12", 8443, nil), metav1.UpdateOptions{})
		return err
	})
	mustDo(t, func() error {
		_, err := sls.Update(ctx, testSlice("demo", "api-1", "api", nil, "10.244.1.20", "10.244.1.21"), metav1.UpdateOptions{})
		return err
	})
	eventually(t, "api updates", func() bool {
		return rec.with(func(r *recorder) bool {
			return r.services["demo/api"].Spec.Ports[0].Port == 8443 && len(r.slices["demo/api-1"].Endpoints) == 2
		})
	})

	mustDo(t, func() error { return svcs.Delete(ctx, "api", metav1.DeleteOptions{}) })
	mustDo(t, func() error { return sls.Delete(ctx, "api-1", metav1.DeleteOptions{}) })
	eventually(t, "api deletes", func() bool {
		return rec.with(func(r *recorder) bool { return r.services["demo/api"] == nil && r.slices["demo/api-1"] == nil })
	})

	// Node updates of this node only.
	mustDo(t, func() error {
		_, err := client.CoreV1().Nodes().Update(ctx, testNodeObj(testNode, "zone-c"), metav1.UpdateOptions{})
		return err
	})
	mustDo(t, func() error {
		_, err := client.CoreV1().Nodes().Update(ctx, testNodeObj("node-b", "zone-x"), metav1.UpdateOptions{})
		return err
	})
	eventually(t, "node update", func() bool {
		return rec.with(func(r *recorder) bool { return r.node.Labels[dataplane.LabelTopologyZone] == "zone-c" })
	})
	for _, e := range rec.Events() {
		if e == "node+ node-b zone=zone-b" || e == "node+ node-b zone=zone-x" {
			t.Errorf("saw another node: %q", e)
		}
	}
	mustDo(t, func() error { return client.CoreV1().Nodes().Delete(ctx, testNode, metav1.DeleteOptions{}) })
	eventually(t, "node delete clears the zone", func() bool {
		return rec.with(func(r *recorder) bool { return r.events[len(r.events)-1] == "node+ node-a zone=" })
	})

	// Every event is followed by a notify, and so is the sync.
	eventually(t, "a notify per event", func() bool {
		return rec.with(func(r *recorder) bool { return r.notified == len(r.events)-2+1 })
	})
}

func mustDo(t *testing.T, f func() error) {
	t.Helper()
	if err := f(); err != nil {
		t.Fatal(err)
	}
}

func TestRunInformersSelectors(t *testing.T) {
	for _, tc := range []struct {
		proxyName                   string
		wantSvc, wantSlice, wantFld string
	}{
		{"", "!service.kubernetes.io/service-proxy-name", "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name", "metadata.name=node-a"},
		{"switchyard", "", "!service.kubernetes.io/headless", "metadata.name=node-a"},
	} {
		t.Run("proxyName="+tc.proxyName, func(t *testing.T) {
			client := fake.NewClientset()
			rec := newRecorder()
			runInformers(t, client, rec, nil, InformerOptions{ProxyName: tc.proxyName})
			eventually(t, "sync", func() bool { return rec.with(func(r *recorder) bool { return r.synced["slices"] }) })

			want := map[string]string{
				"services":       "labels=" + tc.wantSvc,
				"endpointslices": "labels=" + tc.wantSlice,
				"nodes":          "fields=" + tc.wantFld,
			}
			listed := map[string]bool{}
			for _, a := range client.Actions() {
				var r k8stesting.ListRestrictions
				switch a := a.(type) {
				case k8stesting.ListActionImpl:
					r = a.ListRestrictions
					listed[a.GetResource().Resource] = true
				case k8stesting.WatchActionImpl:
					r = k8stesting.ListRestrictions{Labels: a.WatchRestrictions.Labels, Fields: a.WatchRestrictions.Fields}
				default:
					continue
				}
				res := a.GetResource().Resource
				got := "labels=" + r.Labels.String()
				if res == "nodes" {
					got = "fields=" + r.Fields.String()
				}
				if got != want[res] {
					t.Errorf("%s %s: %s, want %s", a.GetVerb(), res, got, want[res])
				}
			}
			if len(listed) != len(want) {
				t.Errorf("listed %v, want %d resources", listed, len(want))
			}
		})
	}
}

func TestSelectorsMatch(t *testing.T) {
	for _, tc := range []struct {
		proxyName string
		labels    labels.Set
		svc, sl   bool
	}{
		{"", nil, true, true},
		{"", labels.Set{dataplane.LabelServiceProxyName: "x"}, false, false},
		{"", labels.Set{LabelHeadless: ""}, true, false},
		{"switchyard", labels.Set{dataplane.LabelServiceProxyName: "switchyard"}, true, true},
		// The tracker, not the selector, skips other proxies' Services.
		{"switchyard", labels.Set{dataplane.LabelServiceProxyName: "x"}, true, true},
		{"switchyard", labels.Set{LabelHeadless: ""}, true, false},
	} {
		if got := ServiceSelector(tc.proxyName).Matches(tc.labels); got != tc.svc {
			t.Errorf("ServiceSelector(%q).Matches(%v) = %t", tc.proxyName, tc.labels, got)
		}
		if got := EndpointSliceSelector(tc.proxyName).Matches(tc.labels); got != tc.sl {
			t.Errorf("EndpointSliceSelector(%q).Matches(%v) = %t", tc.proxyName, tc.labels, got)
		}
	}
}

// Tombstones come from relists after a missed delete; the fake cannot
// produce them, so the handlers are called directly.
func TestInformerTombstones(t *testing.T) {
	rec := newRecorder()
	ev := informerEvents{h: rec, notify: rec.notify, nodeName: testNode}
	svc := testService("demo", "web", "10.96.0.10", 80, nil)
	sl := testSlice("demo", "web-1", "web", nil, "10.244.1.10")

	ev.serviceHandler().OnDelete(cache.DeletedFinalStateUnknown{Key: "demo/web", Obj: svc})
	ev.serviceHandler().OnDelete(cache.DeletedFinalStateUnknown{Key: "demo/gone", Obj: nil})
	ev.serviceHandler().OnDelete(cache.DeletedFinalStateUnknown{Key: "", Obj: nil}) // unusable: ignored
	ev.serviceHandler().OnDelete("not an object")                                   // ignored
	ev.sliceHandler().OnDelete(cache.DeletedFinalStateUnknown{Key: "demo/web-1", Obj: sl})
	ev.sliceHandler().OnDelete(cache.DeletedFinalStateUnknown{Key: "demo/web-2", Obj: "garbage"})
	ev.nodeHandler().OnDelete(cache.DeletedFinalStateUnknown{Key: testNode})
	ev.nodeHandler().OnDelete(testNodeObj("node-b", "z")) // not this node

	want := []string{"svc- demo/web", "svc- demo/gone", "slice- demo/web-1", "slice- demo/web-2", "node+ node-a zone="}
	if got := rec.Events(); !slices.Equal(got, want) {
		t.Errorf("events %q, want %q", got, want)
	}
	if rec.notified != len(want) {
		t.Errorf("notified %d times, want %d", rec.notified, len(want))
	}
}

func TestRunInformersErrors(t *testing.T) {
	client := fake.NewClientset()
	rec := newRecorder()
	ctx := context.Background()
	if err := RunInformers(ctx, nil, testNode, rec, nil, InformerOptions{}); err == nil {
		t.Error("nil client: no error")
	}
	if err := RunInformers(ctx, client, "", rec, nil, InformerOptions{}); err == nil {
		t.Error("empty node name: no error")
	}
	if err := RunInformers(ctx, client, testNode, nil, nil, InformerOptions{}); err == nil {
		t.Error("nil handler: no error")
	}
	if err := RunInformers(ctx, client, testNode, rec, nil, InformerOptions{ResyncPeriod: -time.Second}); err == nil {
		t.Error("negative resync: no error")
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	err := RunInformers(cancelled, client, testNode, rec, nil, InformerOptions{})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled before sync: %v, want context.Canceled", err)
	}
	if rec.with(func(r *recorder) bool { return r.synced["services"] }) {
		t.Error("marked synced although the caches never synced")
	}
}

// End to end: the fake API server, the informers and a real Tracker.
func TestRunInformersWithTracker(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset(
		testService("demo", "web", "10.96.0.10", 80, nil),
		testSlice("demo", "web-1", "web", nil, "10.244.1.11", "10.244.1.10"),
		testNodeObj(testNode, "zone-a"),
	)
	tr := dataplane.NewTracker(testNode, dataplane.TranslateOptions{}, func(p dataplane.Problem) { t.Errorf("tracker problem: %v", p) })
	runInformers(t, client, tr, nil, InformerOptions{})
	eventually(t, "tracker initialized", tr.Initialized)
	drainUntil(t, tr, `zone zone-a
demo/web:http/tcp port=80 clusterIPs=[10.96.0.10]
  10.244.1.10:8080 ready
  10.244.1.11:8080 ready
`)

	notReady := testSlice("demo", "web-1", "web", nil, "10.244.1.10", "10.244.1.12")
	notReady.Endpoints[1].Conditions = discovery.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(true), Terminating: ptr.To(true)}
	mustDo(t, func() error {
		_, err := client.DiscoveryV1().EndpointSlices("demo").Update(ctx, notReady, metav1.UpdateOptions{})
		return err
	})
	drainUntil(t, tr, `zone zone-a
demo/web:http/tcp port=80 clusterIPs=[10.96.0.10]
  10.244.1.10:8080 ready
  10.244.1.12:8080 serving,terminating
`)

	mustDo(t, func() error { return client.CoreV1().Services("demo").Delete(ctx, "web", metav1.DeleteOptions{}) })
	drainUntil(t, tr, "zone zone-a\n")
}
