package dataplane

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

func changedNames(c Changes) string {
	var names []string
	for n := range maps.Keys(c.Services) {
		names = append(names, n.String())
	}
	slices.Sort(names)
	return strings.Join(names, ",")
}

func TestTrackerReportsOnlyRealChanges(t *testing.T) {
	tcp := v1.ProtocolTCP
	tr := NewTracker("node-a", TranslateOptions{}, nil)
	web := svc("demo", "web")
	sl := slice("demo", "web-1", "web", []discovery.EndpointPort{port("http", 8080, tcp)}, epSpec{ip: "10.244.1.2"})

	tr.OnServiceUpsert(web)
	tr.OnEndpointSliceUpsert(sl)
	tr.OnServiceUpsert(svc("demo", "api"))
	st, ch := tr.Drain()
	if got := changedNames(ch); got != "demo/api,demo/web" {
		t.Fatalf("first drain changed %q", got)
	}
	if ch.Full {
		t.Fatal("tracker must never report a full sync")
	}
	if len(st.Endpoints) != 1 {
		t.Fatalf("endpoints %v", st.Endpoints)
	}

	// An update with identical content, and an edit that is reverted before
	// the drain, change nothing.
	tr.OnServiceUpsert(svc("demo", "web"))
	tr.OnServiceUpsert(svc("demo", "api", func(s *v1.Service) { s.Spec.Ports[0].Port = 81 }))
	tr.OnServiceUpsert(svc("demo", "api"))
	if !tr.Pending() {
		t.Fatal("events must be pending before drain")
	}
	_, ch = tr.Drain()
	if got := changedNames(ch); got != "" {
		t.Fatalf("no-op edits reported as changes: %q", got)
	}
	if tr.Pending() {
		t.Fatal("pending after drain")
	}

	// Scaling the slice changes only web.
	sl2 := sl.DeepCopy()
	sl2.Endpoints = append(sl2.Endpoints, discovery.Endpoint{Addresses: []string{"10.244.1.3"}})
	tr.OnEndpointSliceUpsert(sl2)
	st, ch = tr.Drain()
	if got := changedNames(ch); got != "demo/web" {
		t.Fatalf("scale changed %q", got)
	}
	if n := len(st.Endpoints[ServicePortName{ServiceName{"demo", "web"}, "http", TCP}]); n != 2 {
		t.Fatalf("web has %d endpoints, want 2", n)
	}

	// Deleting the slice empties the endpoints; deleting the Service removes it.
	tr.OnEndpointSliceDelete(sl2)
	st, ch = tr.Drain()
	if got := changedNames(ch); got != "demo/web" || len(st.Endpoints) != 0 {
		t.Fatalf("slice delete: changed %q endpoints %v", got, st.Endpoints)
	}
	tr.OnServiceDelete("demo", "web")
	st, ch = tr.Drain()
	if got := changedNames(ch); got != "demo/web" {
		t.Fatalf("service delete changed %q", got)
	}
	if want := "demo/api:http/tcp port=80 clusterIPs=[10.96.0.10]\n"; st.Dump() != want {
		t.Fatalf("state after deletes:\n%s", st.Dump())
	}
}

func TestTrackerSliceBeforeServiceAndRelabel(t *testing.T) {
	tcp := v1.ProtocolTCP
	tr := NewTracker("node-a", TranslateOptions{}, nil)
	sl := slice("demo", "s-1", "a", []discovery.EndpointPort{port("http", 8080, tcp)}, epSpec{ip: "10.244.1.2"})
	tr.OnEndpointSliceUpsert(sl)
	st, ch := tr.Drain()
	if len(st.Services) != 0 || len(st.Endpoints) != 0 || changedNames(ch) != "" {
		t.Fatalf("slice without Service programmed something: %s %v", st.Dump(), ch)
	}
	tr.OnServiceUpsert(svc("demo", "a"))
	tr.OnServiceUpsert(svc("demo", "b", func(s *v1.Service) { s.Spec.ClusterIPs = []string{"10.96.0.11"} }))
	st, _ = tr.Drain()
	want := `demo/a:http/tcp port=80 clusterIPs=[10.96.0.10]
  10.244.1.2:8080 ready
demo/b:http/tcp port=80 clusterIPs=[10.96.0.11]
`
	if st.Dump() != want {
		t.Fatalf("got\n%s\nwant\n%s", st.Dump(), want)
	}
	// The slice moves from a to b.
	moved := sl.DeepCopy()
	moved.Labels[discovery.LabelServiceName] = "b"
	tr.OnEndpointSliceUpsert(moved)
	st, ch = tr.Drain()
	if got := changedNames(ch); got != "demo/a,demo/b" {
		t.Fatalf("relabel changed %q", got)
	}
	want = `demo/a:http/tcp port=80 clusterIPs=[10.96.0.10]
demo/b:http/tcp port=80 clusterIPs=[10.96.0.11]
  10.244.1.2:8080 ready
`
	if st.Dump() != want {
		t.Fatalf("got\n%s\nwant\n%s", st.Dump(), want)
	}
}

