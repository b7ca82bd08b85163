package ebpf

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/switchyard/switchyard/dataplane"
)

// l4 is an address:port of one protocol as the maps store it; tag is the
// frontend kind or the connection direction depending on the map.
type l4 struct {
	addr  [16]byte // IPv4 as IPv4-mapped
	port  uint16
	proto uint8
	tag   uint8
}

func l4From(ap netip.AddrPort, proto uint8, tag uint8) l4 {
	return l4{addr: ap.Addr().As16(), port: ap.Port(), proto: proto, tag: tag}
}

func (k l4) addrPort() netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom16(k.addr).Unmap(), k.port)
}

func (k l4) kernel() socklbL4addr {
	return socklbL4addr{Addr: k.addr, Port: k.port, Proto: k.proto, Tag: k.tag}
}

func l4FromKernel(k socklbL4addr) l4 {
	return l4{addr: k.Addr, port: k.Port, proto: k.Proto, tag: k.Tag}
}

// Frontend kinds and directions, as in socklb.c.
const (
	kindVIP      = 0
	kindNodePort = 1

	dirOut = 0
	dirIn  = 1

	flagAffinity  = 1
	flagLeastConn = 2
)

// groupKey names one BPF service: the frontends of one Service port in one
// family that share an endpoint list. With internalTrafficPolicy Local the
// ClusterIPs (Local endpoints) and the external frontends (Cluster
// endpoints, kube-proxy's short circuit for the node's own traffic) are
// two groups; otherwise one.
type groupKey struct {
	name     dataplane.ServicePortName
	v6       bool
	external bool
}

// group is the desired content of one BPF service.
type group struct {
	frontends []l4
	// slots lists backends in slot order, each repeated by its weight.
	slots           []netip.AddrPort
	affinityTimeout uint32 // seconds; 0 without ClientIP affinity
	// leastConn steers new connections to the less loaded of two random
	// backends (Services that opt into rebalancing).
	leastConn bool
	// maxConns is switchyard.io/max-connections-per-backend (TCP; 0:
	// none): connect skips backends with that many established
	// connections from this node and fails with ECONNREFUSED when all
	// have them.
	maxConns uint32
}

// desiredState is what the maps should hold for a State.
type desiredState struct {
	groups map[groupKey]*group
	// backendAddrs are the TCP endpoints sockops counts connections of:
	// every endpoint of the Service, chosen or not (terminating ones still
	// carry connections).
	backendAddrs map[l4]struct{}
	localAddrs   map[[16]byte]struct{}
}

// desired computes the maps' content: frontends of TCP and UDP Service
// ports (SCTP stays with the packet dataplane) on ClusterIPs, external
// IPs, load-balancer IPs and, on the node's addresses, NodePorts; backends
// from dataplane.CategorizeEndpoints as the other dataplanes choose them
// for traffic that starts on this node.
func desired(st *dataplane.State, nodeAddrs []netip.Addr) *desiredState {
	d := &desiredState{
		groups:       map[groupKey]*group{},
		backendAddrs: map[l4]struct{}{},
		localAddrs:   map[[16]byte]struct{}{},
	}
	for _, a := range nodeAddrs {
		d.localAddrs[a.Unmap().As16()] = struct{}{}
	}
	for _, a := range st.NodeIPs {
		d.localAddrs[a.Unmap().As16()] = struct{}{}
	}
	for name, sp := range st.Services {
		proto, ok := sp.Name.Protocol.Number()
		if !ok || proto == dataplane.IPProtoSCTP {
			continue
		}
		eps := st.Endpoints[name]
		if proto == dataplane.IPProtoTCP {
			for _, e := range eps {
				d.backendAddrs[l4From(e.Addr, proto, 0)] = struct{}{}
			}
		}
		for _, v6 := range []bool{false, true} {
			d.addFamily(st, sp, eps, proto, v6)
		}
	}
	return d
}

