package dataplane

import (
	"net/netip"
	"slices"
)

// Topology modes chosen from the endpoints' hints, as kube-proxy names them.
const (
	TopologyPreferSameZone = "PreferSameZone"
	TopologyPreferSameNode = "PreferSameNode"
)

// EndpointSets is kube-proxy's categorization of one Service port's
// endpoints as seen from this node (pkg/proxy/topology.go).
type EndpointSets struct {
	// Cluster are the endpoints for Cluster-policy traffic, topology
	// applied; nil when the port never uses Cluster policy (internal
	// traffic policy Local and not externally accessible).
	Cluster []Endpoint
	// Local are the endpoints for Local-policy traffic (this node's); nil
	// when the port never uses Local policy.
	Local []Endpoint
	// AllReachable is the union of Cluster and Local: every endpoint some
	// traffic from this node may reach (what conntrack cleanup and drains
	// must keep).
	AllReachable []Endpoint
	// HasAny reports whether the Service has usable endpoints anywhere in
	// the cluster, even if none is reachable from here: such traffic is
	// dropped, not rejected, so clients retry instead of failing.
	HasAny bool
	// TopologyMode is "", TopologyPreferSameZone or TopologyPreferSameNode.
	TopologyMode string
}

// ExternallyAccessible reports whether traffic may arrive from outside the
// cluster: through a NodePort, an external IP or a load balancer IP.
func (sp *ServicePort) ExternallyAccessible() bool {
	return sp.NodePort != 0 || len(sp.ExternalIPs) > 0 || len(sp.LoadBalancerIPs) > 0
}

// UsesClusterEndpoints: internal policy Cluster, or external traffic at all
// (even with external policy Local, cluster endpoints serve the node's own
// traffic to a NodePort/LB IP, kube-proxy's "short circuit").
func (sp *ServicePort) UsesClusterEndpoints() bool {
	return !sp.InternalPolicyLocal || sp.ExternallyAccessible()
}

// UsesLocalEndpoints: internal policy Local, or external policy Local with
// a way in from outside.
func (sp *ServicePort) UsesLocalEndpoints() bool {
	return sp.InternalPolicyLocal || (sp.ExternalPolicyLocal && sp.ExternallyAccessible())
}

// CategorizeEndpoints applies kube-proxy's endpoint selection to one
// Service port on node nodeName in zone: ready endpoints, falling back to
// serving+terminating ones (independently for Cluster and Local) when none
// is ready (KEP-1669); topology hints (KEP-2433, trafficDistribution
// PreferClose/PreferSameZone/PreferSameNode) used only when every ready
// endpoint has hints and at least one is hinted for this node or zone —
// otherwise all endpoints are used, so a bad hint never black-holes traffic.
func CategorizeEndpoints(sp *ServicePort, eps []Endpoint, nodeName, zone string) EndpointSets {
	var out EndpointSets
	if len(eps) == 0 {
		return out
	}
	local := func(e Endpoint) bool { return e.NodeName != "" && e.NodeName == nodeName }

	if sp.UsesClusterEndpoints() {
		out.TopologyMode = topologyMode(eps, nodeName, zone)
		out.Cluster = filter(eps, func(e Endpoint) bool {
			return e.Ready && availableForTopology(e, out.TopologyMode, nodeName, zone)
		})
		if len(out.Cluster) == 0 {
			// No ready endpoint anywhere (topology would have been
			// ignored otherwise): fall back to serving+terminating.
			out.Cluster = filter(eps, func(e Endpoint) bool { return e.Serving && e.Terminating })
		}
		out.HasAny = len(out.Cluster) > 0
	}
	if !sp.UsesLocalEndpoints() {
		out.AllReachable = out.Cluster
		return out
	}

	var localReady, localServingTerminating bool
	for _, e := range eps {
		switch {
		case e.Ready:
			out.HasAny = true
			localReady = localReady || local(e)
		case e.Serving && e.Terminating:
			out.HasAny = true
			localServingTerminating = localServingTerminating || local(e)
		}
	}
	fallback := false
	switch {
	case localReady:
		out.Local = filter(eps, func(e Endpoint) bool { return local(e) && e.Ready })
	case localServingTerminating:
		fallback = true
		out.Local = filter(eps, func(e Endpoint) bool { return local(e) && e.Serving && e.Terminating })
	}
	if !sp.UsesClusterEndpoints() {
		out.AllReachable = out.Local
		return out
	}
	if out.TopologyMode == "" && !fallback {
		// Cluster holds every ready endpoint, Local only ready ones: a
		// superset already.
		out.AllReachable = out.Cluster
		return out
	}
	// Cluster may lack local endpoints that topology or the terminating
	// fallback excluded: merge, keeping the input order.
	seen := make(map[netip.AddrPort]bool, len(out.Cluster)+len(out.Local))
	for _, e := range out.Cluster {
		seen[e.Addr] = true
	}
	for _, e := range out.Local {
		seen[e.Addr] = true
	}
	out.AllReachable = filter(eps, func(e Endpoint) bool { return seen[e.Addr] })
	return out
}

// topologyMode picks PreferSameNode when every ready endpoint has node hints
// and one is for this node, else PreferSameZone when every ready endpoint
// has zone hints and one is for this zone, else "" (no topology).
func topologyMode(eps []Endpoint, nodeName, zone string) string {
	anyReady, allNode, forNode, allZone, forZone := false, true, false, true, false
	for _, e := range eps {
		if !e.Ready {
			continue
		}
		anyReady = true
		if len(e.NodeHints) == 0 {
			allNode = false
		} else if contains(e.NodeHints, nodeName) {
			forNode = true
		}
		if len(e.ZoneHints) == 0 {
			allZone = false
		} else if zone != "" && contains(e.ZoneHints, zone) {
			forZone = true
		}
	}
	switch {
	case !anyReady:
		return ""
	case allNode && forNode:
		return TopologyPreferSameNode
	case allZone && forZone:
		return TopologyPreferSameZone
	}
	return ""
}

func availableForTopology(e Endpoint, mode, nodeName, zone string) bool {
	switch mode {
	case TopologyPreferSameNode:
		return contains(e.NodeHints, nodeName)
	case TopologyPreferSameZone:
		return contains(e.ZoneHints, zone)
	}
	return true
}

func filter(eps []Endpoint, keep func(Endpoint) bool) []Endpoint {
	out := make([]Endpoint, 0, len(eps))
	for _, e := range eps {
		if keep(e) {
			out = append(out, e)
		}
	}
	return out
}

func contains(list []string, s string) bool { return slices.Contains(list, s) }
