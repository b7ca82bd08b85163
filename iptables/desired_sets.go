package iptables

import (
	"cmp"
	"net/netip"
	"slices"

	"github.com/switchyard/switchyard/dataplane"
)

// setDef describes one owned set independent of its content.
type setDef struct {
	name string
	typ  SetType
}

// setDefs lists the owned sets of a family, sorted by name.
//
// NodePort sets are hash:net,port holding each port twice, as 0.0.0.0/1 and
// 128.0.0.0/1 with the protocol: together those cover every destination
// address (hash:net,port refuses /0), and the jump to SWITCHYARD-NODE-PORT
// already requires a local destination, so a match means "this protocol
// and port on any node address". kube-proxy uses bitmap:port for TCP and
// UDP, which the netlink library cannot fill (see SetType), and does not
// work for SCTP anyway (the kernel's bitmap:port only matches TCP and UDP
// packets); for SCTP it uses hash:ip,port with every node IP, which needs
// the node's addresses and their changes. One type for all three keeps the
// chain uniform; a NodePort lookup is one hash probe either way.
func setDefs(fam Family) []setDef {
	defs := []setDef{
		{setClusterIP, HashIPPort},
		{setExternalIP, HashIPPort},
		{setExternalIPLocal, HashIPPort},
		{setLoadBalancer, HashIPPort},
		{setLoadBalancerFW, HashIPPort},
		{setLoadBalancerLocal, HashIPPort},
		{setLoadBalancerSourceCIDR, HashIPPortNet},
		{setLoadBalancerSourceIP, HashIPPortIP},
		{setLoopBack, HashIPPortIP},
		{setNodePortLocalSCTP, HashNetPort},
		{setNodePortLocalTCP, HashNetPort},
		{setNodePortLocalUDP, HashNetPort},
		{setNodePortSCTP, HashNetPort},
		{setNodePortTCP, HashNetPort},
		{setNodePortUDP, HashNetPort},
		{setNoLocalEndpoint, HashIPPort},
		{setNoLocalEndpointNodeSCTP, HashNetPort},
		{setNoLocalEndpointNodeTCP, HashNetPort},
		{setNoLocalEndpointNodeUDP, HashNetPort},
	}
	for i := range defs {
		defs[i].name = setName(fam, defs[i].name)
	}
	slices.SortFunc(defs, func(a, b setDef) int { return cmp.Compare(a.name, b.name) })
	return defs
}

// specFor sizes a set for n members.
func specFor(d setDef, fam Family, n int) SetSpec {
	return SetSpec{Name: d.name, Type: d.typ, Family: fam, MaxElem: maxElemFor(n)}
}

// buildSets turns collected members into sorted desired sets.
func buildSets(members map[string]map[Member]struct{}, fam Family) []DesiredSet {
	defs := setDefs(fam)
	out := make([]DesiredSet, 0, len(defs))
	for _, d := range defs {
		ms := members[d.name]
		if ms == nil {
			ms = map[Member]struct{}{}
		}
		out = append(out, DesiredSet{Spec: specFor(d, fam, len(ms)), Members: ms})
	}
	return out
}

// collectMembers computes every set's members from the model, the way
// kube-proxy's IPVS proxier fills its sets.
func collectMembers(st *dataplane.State, fam Family) map[string]map[Member]struct{} {
	out := map[string]map[Member]struct{}{}
	add := func(base string, m Member) {
		set := setName(fam, base)
		if out[set] == nil {
			out[set] = map[Member]struct{}{}
		}
		out[set][m] = struct{}{}
	}
	inFamily := func(a netip.Addr) (netip.Addr, bool) {
		a = a.Unmap()
		return a, a.IsValid() && a.Is4() == (fam == FamilyINet)
	}
	for _, name := range st.SortedServicePorts() {
		sp := st.Services[name]
		proto, ok := protoNumber(name.Protocol)
		if !ok {
			continue
		}
		// As the IPVS dataplane (and kube-proxy's per-family proxiers), a
		// Service exists in a family only through a ClusterIP of that
		// family: an IPv6-only Service's NodePort has no IPv4 virtual
		// server, so it has no place in the IPv4 sets either.
		if !slices.ContainsFunc(sp.ClusterIPs, func(ip netip.Addr) bool { _, ok := inFamily(ip); return ok }) {
			continue
		}
		for _, ip := range sp.ClusterIPs {
			if ip, ok := inFamily(ip); ok {
				add(setClusterIP, IPPortMember(ip, proto, sp.Port))
			}
		}
		noLocal := noLocalEndpoint(st, sp, fam)
		// A frontend that is also one of the Service's ClusterIPs is
		// the ClusterIP's virtual server in the IPVS dataplane (its first
		// claim), which follows the internal policy: never dropped.
		noLocalFrontend := func(ip netip.Addr) bool {
			return noLocal && !slices.ContainsFunc(sp.ClusterIPs, func(c netip.Addr) bool { return c.Unmap() == ip })
		}
		for _, ip := range sp.ExternalIPs {
			if ip, ok := inFamily(ip); ok {
				add(setExternalIP, IPPortMember(ip, proto, sp.Port))
				if sp.ExternalPolicyLocal {
					add(setExternalIPLocal, IPPortMember(ip, proto, sp.Port))
				}
				if noLocalFrontend(ip) {
					add(setNoLocalEndpoint, IPPortMember(ip, proto, sp.Port))
				}
			}
		}
		ranges := sourceRanges(sp.LoadBalancerSourceRanges, fam)
		allowFromNode := slices.ContainsFunc(st.NodeIPs, func(a netip.Addr) bool {
			return slices.ContainsFunc(ranges, func(p netip.Prefix) bool { return p.Contains(a.Unmap()) })
		})
		for _, ip := range sp.LoadBalancerIPs {
			if ip, ok := inFamily(ip); ok {
				add(setLoadBalancer, IPPortMember(ip, proto, sp.Port))
				if sp.ExternalPolicyLocal {
					add(setLoadBalancerLocal, IPPortMember(ip, proto, sp.Port))
				}
				if noLocalFrontend(ip) {
					add(setNoLocalEndpoint, IPPortMember(ip, proto, sp.Port))
				}
				// loadBalancerSourceRanges (kube-proxy's firewall), with
				// or without endpoints. Ranges of the other family only
				// leave this family's LB IPs unfiltered, as in
				// kube-proxy's per-family proxiers and the nftables
				// dataplane.
				if len(ranges) == 0 {
					continue
				}
				add(setLoadBalancerFW, IPPortMember(ip, proto, sp.Port))
				for _, p := range ranges {
					add(setLoadBalancerSourceCIDR, IPPortNetMember(ip, proto, sp.Port, p))
				}
				// kube-proxy's "allowFromNode": where the LB IP is bound
				// on the node (as the IPVS dataplane binds it on its
				// dummy link), the node's own requests to it carry the LB
				// IP itself as source; they pass when one of the node's
				// addresses lies inside a range.
				if allowFromNode {
					add(setLoadBalancerSourceIP, IPPortIPMember(ip, proto, sp.Port, ip))
				}
			}
		}
		if sp.NodePort != 0 {
			all, local, none := nodePortSets(proto)
			for _, m := range nodePortMembers(proto, sp.NodePort, fam) {
				add(all, m)
				if sp.ExternalPolicyLocal {
					add(local, m)
				}
				if noLocal {
					add(none, m)
				}
			}
		}
		// Every endpoint, ready or not: a terminating endpoint may still
		// open connections to its own service and needs the same SNAT.
		// kube-proxy restricts this to local endpoints (only they can
		// hairpin through this node); listing all keeps the set independent
		// of node names at the cost of a bigger set.
		for _, ep := range st.Endpoints[name] {
			if ip, ok := inFamily(ep.Addr.Addr()); ok {
				add(setLoopBack, IPPortIPMember(ip, proto, ep.Addr.Port(), ip))
			}
		}
	}
	return out
}

