package conntrack

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/switchyard/switchyard/dataplane"
)

const thisNode = "node-a"

// svc is one Service port and its endpoints, for building States.
type svc struct {
	sp  *dataplane.ServicePort
	eps []dataplane.Endpoint
}

func state(svcs ...svc) *dataplane.State {
	st := dataplane.NewState()
	st.NodeName, st.NodeZone = thisNode, "zone-1"
	for _, s := range svcs {
		st.Services[s.sp.Name] = s.sp
		if s.eps != nil {
			eps := slices.Clone(s.eps)
			slices.SortFunc(eps, dataplane.CompareEndpoints)
			st.Endpoints[s.sp.Name] = eps
		}
	}
	return st
}

// port makes a Service port "ns/name:proto" on clusterIP:53 with opts applied.
func port(name string, proto dataplane.Protocol, clusterIP string, opts ...func(*dataplane.ServicePort)) *dataplane.ServicePort {
	sp := &dataplane.ServicePort{
		Name: dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: "ns", Name: name}, Protocol: proto},
		Port: 53,
	}
	for _, ip := range strings.Fields(clusterIP) {
		sp.ClusterIPs = append(sp.ClusterIPs, netip.MustParseAddr(ip))
	}
	for _, o := range opts {
		o(sp)
	}
	return sp
}

func nodePort(p uint16) func(*dataplane.ServicePort) {
	return func(sp *dataplane.ServicePort) { sp.NodePort = p }
}
func externalIP(ip string) func(*dataplane.ServicePort) {
	return func(sp *dataplane.ServicePort) { sp.ExternalIPs = append(sp.ExternalIPs, netip.MustParseAddr(ip)) }
}
func lbIP(ip string) func(*dataplane.ServicePort) {
	return func(sp *dataplane.ServicePort) {
		sp.LoadBalancerIPs = append(sp.LoadBalancerIPs, netip.MustParseAddr(ip))
	}
}
func svcPort(p uint16) func(*dataplane.ServicePort) {
	return func(sp *dataplane.ServicePort) { sp.Port = p }
}
func etpLocal(sp *dataplane.ServicePort) { sp.ExternalPolicyLocal = true }
func itpLocal(sp *dataplane.ServicePort) { sp.InternalPolicyLocal = true }

// ep is a ready endpoint on node-b unless opts say otherwise.
func ep(addr string, opts ...func(*dataplane.Endpoint)) dataplane.Endpoint {
	e := dataplane.Endpoint{Addr: netip.MustParseAddrPort(addr), Ready: true, Serving: true, NodeName: "node-b"}
	for _, o := range opts {
		o(&e)
	}
	return e
}
func local(e *dataplane.Endpoint)    { e.NodeName = thisNode }
func notReady(e *dataplane.Endpoint) { e.Ready, e.Serving = false, false }
func terminating(e *dataplane.Endpoint) {
	e.Ready, e.Serving, e.Terminating = false, true, true
}

// flt parses "udp DST PORT [REPLYSRC]"; DST "*" means any address.
func flt(t *testing.T, s string) Filter {
	t.Helper()
	f := strings.Fields(s)
	if len(f) < 3 {
		t.Fatalf("bad filter %q", s)
	}
	out := Filter{Protocol: dataplane.Protocol(strings.ToUpper(f[0]))}
	if f[1] != "*" {
		out.OrigDst = netip.MustParseAddr(f[1])
	}
	p, ok := parsePort(f[2])
	if !ok {
		t.Fatalf("bad port in %q", s)
	}
	out.OrigDstPort = p
	if len(f) > 3 {
		out.ReplySrc = netip.MustParseAddr(f[3])
	}
	return out
}

func parsePort(s string) (uint16, bool) {
	ap, err := netip.ParseAddrPort("0.0.0.0:" + s)
	return ap.Port(), err == nil
}

