package agentapi

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/switchyard/switchyard/dataplane"
)

// IPVS: weights and connection counts from the kernel; a real server that
// is no endpoint any more shows as draining.
func TestServicesFromKernel(t *testing.T) {
	st := testState()
	kernel := map[dataplane.ServicePortName][]KernelBackend{
		webHTTP: {
			{Addr: ap("10.244.1.2:8080"), Weight: 1, Active: 3, Inactive: 1},
			{Addr: ap("10.244.1.9:8080"), Weight: 0, Active: 1},
			{Addr: ap("10.244.2.3:8080"), Weight: 1, Active: 1},
			{Addr: ap("10.244.3.3:8080"), Weight: 0, Active: 1},
		},
		dnsUDP:  {},
		shopAPI: {{Addr: ap("10.244.1.4:9000"), Weight: 1}, {Addr: ap("10.244.2.5:9000"), Weight: 1}},
	}
	insp := &fakeInspector{kind: KindIPVS}
	got := ServicesFrom(st, SelectPorts(st, "", ""), KindIPVS, insp.Scheduler, kernel, nil)
	goldenJSON(t, "services_ipvs.json", got)
}

// nftables: weights from the model (reachable from this node), counts
// from conntrack, conntrack's removed backend as draining.
func TestServicesFromConntrack(t *testing.T) {
	st := testState()
	insp := &fakeInspector{kind: KindNFTables}
	got := ServicesFrom(st, SelectPorts(st, "default", ""), KindNFTables, insp.Scheduler, nil, testFlows())
	goldenJSON(t, "services_nftables.json", got)
}

func TestServicesUnknownConnections(t *testing.T) {
	st := testState()
	got := ServicesFrom(st, SelectPorts(st, "", "web"), "", nil, nil, nil)
	if len(got.Services) != 1 {
		t.Fatalf("filter by name: %d services", len(got.Services))
	}
	for _, b := range got.Services[0].Backends {
		if b.Connections != nil {
			t.Errorf("backend %s has connection counts without a source", b.Address)
		}
	}
}

func TestConntrackFrom(t *testing.T) {
	st := testState()
	goldenJSON(t, "conntrack_agent.json", ConntrackFrom(st, SelectPorts(st, "", ""), testFlows()))
	goldenJSON(t, "conntrack_kernel.json", KernelConntrack(testFlows()))
}

func TestImbalance(t *testing.T) {
	for _, c := range []struct {
		counts    []int
		max       int
		mean, imb float64
	}{
		{nil, 0, 0, 0},
		{[]int{0, 0}, 0, 0, 0},
		{[]int{3, 1}, 3, 2, 1.5},
		{[]int{4, 0, 0, 0}, 4, 1, 4},
		{[]int{2, 2, 2}, 2, 2, 1},
	} {
		m, mean, imb := imbalance(c.counts)
		if m != c.max || mean != c.mean || imb != c.imb {
			t.Errorf("imbalance(%v) = %d, %v, %v; want %d, %v, %v", c.counts, m, mean, imb, c.max, c.mean, c.imb)
		}
	}
}

func TestTraceFrom(t *testing.T) {
	st := testState()
	for _, c := range []struct {
		name, dst string
		kind      string
	}{
		{"clusterip_ipvs", "10.96.0.10:80/tcp", KindIPVS},
		{"nodeport_nftables", "192.168.1.10:30080", KindNFTables},
		{"no_endpoints", "10.96.0.53:53/udp", KindNFTables},
		{"external_local_nftables", "203.0.113.7:443/tcp", KindNFTables},
		{"lb_local_ipvs", "198.51.100.1:443", KindIPVS},
		{"no_service", "10.96.0.99:80", KindIPVS},
	} {
		t.Run(c.name, func(t *testing.T) {
			dst, proto, err := ParseDestination(c.dst)
			if err != nil {
				t.Fatal(err)
			}
			goldenJSON(t, "trace_"+c.name+".json", TraceFrom(st, dst, proto, &fakeInspector{kind: c.kind}))
		})
	}
}

// externalTrafficPolicy Local without a local endpoint: outside clients
// dropped, the node and its pods to the Cluster endpoints, on both
// dataplanes; internalTrafficPolicy Local without one: nftables drops,
// IPVS (no real server) refuses.
func TestTraceNoLocalEndpoint(t *testing.T) {
	st := testState()
	st.Endpoints[shopAPI] = st.Endpoints[shopAPI][1:] // node-b's only
	dst := ap("203.0.113.7:443")
	for _, kind := range []string{KindNFTables, KindIPVS} {
		m := TraceFrom(st, dst, dataplane.TCP, &fakeInspector{kind: kind}).Matches
		if len(m) != 1 || m[0].Result != "drop" || len(m[0].Backends) != 1 || !m[0].Backends[0].Chosen ||
			!strings.Contains(strings.Join(m[0].Reasons, "\n"), "this node's pods and the node itself reach the Cluster endpoints") {
			t.Errorf("%s, external: %+v, want a drop, the Cluster endpoint chosen for the node's pods", kind, m)
		}
	}
	st.Services[shopAPI].InternalPolicyLocal = true
	dst = ap("10.96.0.44:443")
	if m := TraceFrom(st, dst, dataplane.TCP, &fakeInspector{kind: KindNFTables}).Matches; len(m) != 1 || m[0].Result != "drop" {
		t.Errorf("nftables, internal: %+v, want one drop", m)
	}
	if m := TraceFrom(st, dst, dataplane.TCP, &fakeInspector{kind: KindIPVS}).Matches; len(m) != 1 || m[0].Result != "reject" {
		t.Errorf("ipvs, internal: %+v, want one reject", m)
	}
}

