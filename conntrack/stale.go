package conntrack

import (
	"net/netip"
	"slices"

	"github.com/switchyard/switchyard/dataplane"
)

// frontend is one address:port a Service port is reachable on. A zero addr
// stands for "any address" and is used for NodePorts when the node's
// addresses are unknown (kube-proxy's port-only NodePort filters).
type frontend struct {
	proto dataplane.Protocol
	addr  netip.Addr
	port  uint16
}

// frontendInfo is what conntrack may hold for a frontend.
type frontendInfo struct {
	// reach are the endpoint IPs flows to the frontend may have been
	// DNAT'd to: the owning port's AllReachable endpoints.
	reach map[netip.Addr]bool
	// usable: traffic of this frontend's class (internal for ClusterIPs,
	// external for the others) had an endpoint to go to, so new flows
	// were DNAT'd rather than dropped or rejected.
	usable bool
}

// StaleFlows returns the conntrack filters to clear after the dataplane went
// from prev to cur (prev nil means nothing was programmed before), sorted by
// CompareFilters. nodeIPs are the addresses NodePorts listen on; when empty,
// NodePort filters match the port on any destination, as kube-proxy's do.
//
// Only UDP and SCTP Service ports are considered (TCP flows to a dead
// endpoint fail on their own). Per frontend F (a ClusterIP, external IP or
// load-balancer IP with the Service port, or a node IP with the NodePort):
//
//  1. Endpoint gone: an endpoint IP that was reachable through F (in the
//     owning port's CategorizeEndpoints(...).AllReachable) and no longer is
//     → clear flows to F whose reply source is that IP. It covers endpoints
//     deleted, no longer serving, or left out because ready ones came
//     back (terminating fallback) or because of policy/topology changes.
//  2. Newly usable: F had no endpoint for its kind of traffic (or did not
//     exist) and now has one → clear every flow to F. Packets sent while
//     there was none were rejected or dropped, or went wherever routing
//     took them without DNAT, and their entries would keep later packets
//     from being DNAT'd.
//  3. Frontend gone: F existed and no longer does (Service deleted, port or
//     IP changed) → clear every flow to F, which would otherwise keep
//     reaching the old endpoints.
//
// Rule 1 filters are dropped for a frontend that rules 2 or 3 clear anyway.
func StaleFlows(prev, cur *dataplane.State, nodeIPs []netip.Addr) []Filter {
	return staleFlows(prev, nodeIPs, cur, nodeIPs)
}

func staleFlows(prev *dataplane.State, prevNodeIPs []netip.Addr, cur *dataplane.State, curNodeIPs []netip.Addr) []Filter {
	before := frontends(prev, prevNodeIPs)
	after := frontends(cur, curNodeIPs)

	broad := map[frontend]bool{}
	var nat []Filter
	for fe, old := range before {
		now, ok := after[fe]
		if !ok {
			broad[fe] = true // rule 3
			continue
		}
		for ip := range old.reach {
			if now.reach[ip] {
				continue
			}
			if fe.addr.IsValid() && fe.addr.Is4() != ip.Is4() {
				continue // never DNAT'd across families
			}
			nat = append(nat, Filter{Protocol: fe.proto, OrigDst: fe.addr, OrigDstPort: fe.port, ReplySrc: ip}) // rule 1
		}
	}
	for fe, now := range after {
		if now.usable && !before[fe].usable {
			broad[fe] = true // rule 2
		}
	}

	out := make([]Filter, 0, len(broad)+len(nat))
	for fe := range broad {
		out = append(out, Filter{Protocol: fe.proto, OrigDst: fe.addr, OrigDstPort: fe.port})
	}
	for _, f := range nat {
		if !broad[frontend{f.Protocol, f.OrigDst, f.OrigDstPort}] {
			out = append(out, f)
		}
	}
	slices.SortFunc(out, CompareFilters)
	return out
}

// frontends maps every UDP/SCTP frontend of st to what may be behind it. A
// frontend claimed by two Service ports (a conflict the dataplanes resolve
// one way or another) gets the union of both.
func frontends(st *dataplane.State, nodeIPs []netip.Addr) map[frontend]frontendInfo {
	out := map[frontend]frontendInfo{}
	if st == nil {
		return out
	}
	add := func(fe frontend, reach []netip.Addr, usable bool) {
		info, ok := out[fe]
		if !ok {
			info.reach = make(map[netip.Addr]bool, len(reach))
		}
		for _, ip := range reach {
			info.reach[ip] = true
		}
		info.usable = info.usable || usable
		out[fe] = info
	}
	for name, sp := range st.Services {
		if !tracked(name.Protocol) || sp == nil {
			continue
		}
		sets := dataplane.CategorizeEndpoints(sp, st.Endpoints[name], st.NodeName, st.NodeZone)
		reach := make([]netip.Addr, 0, len(sets.AllReachable))
		for _, e := range sets.AllReachable {
			if e.Addr.IsValid() {
				reach = append(reach, e.Addr.Addr().Unmap())
			}
		}
		// Internal traffic (ClusterIPs) uses the Local set under
		// internalTrafficPolicy Local; traffic from outside (external and
		// LB IPs, NodePorts) the Local set under externalTrafficPolicy
		// Local. Otherwise both use the Cluster set.
		internal := usableSet(sets, sp.InternalPolicyLocal)
		external := usableSet(sets, sp.ExternalPolicyLocal)
		if sp.Port != 0 {
			for _, ip := range sp.ClusterIPs {
				add(frontend{name.Protocol, ip.Unmap(), sp.Port}, reach, internal)
			}
			for _, group := range [][]netip.Addr{sp.ExternalIPs, sp.LoadBalancerIPs} {
				for _, ip := range group {
					add(frontend{name.Protocol, ip.Unmap(), sp.Port}, reach, external)
				}
			}
		}
		if sp.NodePort != 0 {
			if len(nodeIPs) == 0 {
				add(frontend{name.Protocol, netip.Addr{}, sp.NodePort}, reach, external)
			}
			for _, ip := range nodeIPs {
				add(frontend{name.Protocol, ip.Unmap(), sp.NodePort}, reach, external)
			}
		}
	}
	return out
}

func usableSet(sets dataplane.EndpointSets, local bool) bool {
	if local {
		return len(sets.Local) > 0
	}
	return len(sets.Cluster) > 0
}

// tracked reports whether stale entries of the protocol need clearing:
// kube-proxy does UDP; SCTP associations keep their entry just the same.
func tracked(p dataplane.Protocol) bool { return p == dataplane.UDP || p == dataplane.SCTP }