// sourceRanges returns the loadBalancerSourceRanges of family fam as
// hash:ip,port,net can hold them: an IPv4-mapped IPv6 range becomes the
// IPv4 range it means, and a /0 (which the kernel refuses in a net type,
// as for NodePorts) its two /1 halves.
func sourceRanges(ps []netip.Prefix, fam Family) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		}
		if !p.IsValid() || p.Addr().Is4() != (fam == FamilyINet) {
			continue
		}
		p = p.Masked()
		if p.Bits() == 0 {
			half := netip.MustParsePrefix("128.0.0.0/1")
			if fam == FamilyINet6 {
				half = netip.MustParsePrefix("8000::/1")
			}
			out = append(out, netip.PrefixFrom(p.Addr(), 1), half)
			continue
		}
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return cmp.Compare(a.Bits(), b.Bits())
	})
	return slices.Compact(out)
}

// nodePortSets names, for a protocol, the NodePort sets: every NodePort,
// those of externalTrafficPolicy Local Services, and those of such
// Services without a local endpoint.
func nodePortSets(proto uint8) (all, local, noLocal string) {
	switch proto {
	case protoTCP:
		return setNodePortTCP, setNodePortLocalTCP, setNoLocalEndpointNodeTCP
	case protoUDP:
		return setNodePortUDP, setNodePortLocalUDP, setNoLocalEndpointNodeUDP
	}
	return setNodePortSCTP, setNodePortLocalSCTP, setNoLocalEndpointNodeSCTP
}

// noLocalEndpoint reports whether the external frontends of sp, in family
// fam, belong in the no-local-endpoint sets: externalTrafficPolicy Local,
// no endpoint of that family on this node, but some elsewhere. The IPVS
// dataplane then gives its external virtual servers the Cluster endpoints
// (ipvs.Desired: the same categorization, per family, so the two agree),
// which only this node's pods and the node itself may reach.
func noLocalEndpoint(st *dataplane.State, sp *dataplane.ServicePort, fam Family) bool {
	if !sp.ExternalPolicyLocal || !sp.ExternallyAccessible() {
		return false
	}
	var eps []dataplane.Endpoint
	for _, e := range st.Endpoints[sp.Name] {
		if a := e.Addr.Addr().Unmap(); a.IsValid() && a.Is4() == (fam == FamilyINet) {
			eps = append(eps, e)
		}
	}
	sets := dataplane.CategorizeEndpoints(sp, eps, st.NodeName, st.NodeZone)
	return len(sets.Local) == 0 && len(sets.Cluster) > 0
}

// nodePortMembers returns the members matching a NodePort (see setDefs).
func nodePortMembers(proto uint8, port uint16, fam Family) []Member {
	halves := []netip.Prefix{netip.MustParsePrefix("0.0.0.0/1"), netip.MustParsePrefix("128.0.0.0/1")}
	if fam == FamilyINet6 {
		halves = []netip.Prefix{netip.MustParsePrefix("::/1"), netip.MustParsePrefix("8000::/1")}
	}
	return []Member{NetPortMember(halves[0], proto, port), NetPortMember(halves[1], proto, port)}
}