func (d *desiredState) addFamily(st *dataplane.State, sp *dataplane.ServicePort, eps []dataplane.Endpoint, proto uint8, v6 bool) {
	inFamily := func(a netip.Addr) bool { return a.Unmap().Is6() == v6 }
	var internal, external []l4
	for _, a := range sp.ClusterIPs {
		if inFamily(a) {
			internal = append(internal, l4From(netip.AddrPortFrom(a, sp.Port), proto, kindVIP))
		}
	}
	lbIPs := sp.LoadBalancerIPs
	if len(sp.LoadBalancerSourceRanges) > 0 {
		// The packet dataplane's firewall decides whether the node may
		// use a source-restricted LB IP (kube-proxy's allowFromNode):
		// leave those to it rather than bypass the check.
		lbIPs = nil
	}
	for _, group := range [][]netip.Addr{sp.ExternalIPs, lbIPs} {
		for _, a := range group {
			if inFamily(a) {
				external = append(external, l4From(netip.AddrPortFrom(a, sp.Port), proto, kindVIP))
			}
		}
	}
	// A NodePort only in a family with a ClusterIP, as the other
	// dataplanes; its key holds the family's unspecified address.
	if sp.NodePort != 0 && len(internal) > 0 {
		any := netip.IPv4Unspecified()
		if v6 {
			any = netip.IPv6Unspecified()
		}
		external = append(external, l4From(netip.AddrPortFrom(any, sp.NodePort), proto, kindNodePort))
	}
	if len(internal)+len(external) == 0 {
		return
	}
	var familyEps []dataplane.Endpoint
	for _, e := range eps {
		if inFamily(e.Addr.Addr()) {
			familyEps = append(familyEps, e)
		}
	}
	sets := dataplane.CategorizeEndpoints(sp, familyEps, st.NodeName, st.NodeZone)
	internalEps := sets.Cluster
	if sp.InternalPolicyLocal {
		internalEps = sets.Local
	}
	var affinity uint32
	if sp.SessionAffinityTimeout > 0 {
		affinity = uint32((sp.SessionAffinityTimeout + time.Second - 1) / time.Second)
	}
	add := func(external bool, frontends []l4, eps []dataplane.Endpoint) {
		if len(frontends) == 0 {
			return
		}
		g := &group{frontends: frontends, affinityTimeout: affinity, leastConn: sp.Rebalance != nil}
		if proto == dataplane.IPProtoTCP && sp.MaxConnectionsPerBackend > 0 {
			g.maxConns = uint32(sp.MaxConnectionsPerBackend)
		}
		// Weight 1 for every endpoint, as nftables and IPVS give, unless
		// the rebalancer steers the port's new connections.
		g.slots = slotsFor(dataplane.WeightEndpoints(st.Weights[sp.Name], eps))
		d.groups[groupKey{name: sp.Name, v6: v6, external: external}] = g
	}
	if endpointsEqual(internalEps, sets.Cluster) {
		add(false, append(internal, external...), internalEps)
		return
	}
	add(false, internal, internalEps)
	add(true, external, sets.Cluster)
}

func endpointsEqual(a, b []dataplane.Endpoint) bool {
	return slices.EqualFunc(a, b, func(x, y dataplane.Endpoint) bool { return x.Addr == y.Addr })
}

func (k l4) String() string {
	return fmt.Sprintf("%s/%d/%d", k.addrPort(), k.proto, k.tag)
}

// slotsFor lays weighted endpoints out as slots: each endpoint appears
// Weight times, so a uniform random slot picks it in proportion to its
// weight. Weights are reduced by their greatest common divisor to keep the
// slot count (and the map writes of a change) small; weight 0 endpoints
// get no slot.
func slotsFor(eps []dataplane.WeightedEndpoint) []netip.AddrPort {
	g := 0
	for _, e := range eps {
		if e.Weight > 0 {
			g = gcd(g, e.Weight)
		}
	}
	var out []netip.AddrPort
	for _, e := range eps {
		if e.Weight <= 0 {
			continue
		}
		for range e.Weight / g {
			out = append(out, e.Addr)
		}
	}
	return out
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