// Two ports claiming one frontend: the first by name gets it.
func TestTraceShadowed(t *testing.T) {
	st := testState()
	other := spn("default", "zzz", "", dataplane.TCP)
	st.Services[other] = &dataplane.ServicePort{Name: other, Port: 80, ClusterIPs: ips("10.96.0.10")}
	m := TraceFrom(st, ap("10.96.0.10:80"), "", nil).Matches
	if len(m) != 2 || m[0].Service != webHTTP.String() || m[0].Result != "forward" || m[1].Result != "shadowed" {
		t.Errorf("matches %+v", m)
	}
}

// Topology hints narrow Cluster traffic; the trace says why others are
// left out.
func TestTraceTopology(t *testing.T) {
	st := testState()
	eps := st.Endpoints[webHTTP]
	eps[0].ZoneHints, eps[2].ZoneHints = []string{"zone-a"}, []string{"zone-b"}
	m := TraceFrom(st, ap("10.96.0.10:80"), dataplane.TCP, nil).Matches[0]
	want := map[string]string{
		"10.244.1.2:8080": "",
		"10.244.1.9:8080": "terminating (ready endpoints exist)",
		"10.244.2.3:8080": "not hinted for zone zone-a (topology)",
	}
	for _, b := range m.Backends {
		if b.Why != want[b.Address] || b.Chosen != (want[b.Address] == "") {
			t.Errorf("backend %s: chosen=%v why=%q, want why %q", b.Address, b.Chosen, b.Why, want[b.Address])
		}
	}
}

func TestParseDestination(t *testing.T) {
	for in, want := range map[string]string{
		"10.96.0.10:80":        "10.96.0.10:80 ",
		"10.96.0.10:80/tcp":    "10.96.0.10:80 TCP",
		"[fd00::1]:53/UDP":     "[fd00::1]:53 UDP",
		"[::ffff:1.2.3.4]:1/x": "error",
		"10.96.0.10":           "error",
	} {
		dst, proto, err := ParseDestination(in)
		got := dst.String() + " " + string(proto)
		if err != nil {
			got = "error"
		}
		if got != want {
			t.Errorf("ParseDestination(%q) = %q, want %q", in, got, want)
		}
	}
	if dst, _, _ := ParseDestination("[::ffff:10.0.0.1]:80"); dst != netip.MustParseAddrPort("10.0.0.1:80") {
		t.Errorf("mapped address not unmapped: %v", dst)
	}
}

// weighingInspector reports the dataplane's own weights.
type weighingInspector struct {
	fakeInspector
	weights map[netip.AddrPort]int
}

func (w *weighingInspector) Weights(*dataplane.State, dataplane.ServicePortName, netip.AddrPort) (map[netip.AddrPort]int, bool) {
	return w.weights, w.weights != nil
}

// When the dataplane says which backends it uses, the trace shows its
// choice.
func TestTraceDataplaneWeights(t *testing.T) {
	st := testState()
	st.Endpoints[shopAPI] = st.Endpoints[shopAPI][1:] // node-b's only
	insp := &weighingInspector{fakeInspector: fakeInspector{kind: KindIPVS}, weights: map[netip.AddrPort]int{ap("10.244.2.5:9000"): 1}}
	m := TraceFrom(st, ap("203.0.113.7:443"), dataplane.TCP, insp).Matches[0]
	if m.Result != "drop" || len(m.Backends) != 1 || !m.Backends[0].Chosen || strings.Contains(strings.Join(m.Reasons, "\n"), "differs") {
		t.Errorf("fallback to the Cluster endpoints, as the dataplane does: %+v", m)
	}
	// A dataplane choosing otherwise is shown, with a note.
	insp.weights = map[netip.AddrPort]int{ap("10.244.2.5:9000"): 0}
	m = TraceFrom(st, ap("203.0.113.7:443"), dataplane.TCP, insp).Matches[0]
	if len(m.Backends) != 1 || m.Backends[0].Chosen || m.Backends[0].Why != "weight 0 in the dataplane" ||
		!strings.Contains(strings.Join(m.Reasons, "\n"), "differs") {
		t.Errorf("dataplane's weight 0: %+v", m)
	}

	insp.weights = map[netip.AddrPort]int{ap("10.244.1.2:8080"): 1, ap("10.244.2.3:8080"): 0}
	m = TraceFrom(testState(), ap("10.96.0.10:80"), dataplane.TCP, insp).Matches[0]
	for _, b := range m.Backends {
		want := map[string]string{"10.244.1.2:8080": "", "10.244.1.9:8080": "terminating (ready endpoints exist)", "10.244.2.3:8080": "weight 0 in the dataplane"}[b.Address]
		if b.Why != want || b.Chosen != (want == "") {
			t.Errorf("backend %s: chosen=%v why=%q, want why %q", b.Address, b.Chosen, b.Why, want)
		}
	}
}
