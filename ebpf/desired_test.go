package ebpf

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/dataplane"
)

func TestDesiredGroups(t *testing.T) {
	ep := func(addr, node string, ready bool) dataplane.Endpoint {
		return dataplane.Endpoint{Addr: netip.MustParseAddrPort(addr), Ready: ready, Serving: ready, NodeName: node}
	}
	name := func(n string, p dataplane.Protocol) dataplane.ServicePortName {
		return dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: "ns", Name: n}, Protocol: p}
	}
	st := dataplane.NewState()
	st.NodeName = "a"
	st.NodeIPs = []netip.Addr{netip.MustParseAddr("192.168.0.1")}
	add := func(sp *dataplane.ServicePort, eps ...dataplane.Endpoint) {
		st.Services[sp.Name] = sp
		st.Endpoints[sp.Name] = eps
	}
	add(&dataplane.ServicePort{Name: name("plain", dataplane.TCP), Port: 80, NodePort: 30080,
		ClusterIPs:  []netip.Addr{netip.MustParseAddr("10.96.0.1"), netip.MustParseAddr("fd00::1")},
		ExternalIPs: []netip.Addr{netip.MustParseAddr("192.0.2.1")}, SessionAffinityTimeout: 1500 * time.Millisecond},
		ep("10.1.0.1:8080", "a", true), ep("10.1.0.2:8080", "b", true), ep("10.1.0.3:8080", "b", false), ep("[fd01::1]:8080", "b", true))
	add(&dataplane.ServicePort{Name: name("itp", dataplane.TCP), Port: 80, InternalPolicyLocal: true,
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.2")}, LoadBalancerIPs: []netip.Addr{netip.MustParseAddr("198.51.100.1")}},
		ep("10.1.0.1:8080", "a", true), ep("10.1.0.2:8080", "b", true))
	add(&dataplane.ServicePort{Name: name("etp", dataplane.UDP), Port: 53, ExternalPolicyLocal: true, NodePort: 30053,
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.3")}},
		ep("10.1.0.2:53", "b", true))
	// A source-restricted LB IP stays with the packet dataplane's
	// firewall; its ClusterIP is translated.
	add(&dataplane.ServicePort{Name: name("ranges", dataplane.TCP), Port: 443,
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.5")}, LoadBalancerIPs: []netip.Addr{netip.MustParseAddr("198.51.100.2")},
		LoadBalancerSourceRanges: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}},
		ep("10.1.0.2:443", "b", true))
	add(&dataplane.ServicePort{Name: name("sctp", dataplane.SCTP), Port: 9,
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.4")}}, ep("10.1.0.2:9", "b", true))

	d := desired(st, []netip.Addr{netip.MustParseAddr("10.0.0.5")})

	type want struct {
		frontends []string
		slots     []string
		affinity  uint32
	}
	fe := func(ap string, proto uint8, kind uint8) string {
		return l4From(netip.MustParseAddrPort(ap), proto, kind).String()
	}
	wants := map[groupKey]want{
		// Not-ready endpoints are not chosen; affinity rounds up to
		// whole seconds; the NodePort key has the family's unspecified
		// address.
		{name: name("plain", dataplane.TCP)}: {
			frontends: []string{fe("10.96.0.1:80", 6, 0), fe("192.0.2.1:80", 6, 0), fe("0.0.0.0:30080", 6, 1)},
			slots:     []string{"10.1.0.1:8080", "10.1.0.2:8080"}, affinity: 2},
		{name: name("plain", dataplane.TCP), v6: true}: {
			frontends: []string{fe("[fd00::1]:80", 6, 0), fe("[::]:30080", 6, 1)},
			slots:     []string{"[fd01::1]:8080"}, affinity: 2},
		// internalTrafficPolicy Local: the ClusterIP gets the local
		// endpoint only, the LB IP (the node's own traffic) all of them.
		{name: name("itp", dataplane.TCP)}: {
			frontends: []string{fe("10.96.0.2:80", 6, 0)}, slots: []string{"10.1.0.1:8080"}},
		{name: name("itp", dataplane.TCP), external: true}: {
			frontends: []string{fe("198.51.100.1:80", 6, 0)}, slots: []string{"10.1.0.1:8080", "10.1.0.2:8080"}},
		// externalTrafficPolicy Local without a local endpoint: traffic
		// from this node still uses the Cluster endpoints.
		{name: name("ranges", dataplane.TCP)}: {
			frontends: []string{fe("10.96.0.5:443", 6, 0)}, slots: []string{"10.1.0.2:443"}},
		{name: name("etp", dataplane.UDP)}: {
			frontends: []string{fe("10.96.0.3:53", 17, 0), fe("0.0.0.0:30053", 17, 1)}, slots: []string{"10.1.0.2:53"}},
	}
	for k, w := range wants {
		g := d.groups[k]
		if g == nil {
			t.Errorf("%+v: missing", k)
			continue
		}
		var gotFe, gotSlots []string
		for _, f := range g.frontends {
			gotFe = append(gotFe, f.String())
		}
		for _, s := range g.slots {
			gotSlots = append(gotSlots, s.String())
		}
		if !slices.Equal(gotFe, w.frontends) || !slices.Equal(gotSlots, w.slots) || g.affinityTimeout != w.affinity {
			t.Errorf("%+v:\n got frontends %v slots %v affinity %d\nwant frontends %v slots %v affinity %d",
				k, gotFe, gotSlots, g.affinityTimeout, w.frontends, w.slots, w.affinity)
		}
	}
	if len(d.groups) != len(wants) {
		t.Errorf("%d groups, want %d (SCTP stays with the packet dataplane)", len(d.groups), len(wants))
	}
	// Every TCP endpoint is counted, chosen or not; UDP and SCTP are not.
	var counted []string
	for a := range d.backendAddrs {
		counted = append(counted, a.addrPort().String())
	}
	slices.Sort(counted)
	if want := []string{"10.1.0.1:8080", "10.1.0.2:443", "10.1.0.2:8080", "10.1.0.3:8080", "[fd01::1]:8080"}; !slices.Equal(counted, want) {
		t.Errorf("counted backends %v, want %v", counted, want)
	}
	if len(d.localAddrs) != 2 {
		t.Errorf("node addresses %v, want the listed one and the NodeIP", d.localAddrs)
	}
}

func TestSlotsForWeights(t *testing.T) {
	we := func(addr string, w int) dataplane.WeightedEndpoint {
		return dataplane.WeightedEndpoint{Endpoint: dataplane.Endpoint{Addr: netip.MustParseAddrPort(addr)}, Weight: w}
	}
	for _, tc := range []struct {
		in   []dataplane.WeightedEndpoint
		want []string
	}{
		{[]dataplane.WeightedEndpoint{we("10.0.0.1:80", 1), we("10.0.0.2:80", 1)}, []string{"10.0.0.1:80", "10.0.0.2:80"}},
		{[]dataplane.WeightedEndpoint{we("10.0.0.1:80", 2), we("10.0.0.2:80", 1)}, []string{"10.0.0.1:80", "10.0.0.1:80", "10.0.0.2:80"}},
		{[]dataplane.WeightedEndpoint{we("10.0.0.1:80", 100), we("10.0.0.2:80", 50), we("10.0.0.3:80", 0)}, []string{"10.0.0.1:80", "10.0.0.1:80", "10.0.0.2:80"}},
		{[]dataplane.WeightedEndpoint{we("10.0.0.1:80", 0)}, nil},
	} {
		var got []string
		for _, s := range slotsFor(tc.in) {
			got = append(got, s.String())
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("slotsFor(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

// The rebalancer's steering weights become slots: the port's new
// connections go where the weights say.
func TestDesiredSlotsFollowSteering(t *testing.T) {
	name := dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: "ns", Name: "web"}, Protocol: dataplane.TCP}
	st := dataplane.NewState()
	st.Services[name] = &dataplane.ServicePort{Name: name, Port: 80, ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.1")},
		Rebalance: &dataplane.RebalanceSpec{Tolerance: 0.1}}
	for _, a := range []string{"10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"} {
		st.Endpoints[name] = append(st.Endpoints[name], dataplane.Endpoint{Addr: netip.MustParseAddrPort(a), Ready: true, Serving: true})
	}
	slotsOf := func() string {
		var out []string
		for _, s := range desired(st, nil).groups[groupKey{name: name}].slots {
			out = append(out, s.String())
		}
		return strings.Join(out, " ")
	}
	if got := slotsOf(); got != "10.1.0.1:8080 10.1.0.2:8080 10.1.0.3:8080" {
		t.Errorf("unsteered slots %s", got)
	}
	st.Weights[name] = map[netip.AddrPort]int{netip.MustParseAddrPort("10.1.0.2:8080"): 46, netip.MustParseAddrPort("10.1.0.3:8080"): 23}
	if got := slotsOf(); got != "10.1.0.2:8080 10.1.0.2:8080 10.1.0.3:8080" {
		t.Errorf("steered slots %s, want 10.1.0.2 twice and 10.1.0.3 once", got)
	}
}