func TestTrackerInitializedAndNodeZone(t *testing.T) {
	tr := NewTracker("node-a", TranslateOptions{}, nil)
	if tr.Initialized() {
		t.Fatal("initialized before any source synced")
	}
	tr.SetServicesSynced()
	if tr.Initialized() {
		t.Fatal("initialized with only Services synced")
	}
	tr.SetEndpointSlicesSynced()
	if !tr.Initialized() {
		t.Fatal("not initialized after both synced")
	}
	tr.OnServiceUpsert(svc("demo", "web"))
	tr.Drain()
	tr.OnNodeUpsert(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "other", Labels: map[string]string{LabelTopologyZone: "z9"}}})
	if tr.Pending() {
		t.Fatal("another node's update must be ignored")
	}
	tr.OnNodeUpsert(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a", Labels: map[string]string{LabelTopologyZone: "z1"}}})
	st, ch := tr.Drain()
	if st.NodeZone != "z1" || changedNames(ch) != "demo/web" {
		t.Fatalf("zone %q changed %q", st.NodeZone, changedNames(ch))
	}
}

func TestTrackerReportsProblems(t *testing.T) {
	var got []Problem
	tr := NewTracker("node-a", TranslateOptions{}, func(p Problem) { got = append(got, p) })
	tr.OnServiceUpsert(svc("demo", "bad", func(s *v1.Service) { s.Spec.ClusterIPs = []string{"nope"} }))
	tr.OnEndpointSliceUpsert(slice("demo", "bad-1", "bad", []discovery.EndpointPort{{Port: ptr.To(int32(80))}}, epSpec{ip: "10.244.1.300"}))
	st, _ := tr.Drain()
	if len(st.Services) != 0 {
		t.Fatalf("bad Service programmed: %s", st.Dump())
	}
	if len(got) != 3 || got[0].Reason != "invalid-cluster-ip" || !got[1].Fatal || got[2].Reason != "invalid-endpoint-ip" {
		t.Fatalf("problems %+v", got)
	}
	if !strings.Contains(got[2].Error(), "EndpointSlice demo/bad-1") {
		t.Fatalf("problem does not name the object: %v", got[2])
	}
}

func TestTrackerNodeIPs(t *testing.T) {
	tr := NewTracker("node-a", TranslateOptions{}, nil)
	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}}
	node.Status.Addresses = []v1.NodeAddress{
		{Type: v1.NodeHostName, Address: "node-a"},
		{Type: v1.NodeExternalIP, Address: "203.0.113.9"},
		{Type: v1.NodeInternalIP, Address: "fd00::a"},
		{Type: v1.NodeInternalIP, Address: "192.168.1.10"},
	}
	tr.OnNodeUpsert(node)
	st, _ := tr.Drain()
	if got := fmt.Sprint(st.NodeIPs); got != "[192.168.1.10 fd00::a]" {
		t.Fatalf("node IPs %s, want the internal ones", got)
	}
	// Only external addresses: those are used.
	node.Status.Addresses = []v1.NodeAddress{{Type: v1.NodeExternalIP, Address: "203.0.113.9"}}
	tr.OnNodeUpsert(node)
	if st, _ = tr.Drain(); fmt.Sprint(st.NodeIPs) != "[203.0.113.9]" {
		t.Fatalf("node IPs %v", st.NodeIPs)
	}
	// --node-ip wins over the Node object from then on.
	tr.SetNodeIPs([]netip.Addr{netip.MustParseAddr("10.0.0.5")})
	tr.OnNodeUpsert(node)
	if st, _ = tr.Drain(); fmt.Sprint(st.NodeIPs) != "[10.0.0.5]" || !strings.Contains(st.Dump(), "nodeIPs [10.0.0.5]") {
		t.Fatalf("node IPs %v", st.NodeIPs)
	}
}
