package agentapi

import (
	"encoding/json"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/switchyard/switchyard/conntrack"
	"github.com/switchyard/switchyard/dataplane"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

// golden compares got with testdata/name (rewritten with -update).
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if string(got) != string(want) {
		t.Errorf("%s differs from golden file:\n--- got\n%s--- want\n%s", path, got, want)
	}
}

func goldenJSON(t *testing.T, name string, v any) {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	golden(t, name, append(b, '\n'))
}

func spn(ns, name, port string, proto dataplane.Protocol) dataplane.ServicePortName {
	return dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: ns, Name: name}, Port: port, Protocol: proto}
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func ips(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

var (
	webHTTP = spn("default", "web", "http", dataplane.TCP)
	dnsUDP  = spn("default", "dns", "dns", dataplane.UDP)
	shopAPI = spn("shop", "api", "", dataplane.TCP)
)

// testState is node-a in zone-a (192.168.1.10) with three Service ports:
// web (ClusterIP + NodePort; two ready endpoints, one terminating), dns
// (no endpoints) and shop/api (external and load balancer IPs,
// externalTrafficPolicy Local, session affinity, source ranges).
func testState() *dataplane.State {
	st := dataplane.NewState()
	st.NodeName, st.NodeZone, st.NodeIPs = "node-a", "zone-a", ips("192.168.1.10")
	st.Services[webHTTP] = &dataplane.ServicePort{Name: webHTTP, Port: 80, NodePort: 30080, ClusterIPs: ips("10.96.0.10")}
	st.Endpoints[webHTTP] = []dataplane.Endpoint{
		{Addr: ap("10.244.1.2:8080"), Ready: true, Serving: true, NodeName: "node-a", Zone: "zone-a"},
		{Addr: ap("10.244.1.9:8080"), Serving: true, Terminating: true, NodeName: "node-a", Zone: "zone-a"},
		{Addr: ap("10.244.2.3:8080"), Ready: true, Serving: true, NodeName: "node-b", Zone: "zone-b"},
	}
	st.Services[dnsUDP] = &dataplane.ServicePort{Name: dnsUDP, Port: 53, ClusterIPs: ips("10.96.0.53")}
	st.Services[shopAPI] = &dataplane.ServicePort{Name: shopAPI, Port: 443, ClusterIPs: ips("10.96.0.44"),
		ExternalIPs: ips("203.0.113.7"), LoadBalancerIPs: ips("198.51.100.1"), ExternalPolicyLocal: true,
		SessionAffinityTimeout: 3 * time.Hour, LoadBalancerSourceRanges: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
	st.Endpoints[shopAPI] = []dataplane.Endpoint{
		{Addr: ap("10.244.1.4:9000"), Ready: true, Serving: true, NodeName: "node-a", Zone: "zone-a"},
		{Addr: ap("10.244.2.5:9000"), Ready: true, Serving: true, NodeName: "node-b", Zone: "zone-b"},
	}
	return st
}

// flow builds a DNATed conntrack entry from a client to frontend, sent to
// backend.
func flow(proto dataplane.Protocol, client, frontend, backend, tcpState string) Flow {
	f := Flow{Flow: conntrack.Flow{Protocol: proto,
		Orig:  conntrack.Tuple{Src: ap(client), Dst: ap(frontend)},
		Reply: conntrack.Tuple{Src: ap(backend), Dst: ap(client)}}}
	if proto == dataplane.TCP {
		f.TCPState = tcpState
	}
	return f
}

// testFlows: web has 3 established + 1 TIME_WAIT flow on 10.244.1.2, one
// established on 10.244.2.3 (through the NodePort), one on a removed
// backend 10.244.3.3; a flow not DNATed is ignored.
func testFlows() []Flow {
	return []Flow{
		flow(dataplane.TCP, "10.244.5.5:40001", "10.96.0.10:80", "10.244.1.2:8080", "ESTABLISHED"),
		flow(dataplane.TCP, "10.244.5.5:40002", "10.96.0.10:80", "10.244.1.2:8080", "ESTABLISHED"),
		flow(dataplane.TCP, "10.244.5.5:40003", "10.96.0.10:80", "10.244.1.2:8080", "ESTABLISHED"),
		flow(dataplane.TCP, "10.244.5.5:40004", "10.96.0.10:80", "10.244.1.2:8080", "TIME_WAIT"),
		flow(dataplane.TCP, "192.168.1.99:50000", "192.168.1.10:30080", "10.244.2.3:8080", "ESTABLISHED"),
		flow(dataplane.TCP, "10.244.5.5:40005", "10.96.0.10:80", "10.244.3.3:8080", "ESTABLISHED"),
		flow(dataplane.TCP, "10.244.5.5:40006", "10.244.1.2:8080", "10.244.1.2:8080", "ESTABLISHED"),
		flow(dataplane.UDP, "10.244.5.5:5353", "10.96.0.53:53", "10.244.9.9:53", ""),
	}
}

// fakeSyncer is a dataplane.Syncer stand-in.
type fakeSyncer struct {
	mu       sync.Mutex
	st       *dataplane.State
	last     time.Time
	err      error
	syncs    int
	requests int
}

func (f *fakeSyncer) View(fn func(*dataplane.State)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f.st)
}

func (f *fakeSyncer) RequestFull() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests++
}

func (f *fakeSyncer) Status() (time.Time, error, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last, f.err, f.syncs
}

// fakeInspector answers with fixed data.
type fakeInspector struct {
	kind   string
	kernel map[dataplane.ServicePortName][]KernelBackend
	table  any
}

func (f *fakeInspector) Kind() string { return f.kind }
func (f *fakeInspector) Scheduler(sp *dataplane.ServicePort) string {
	if f.kind == KindNFTables {
		return "random"
	}
	return "rr"
}
func (f *fakeInspector) Backends(_ *dataplane.State, names []dataplane.ServicePortName) (map[dataplane.ServicePortName][]KernelBackend, error) {
	if f.kernel == nil {
		return nil, nil
	}
	out := map[dataplane.ServicePortName][]KernelBackend{}
	for _, n := range names {
		if slices.Contains(names, n) {
			out[n] = f.kernel[n]
		}
	}
	return out, nil
}
func (f *fakeInspector) Table(*dataplane.State) (any, error) { return f.table, nil }
func (f *fakeInspector) Route(_ *dataplane.State, name dataplane.ServicePortName, dst netip.AddrPort, nodePort bool) []string {
	return []string{"route to " + dst.String() + " of " + name.String()}
}

type fakeFlows []Flow

func (f fakeFlows) ListFlows() ([]Flow, error) { return slices.Clone(f), nil }