func TestStaleFlows(t *testing.T) {
	nodeIPs := []netip.Addr{netip.MustParseAddr("192.168.0.10"), netip.MustParseAddr("fd00::10")}
	const (
		e1 = "10.244.1.1:5353"
		e2 = "10.244.1.2:5353"
		e3 = "10.244.1.3:5353"
	)
	for _, tc := range []struct {
		name      string
		prev, cur *dataplane.State
		nodeIPs   []netip.Addr
		want      []string
	}{{
		name: "unchanged",
		prev: state(svc{port("dns", dataplane.UDP, "10.96.0.10"), []dataplane.Endpoint{ep(e1), ep(e2)}}),
		cur:  state(svc{port("dns", dataplane.UDP, "10.96.0.10"), []dataplane.Endpoint{ep(e1), ep(e2)}}),
	}, {
		name: "first sync: every frontend with endpoints",
		prev: nil,
		cur: state(
			svc{port("dns", dataplane.UDP, "10.96.0.10"), []dataplane.Endpoint{ep(e1)}},
			svc{port("empty", dataplane.UDP, "10.96.0.11"), nil},
		),
		want: []string{"udp 10.96.0.10 53"},
	}, {
		name: "endpoint removed",
		prev: state(svc{port("dns", dataplane.UDP, "10.96.0.10"), []dataplane.Endpoint{ep(e1), ep(e2)}}),
		cur:  state(svc{port("dns", dataplane.UDP, "10.96.0.10"), []dataplane.Endpoint{ep(e2)}}),
		want: []string{"udp 10.96.0.10 53 10.244.1.1"},
	}, {
		name: "endpoint replaced: only the old one is stale",
		prev: state(svc{port("dns", dataplane.UDP, "10.96.0.10"), []dataplane.Endpoint{ep(e1)}}),
		cur:  state(svc{port("dns", dataplane.UDP, "10.96.0.10"), []dataplane.Endpoint{ep(e3)}}),
		want: []string{"udp 10.96.0.10 53 10.244.1.1"},
	}, {
		name: "endpoint port changed, IP kept: flows to the IP stay",
		prev: state(svc{port("dns", dataplane.UDP, "10.96.0.10"), []dataplane.Endpoint{ep(e1)}}),
		cur:  state(svc{port("dns", dataplane.UDP, "10.96.0.10"), []dataplane.Endpoint{ep("10.244.1.1:9999")}}),
	}, {
		name: "last endpoint removed",
		prev: state(svc{port("dns", dataplane.UDP, "10.96.0.10"), []dataplane.Endpoint{ep(e1)}}),
		cur:  state(svc{port("dns", dataplane.UDP, "10.96.0.10"), nil}),
		want: []string{"udp 10.96.0.10 53 10.244.1.1"},
	}, {
		name: "endpoint removed: every frontend, NodePort on each node IP of the endpoint's family",
		prev: state(svc{port("dns", dataplane.UDP, "10.96.0.10", nodePort(30053), externalIP("203.0.113.5"), lbIP("198.51.100.7")),
			[]dataplane.Endpoint{ep(e1), ep(e2)}}),
		cur: state(svc{port("dns", dataplane.UDP, "10.96.0.10", nodePort(30053), externalIP("203.0.113.5"), lbIP("198.51.100.7")),
			[]dataplane.Endpoint{ep(e2)}}),
		nodeIPs: nodeIPs,
		want: []string{
			"udp 10.96.0.10 53 10.244.1.1",
			"udp 192.168.0.10 30053 10.244.1.1",
			"udp 198.51.100.7 53 10.244.1.1",
			"udp 203.0.113.5 53 10.244.1.1",
		},
	}, {
		name:    "endpoint removed, node IPs unknown: NodePort on any address",
		prev:    state(svc{port("dns", dataplane.UDP, "10.96.0.10", nodePort(30053)), []dataplane.Endpoint{ep(e1), ep(e2)}}),
		cur:     state(svc{port("dns", dataplane.UDP, "10.96.0.10", nodePort(30053)), []dataplane.Endpoint{ep(e2)}}),
		nodeIPs: nil,
		want:    []string{"udp * 30053 10.244.1.1", "udp 10.96.0.10 53 10.244.1.1"},
	}, {
		name: "endpoint not ready any more",
		prev: state(svc{port("dns", dataplane.UDP, "10.96.0.10"), []dataplane.Endpoint{ep(e1), ep(e2)}}),
		cur:  state(svc{port("dns", dataplane.UDP, "10.96.0.10"), []dataplane.Endpoint{ep(e1, notReady), ep(e2)}}),
		want: []string{"udp 10.96.0.10 53 10.244.1.1"},
	}, {
		name: "endpoint terminating while others are ready",
		prev: state(svc{port("dns", dataplane.UDP, "10.96.0.10"), []dataplane.Endpoint{ep(e1), ep(e2)}}),
		cur:  state(svc{port("dns", dataplane.UDP, "10.96.0.10"), []dataplane.Endpoint{ep(e1, terminating), ep(e2)}}),
		want: []string{"udp 10.96.0.10 53 10.244.1.1"},
	}, {
		name: "all terminating: fallback keeps them reachable",
		prev: state(svc{port("dns", dataplane.UDP, "10.96.0.10"), []dataplane.Endpoint{ep(e1), ep(e2)}}),
		cur:  state(svc{port("dns", dataplane.UDP, "10.96.0.10"), []dataplane.Endpoint{ep(e1, terminating), ep(e2, terminating)}}),
	}, {
		name: "ready endpoint back: terminating fallback ones become stale",
		prev: state(svc{port("dns", dataplane.UDP, "10.96.0.10"), []dataplane.Endpoint{ep(e1, terminating), ep(e2, terminating)}}),
		cur: state(svc{port("dns", dataplane.UDP, "10.96.0.10"),
			[]dataplane.Endpoint{ep(e1, terminating), ep(e2, terminating), ep(e3)}}),
		want: []string{"udp 10.96.0.10 53 10.244.1.1", "udp 10.96.0.10 53 10.244.1.2"},
	}, {
		name: "first endpoint: every frontend",
		prev: state(svc{port("dns", dataplane.UDP, "10.96.0.10 fd00:96::10", nodePort(30053), externalIP("203.0.113.5")), nil}),
		cur: state(svc{port("dns", dataplane.UDP, "10.96.0.10 fd00:96::10", nodePort(30053), externalIP("203.0.113.5")),
			[]dataplane.Endpoint{ep(e1)}}),
		nodeIPs: nodeIPs,
		want: []string{
			"udp 10.96.0.10 53", "udp 192.168.0.10 30053", "udp 203.0.113.5 53",
			"udp fd00::10 30053", "udp fd00:96::10 53",
		},
	}, {
		name: "not-ready endpoint becomes ready: newly usable",
		prev: state(svc{port("dns", dataplane.UDP, "10.96.0.10"), []dataplane.Endpoint{ep(e1, notReady)}}),
		cur:  state(svc{port("dns", dataplane.UDP, "10.96.0.10"), []dataplane.Endpoint{ep(e1)}}),
		want: []string{"udp 10.96.0.10 53"},
	}, {
		name: "TCP ignored",
		prev: state(svc{port("web", dataplane.TCP, "10.96.0.20", nodePort(30080)), []dataplane.Endpoint{ep(e1)}}),
		cur:  state(svc{port("web", dataplane.TCP, "10.96.0.20", nodePort(30080)), []dataplane.Endpoint{ep(e2)}}),
	}, {
		name: "TCP ignored when gaining endpoints or deleted",
		prev: state(svc{port("web", dataplane.TCP, "10.96.0.20"), nil}, svc{port("old", dataplane.TCP, "10.96.0.21"), []dataplane.Endpoint{ep(e1)}}),
		cur:  state(svc{port("web", dataplane.TCP, "10.96.0.20"), []dataplane.Endpoint{ep(e1)}}),
	}, {
		name: "SCTP like UDP",
		prev: state(svc{port("sig", dataplane.SCTP, "10.96.0.30"), []dataplane.Endpoint{ep(e1), ep(e2)}}),
		cur:  state(svc{port("sig", dataplane.SCTP, "10.96.0.30"), []dataplane.Endpoint{ep(e2)}}),
		want: []string{"sctp 10.96.0.30 53 10.244.1.1"},
	}, {
		name: "same IP and port on UDP and TCP: only UDP",
		prev: state(
			svc{port("dns", dataplane.UDP, "10.96.0.10"), []dataplane.Endpoint{ep(e1), ep(e2)}},
			svc{port("dns", dataplane.TCP, "10.96.0.10"), []dataplane.Endpoint{ep(e1), ep(e2)}},
		),
		cur: state(
			svc{port("dns", dataplane.UDP, "10.96.0.10"), []dataplane.Endpoint{ep(e2)}},
			svc{port("dns", dataplane.TCP, "10.96.0.10"), []dataplane.Endpoint{ep(e2)}},
		),
		want: []string{"udp 10.96.0.10 53 10.244.1.1"},
	}, {
		name:    "Service deleted: all flows to its frontends",
		prev:    state(svc{port("dns", dataplane.UDP, "10.96.0.10", nodePort(30053)), []dataplane.Endpoint{ep(e1)}}),
		cur:     state(),
		nodeIPs: nodeIPs[:1],
		want:    []string{"udp 10.96.0.10 53", "udp 192.168.0.10 30053"},
	}, {
		name: "Service port changed: old and new frontend",
		prev: state(svc{port("dns", dataplane.UDP, "10.96.0.10"), []dataplane.Endpoint{ep(e1)}}),
		cur:  state(svc{port("dns", dataplane.UDP, "10.96.0.10", svcPort(5353)), []dataplane.Endpoint{ep(e1)}}),
		want: []string{"udp 10.96.0.10 53", "udp 10.96.0.10 5353"},
	}, {
		name: "external IP replaced, endpoint removed at the same time",
		prev: state(svc{port("dns", dataplane.UDP, "10.96.0.10", externalIP("203.0.113.5")), []dataplane.Endpoint{ep(e1), ep(e2)}}),
		cur:  state(svc{port("dns", dataplane.UDP, "10.96.0.10", externalIP("203.0.113.6")), []dataplane.Endpoint{ep(e2)}}),
		want: []string{"udp 10.96.0.10 53 10.244.1.1", "udp 203.0.113.5 53", "udp 203.0.113.6 53"},
	}, {
		name: "Service recreated with the same IP: old endpoints stale",
		prev: state(svc{port("a", dataplane.UDP, "10.96.0.10"), []dataplane.Endpoint{ep(e1)}}),
		cur:  state(svc{port("b", dataplane.UDP, "10.96.0.10"), []dataplane.Endpoint{ep(e2)}}),
		want: []string{"udp 10.96.0.10 53 10.244.1.1"},
	}, {
		name: "dual stack: removed IPv6 endpoint only on IPv6 frontends",
		prev: state(svc{port("dns", dataplane.UDP, "10.96.0.10 fd00:96::10", nodePort(30053)),
			[]dataplane.Endpoint{ep(e1), ep("[fd00:244::1]:5353"), ep("[fd00:244::2]:5353")}}),
		cur: state(svc{port("dns", dataplane.UDP, "10.96.0.10 fd00:96::10", nodePort(30053)),
			[]dataplane.Endpoint{ep(e1), ep("[fd00:244::2]:5353")}}),
		nodeIPs: nodeIPs,
		want:    []string{"udp fd00::10 30053 fd00:244::1", "udp fd00:96::10 53 fd00:244::1"},
	}, {
		name: "externalTrafficPolicy Local: first local endpoint makes external frontends usable",
		prev: state(svc{port("dns", dataplane.UDP, "10.96.0.10", nodePort(30053), lbIP("198.51.100.7"), etpLocal),
			[]dataplane.Endpoint{ep(e1)}}),
		cur: state(svc{port("dns", dataplane.UDP, "10.96.0.10", nodePort(30053), lbIP("198.51.100.7"), etpLocal),
			[]dataplane.Endpoint{ep(e1), ep(e2, local)}}),
		nodeIPs: nodeIPs[:1],
		want:    []string{"udp 192.168.0.10 30053", "udp 198.51.100.7 53"},
	}, {
		name: "externalTrafficPolicy Local: last local endpoint removed",
		prev: state(svc{port("dns", dataplane.UDP, "10.96.0.10", nodePort(30053), etpLocal),
			[]dataplane.Endpoint{ep(e1), ep(e2, local)}}),
		cur: state(svc{port("dns", dataplane.UDP, "10.96.0.10", nodePort(30053), etpLocal),
			[]dataplane.Endpoint{ep(e1)}}),
		nodeIPs: nodeIPs[:1],
		want:    []string{"udp 10.96.0.10 53 10.244.1.2", "udp 192.168.0.10 30053 10.244.1.2"},
	}, {
		name: "internalTrafficPolicy Local: remote endpoints were never reachable",
		prev: state(svc{port("dns", dataplane.UDP, "10.96.0.10", itpLocal), []dataplane.Endpoint{ep(e1), ep(e2)}}),
		cur:  state(svc{port("dns", dataplane.UDP, "10.96.0.10", itpLocal), []dataplane.Endpoint{ep(e2)}}),
	}, {
		name: "internalTrafficPolicy Local: first local endpoint",
		prev: state(svc{port("dns", dataplane.UDP, "10.96.0.10", itpLocal), []dataplane.Endpoint{ep(e1)}}),
		cur:  state(svc{port("dns", dataplane.UDP, "10.96.0.10", itpLocal), []dataplane.Endpoint{ep(e1), ep(e3, local)}}),
		want: []string{"udp 10.96.0.10 53"},
	}, {
		name: "internalTrafficPolicy Local: local endpoint removed",
		prev: state(svc{port("dns", dataplane.UDP, "10.96.0.10", itpLocal), []dataplane.Endpoint{ep(e1), ep(e2, local), ep(e3, local)}}),
		cur:  state(svc{port("dns", dataplane.UDP, "10.96.0.10", itpLocal), []dataplane.Endpoint{ep(e1), ep(e3, local)}}),
		want: []string{"udp 10.96.0.10 53 10.244.1.2"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			var want []Filter
			for _, s := range tc.want {
				want = append(want, flt(t, s))
			}
			got := StaleFlows(tc.prev, tc.cur, tc.nodeIPs)
			if !slices.Equal(got, want) {
				t.Errorf("StaleFlows:\n got %s\nwant %s", filterList(got), filterList(want))
			}
			if err := ValidateFilters(got); err != nil {
				t.Errorf("StaleFlows returned filters the kernel side rejects: %v", err)
			}
			// Deterministic, and pure: a second run gives the same.
			if again := StaleFlows(tc.prev, tc.cur, tc.nodeIPs); !slices.Equal(again, got) {
				t.Errorf("second run differs:\n got %s\nthen %s", filterList(got), filterList(again))
			}
		})
	}
}

