package dataplane

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

// ep builds an endpoint 10.0.0.<n>:80 from a compact spec:
// conditions "r" ready, "st" serving+terminating, "t" terminating only,
// "n" not ready; node; zone hints; node hints.
func ep(n byte, cond, node string, zoneHints, nodeHints string) Endpoint {
	e := Endpoint{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, n}), 80), NodeName: node}
	switch cond {
	case "r":
		e.Ready, e.Serving = true, true
	case "st":
		e.Serving, e.Terminating = true, true
	case "t":
		e.Terminating = true
	}
	if zoneHints != "" {
		e.ZoneHints = strings.Split(zoneHints, ",")
	}
	if nodeHints != "" {
		e.NodeHints = strings.Split(nodeHints, ",")
	}
	return e
}

func ips(eps []Endpoint) string {
	if eps == nil {
		return "nil"
	}
	var s []string
	for _, e := range eps {
		s = append(s, fmt.Sprint(e.Addr.Addr().As4()[3]))
	}
	return "[" + strings.Join(s, " ") + "]"
}

func TestCategorizeEndpoints(t *testing.T) {
	clusterIP := &ServicePort{}
	nodePort := &ServicePort{NodePort: 30000}
	itpLocal := &ServicePort{InternalPolicyLocal: true}
	etpLocal := &ServicePort{NodePort: 30000, ExternalPolicyLocal: true}
	bothLocal := &ServicePort{NodePort: 30000, ExternalPolicyLocal: true, InternalPolicyLocal: true}
	etpLocalNoWayIn := &ServicePort{ExternalPolicyLocal: true} // ClusterIP only: eTP has no effect

	for _, tc := range []struct {
		name                  string
		sp                    *ServicePort
		zone                  string
		eps                   []Endpoint
		cluster, local, reach string
		hasAny                bool
		mode                  string
	}{
		{name: "no endpoints", sp: clusterIP, cluster: "nil", local: "nil", reach: "nil"},
		{name: "ready only", sp: clusterIP,
			eps:     []Endpoint{ep(1, "r", "a", "", ""), ep(2, "n", "b", "", ""), ep(3, "st", "b", "", "")},
			cluster: "[1]", local: "nil", reach: "[1]", hasAny: true},
		{name: "no ready: serving terminating fallback", sp: clusterIP,
			eps:     []Endpoint{ep(1, "n", "a", "", ""), ep(2, "st", "b", "", ""), ep(3, "t", "b", "", "")},
			cluster: "[2]", local: "nil", reach: "[2]", hasAny: true},
		{name: "nothing usable", sp: clusterIP,
			eps:     []Endpoint{ep(1, "n", "a", "", ""), ep(3, "t", "b", "", "")},
			cluster: "[]", local: "nil", reach: "[]"},
		{name: "zone hints for our zone", sp: clusterIP, zone: "z1",
			eps:     []Endpoint{ep(1, "r", "a", "z1", ""), ep(2, "r", "b", "z2", ""), ep(3, "r", "c", "z1", "")},
			cluster: "[1 3]", local: "nil", reach: "[1 3]", hasAny: true, mode: TopologyPreferSameZone},
		{name: "zone hints, one ready endpoint lacks hints: ignored", sp: clusterIP, zone: "z1",
			eps:     []Endpoint{ep(1, "r", "a", "z1", ""), ep(2, "r", "b", "", "")},
			cluster: "[1 2]", local: "nil", reach: "[1 2]", hasAny: true},
		{name: "zone hints, none for our zone: ignored", sp: clusterIP, zone: "z3",
			eps:     []Endpoint{ep(1, "r", "a", "z1", ""), ep(2, "r", "b", "z2", "")},
			cluster: "[1 2]", local: "nil", reach: "[1 2]", hasAny: true},
		{name: "zone hints, node zone unknown: ignored", sp: clusterIP, zone: "",
			eps:     []Endpoint{ep(1, "r", "a", "z1", ""), ep(2, "r", "b", "z2", "")},
			cluster: "[1 2]", local: "nil", reach: "[1 2]", hasAny: true},
		{name: "not-ready endpoints without hints do not disable topology", sp: clusterIP, zone: "z1",
			eps:     []Endpoint{ep(1, "r", "a", "z1", ""), ep(2, "r", "b", "z2", ""), ep(3, "n", "c", "", "")},
			cluster: "[1]", local: "nil", reach: "[1]", hasAny: true, mode: TopologyPreferSameZone},
		{name: "node hints for this node win over zone hints", sp: clusterIP, zone: "z1",
			eps:     []Endpoint{ep(1, "r", "a", "z1", "a"), ep(2, "r", "b", "z1", "b")},
			cluster: "[1]", local: "nil", reach: "[1]", hasAny: true, mode: TopologyPreferSameNode},
		{name: "node hints not for this node: zone hints used", sp: clusterIP, zone: "z1",
			eps:     []Endpoint{ep(1, "r", "b", "z1", "b"), ep(2, "r", "c", "z2", "c")},
			cluster: "[1]", local: "nil", reach: "[1]", hasAny: true, mode: TopologyPreferSameZone},
		{name: "iTP Local: local ready only", sp: itpLocal,
			eps:     []Endpoint{ep(1, "r", "a", "", ""), ep(2, "r", "b", "", ""), ep(3, "st", "a", "", "")},
			cluster: "nil", local: "[1]", reach: "[1]", hasAny: true},
		{name: "iTP Local: no local ready, local serving terminating", sp: itpLocal,
			eps:     []Endpoint{ep(1, "st", "a", "", ""), ep(2, "r", "b", "", "")},
			cluster: "nil", local: "[1]", reach: "[1]", hasAny: true},
		{name: "iTP Local: nothing local, but endpoints elsewhere (drop, not reject)", sp: itpLocal,
			eps:     []Endpoint{ep(2, "r", "b", "", "")},
			cluster: "nil", local: "nil", reach: "nil", hasAny: true},
		{name: "eTP Local with NodePort: cluster for internal, local for external", sp: etpLocal,
			eps:     []Endpoint{ep(1, "r", "a", "", ""), ep(2, "r", "b", "", "")},
			cluster: "[1 2]", local: "[1]", reach: "[1 2]", hasAny: true},
		{name: "eTP Local: local terminating fallback merged into reachable", sp: etpLocal,
			eps:     []Endpoint{ep(1, "st", "a", "", ""), ep(2, "r", "b", "", "")},
			cluster: "[2]", local: "[1]", reach: "[1 2]", hasAny: true},
		{name: "eTP Local + topology: local endpoint outside the hinted zone stays reachable", sp: etpLocal, zone: "z2",
			eps:     []Endpoint{ep(1, "r", "a", "z1", ""), ep(2, "r", "b", "z2", "")},
			cluster: "[2]", local: "[1]", reach: "[1 2]", hasAny: true, mode: TopologyPreferSameZone},
		{name: "both Local and externally accessible", sp: bothLocal,
			eps:     []Endpoint{ep(1, "r", "a", "", ""), ep(2, "r", "b", "", "")},
			cluster: "[1 2]", local: "[1]", reach: "[1 2]", hasAny: true},
		{name: "eTP Local without a way in behaves as Cluster", sp: etpLocalNoWayIn,
			eps:     []Endpoint{ep(1, "r", "a", "", ""), ep(2, "r", "b", "", "")},
			cluster: "[1 2]", local: "nil", reach: "[1 2]", hasAny: true},
		{name: "NodePort Cluster policy", sp: nodePort,
			eps:     []Endpoint{ep(1, "r", "a", "", ""), ep(2, "r", "", "", "")},
			cluster: "[1 2]", local: "nil", reach: "[1 2]", hasAny: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := CategorizeEndpoints(tc.sp, tc.eps, "a", tc.zone)
			if ips(got.Cluster) != tc.cluster || ips(got.Local) != tc.local || ips(got.AllReachable) != tc.reach ||
				got.HasAny != tc.hasAny || got.TopologyMode != tc.mode {
				t.Errorf("cluster %s local %s reachable %s hasAny %v mode %q\nwant    %s local %s reachable %s hasAny %v mode %q",
					ips(got.Cluster), ips(got.Local), ips(got.AllReachable), got.HasAny, got.TopologyMode,
					tc.cluster, tc.local, tc.reach, tc.hasAny, tc.mode)
			}
		})
	}
}

func TestProtocolNumbers(t *testing.T) {
	for _, tc := range []struct {
		p Protocol
		n uint8
	}{{TCP, 6}, {UDP, 17}, {SCTP, 132}} {
		if n, ok := tc.p.Number(); !ok || n != tc.n {
			t.Errorf("%s.Number() = %d, %v; want %d", tc.p, n, ok, tc.n)
		}
		if p, ok := ProtocolFromNumber(tc.n); !ok || p != tc.p {
			t.Errorf("ProtocolFromNumber(%d) = %q, %v; want %s", tc.n, p, ok, tc.p)
		}
	}
	if _, ok := Protocol("ICMP").Number(); ok {
		t.Error("ICMP has a number in the model")
	}
	if p, ok := ProtocolFromNumber(1); ok {
		t.Errorf("ProtocolFromNumber(1) = %q", p)
	}
}