func filterList(fs []Filter) string {
	if len(fs) == 0 {
		return "(none)"
	}
	s := make([]string, len(fs))
	for i, f := range fs {
		s[i] = f.String()
	}
	return "[" + strings.Join(s, "; ") + "]"
}

func TestFilterValidateAndMatch(t *testing.T) {
	v4 := netip.MustParseAddr("10.96.0.10")
	v6 := netip.MustParseAddr("fd00::10")
	for _, tc := range []struct {
		f     Filter
		valid bool
	}{
		{Filter{Protocol: dataplane.UDP, OrigDst: v4, OrigDstPort: 53}, true},
		{Filter{Protocol: dataplane.UDP, OrigDstPort: 30053, ReplySrc: v6}, true},
		{Filter{Protocol: dataplane.SCTP, ReplySrc: v4}, true},
		{Filter{Protocol: dataplane.UDP}, false},                                                  // matches everything
		{Filter{Protocol: "ICMP", OrigDst: v4}, false},                                            // unknown protocol
		{Filter{OrigDst: v4}, false},                                                              // no protocol
		{Filter{Protocol: dataplane.UDP, OrigDst: v4, ReplySrc: v6}, false},                       // families mixed
		{Filter{Protocol: dataplane.UDP, OrigDst: netip.MustParseAddr("::ffff:10.0.0.1")}, false}, // mapped
	} {
		if err := tc.f.Validate(); (err == nil) != tc.valid {
			t.Errorf("%+v: Validate() = %v, want valid=%v", tc.f, err, tc.valid)
		}
	}
	ok := Filter{Protocol: dataplane.UDP, OrigDst: v4, OrigDstPort: 53}
	if err := ValidateFilters([]Filter{ok, ok}); err == nil {
		t.Errorf("duplicate filters accepted")
	}

	fl := Flow{
		Protocol: dataplane.UDP,
		Orig:     Tuple{Src: netip.MustParseAddrPort("10.0.0.2:40000"), Dst: netip.MustParseAddrPort("10.96.0.10:53")},
		Reply:    Tuple{Src: netip.MustParseAddrPort("10.244.1.1:5353"), Dst: netip.MustParseAddrPort("10.0.0.2:40000")},
	}
	for _, tc := range []struct {
		f    string
		want bool
	}{
		{"udp 10.96.0.10 53", true},
		{"udp 10.96.0.10 53 10.244.1.1", true},
		{"udp * 53 10.244.1.1", true},
		{"udp 10.96.0.10 53 10.244.1.2", false},
		{"udp 10.96.0.11 53", false},
		{"udp 10.96.0.10 54", false},
		{"tcp 10.96.0.10 53", false},
	} {
		if got := flt(t, tc.f).Matches(fl); got != tc.want {
			t.Errorf("%q.Matches(%v) = %v, want %v", tc.f, fl, got, tc.want)
		}
	}
}
