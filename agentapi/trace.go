package agentapi

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/switchyard/switchyard/dataplane"
)

// ParseDestination parses "IP:PORT[/PROTO]" (the protocol in any case; ""
// when absent).
func ParseDestination(s string) (netip.AddrPort, dataplane.Protocol, error) {
	addr, proto, _ := strings.Cut(s, "/")
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return netip.AddrPort{}, "", fmt.Errorf("destination %q: want IP:PORT[/PROTO]: %w", s, err)
	}
	p := dataplane.Protocol(strings.ToUpper(proto))
	switch p {
	case "", dataplane.TCP, dataplane.UDP, dataplane.SCTP:
	default:
		return netip.AddrPort{}, "", fmt.Errorf("destination %q: protocol must be tcp, udp or sctp", s)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), p, nil
}

// TraceFrom explains what happens to a new connection to dst (proto ""
// for any protocol) on this node, from the model st: which Service ports
// have that frontend, which endpoints the traffic policy, topology and
// conditions leave, and, through insp (may be nil), the kernel objects on
// the way. The endpoint choice is dataplane.CategorizeEndpoints, the one
// both dataplanes program.
func TraceFrom(st *dataplane.State, dst netip.AddrPort, proto dataplane.Protocol, insp Inspector) *Trace {
	kind := ""
	if insp != nil {
		kind = insp.Kind()
	}
	out := &Trace{Destination: dst.String(), Protocol: string(proto), Dataplane: kind, Matches: []TraceMatch{}}
	nodeIP := slices.Contains(st.NodeIPs, dst.Addr())
	claimed := map[frontendKey]string{} // first claimant wins, as in both dataplanes
	for _, name := range st.SortedServicePorts() {
		if proto != "" && name.Protocol != proto {
			continue
		}
		sp := st.Services[name]
		fe := frontendKind(sp, dst, nodeIP || len(st.NodeIPs) == 0)
		if fe == "" {
			continue
		}
		m := traceMatch(st, name, sp, dst, fe, insp)
		if fe == "nodePort" && !nodeIP {
			m.Reasons = append([]string{"NodePort: applies when " + dst.Addr().String() + " is an address of this node (the node's addresses are unknown to the agent)"}, m.Reasons...)
		}
		k := frontendKey{dst.Addr(), dst.Port(), name.Protocol}
		if fe == "nodePort" {
			k.addr = netip.Addr{}
		}
		if winner, taken := claimed[k]; taken {
			m.Result = "shadowed"
			m.Reasons = []string{"frontend also claimed by " + winner + ", which gets it (first by name)"}
			m.Dataplane = []string{}
		} else {
			claimed[k] = name.String()
		}
		out.Matches = append(out.Matches, m)
	}
	return out
}

// frontendKind says how dst reaches sp: "clusterIP", "externalIP",
// "loadBalancerIP", "nodePort" or "" (it does not).
func frontendKind(sp *dataplane.ServicePort, dst netip.AddrPort, maybeNodeIP bool) string {
	a := dst.Addr()
	if dst.Port() == sp.Port {
		switch {
		case slices.Contains(sp.ClusterIPs, a):
			return "clusterIP"
		case slices.Contains(sp.ExternalIPs, a):
			return "externalIP"
		case slices.Contains(sp.LoadBalancerIPs, a):
			return "loadBalancerIP"
		}
	}
	if sp.NodePort != 0 && dst.Port() == sp.NodePort && maybeNodeIP {
		return "nodePort"
	}
	return ""
}

func traceMatch(st *dataplane.State, name dataplane.ServicePortName, sp *dataplane.ServicePort, dst netip.AddrPort, fe string, insp Inspector) TraceMatch {
	kind := ""
	if insp != nil {
		kind = insp.Kind()
	}
	internal := fe == "clusterIP"
	local := sp.InternalPolicyLocal
	policy := "internalTrafficPolicy"
	if !internal {
		local, policy = sp.ExternalPolicyLocal, "externalTrafficPolicy"
	}
	m := TraceMatch{Service: name.String(), Protocol: string(name.Protocol), Frontend: fe, TrafficPolicy: policyName(local),
		Backends: []TraceBackend{}, Reasons: []string{}, Dataplane: []string{}}

	v4 := dst.Addr().Is4()
	var eps []dataplane.Endpoint
	for _, e := range st.Endpoints[name] {
		if e.Addr.Addr().Unmap().Is4() == v4 {
			eps = append(eps, e)
		}
	}
	sets := dataplane.CategorizeEndpoints(sp, eps, st.NodeName, st.NodeZone)
	chosen := sets.Cluster
	if local {
		chosen = sets.Local
	}
	// externalTrafficPolicy Local without a local endpoint, as kube-proxy
	// and both dataplanes: new connections from outside the cluster are
	// dropped; this node's pods and the node itself reach the Cluster
	// endpoints.
	noLocal := local && !internal && len(sets.Local) == 0 && len(sets.Cluster) > 0
	if noLocal {
		chosen = sets.Cluster
	}
	isChosen := map[netip.AddrPort]bool{}
	for _, e := range chosen {
		isChosen[e.Addr] = true
	}
	anyReadyChosen := slices.ContainsFunc(chosen, func(e dataplane.Endpoint) bool { return e.Ready })
	// The dataplane's own choice, when it can tell, is what packets meet.
	var dpChosen map[netip.AddrPort]bool
	if w, ok := insp.(Weigher); ok {
		if weights, wants := w.Weights(st, name, dst); wants {
			dpChosen = map[netip.AddrPort]bool{}
			for a, wt := range weights {
				if wt > 0 {
					dpChosen[a] = true
				}
			}
		}
	}
	differs := false
	for _, e := range eps {
		b := TraceBackend{Address: e.Addr.String(), Node: e.NodeName, Zone: e.Zone, State: endpointState(e), Chosen: isChosen[e.Addr]}
		if dpChosen != nil && dpChosen[e.Addr] != b.Chosen {
			differs = true
			b.Chosen = dpChosen[e.Addr]
		}
		if !b.Chosen {
			b.Why = whyNot(e, local, sets.TopologyMode, anyReadyChosen, st.NodeName, st.NodeZone)
			if isChosen[e.Addr] {
				b.Why = "weight 0 in the dataplane"
			}
		}
		m.Backends = append(m.Backends, b)
	}
	if differs {
		chosen = chosen[:0:0]
		for _, e := range eps {
			if dpChosen[e.Addr] {
				chosen = append(chosen, e)
			}
		}
		anyReadyChosen = slices.ContainsFunc(chosen, func(e dataplane.Endpoint) bool { return e.Ready })
	}

	switch {
	case local && internal:
		m.Reasons = append(m.Reasons, fmt.Sprintf("%s=Local: only endpoints on this node (%s)", policy, st.NodeName))
	case local:
		m.Reasons = append(m.Reasons, fmt.Sprintf("%s=Local: clients outside the cluster keep their address and reach only endpoints on this node (%s)", policy, st.NodeName))
		if kind == KindNFTables && !noLocal {
			m.Reasons = append(m.Reasons, fmt.Sprintf("traffic from pods (cluster CIDRs) and from this node goes to the Cluster endpoints instead (%d)", len(sets.Cluster)))
		}
	default:
		m.Reasons = append(m.Reasons, fmt.Sprintf("%s=Cluster: endpoints on any node", policy))
		if !internal && kind != "" {
			m.Reasons = append(m.Reasons, "external traffic is masqueraded (the backend sees the node's address)")
		}
	}
	if differs {
		m.Reasons = append(m.Reasons, "the dataplane's choice of backends differs from the traffic policy's alone (shown)")
	}
	if !local && sets.TopologyMode != "" {
		where := "zone " + st.NodeZone
		if sets.TopologyMode == dataplane.TopologyPreferSameNode {
			where = "node " + st.NodeName
		}
		m.Reasons = append(m.Reasons, fmt.Sprintf("topology %s: only endpoints hinted for this %s", sets.TopologyMode, where))
	}
	if len(chosen) > 0 && !anyReadyChosen {
		m.Reasons = append(m.Reasons, "no ready endpoint: serving terminating endpoints take the traffic (KEP-1669)")
	}
	switch {
	case noLocal:
		m.Result = "drop"
		m.Reasons = append(m.Reasons, fmt.Sprintf("no endpoint on this node: new connections from outside the cluster are dropped (the client retries); this node's pods and the node itself reach the Cluster endpoints (chosen: %d)", len(chosen)))
	case len(chosen) > 0:
		m.Result = "forward"
		if insp != nil {
			m.Reasons = append(m.Reasons, "new connections pick a backend by "+schedulerText(insp.Scheduler(sp)))
		}
		if sp.SessionAffinityTimeout > 0 {
			m.Reasons = append(m.Reasons, fmt.Sprintf("sessionAffinity ClientIP: a client keeps its backend for %ds after its last connection", int(sp.SessionAffinityTimeout.Seconds())))
		}
	case sets.HasAny && kind == KindNFTables:
		m.Result = "drop"
		m.Reasons = append(m.Reasons, "the Service has endpoints, none for this traffic here: new connections are dropped (the client retries)")
	case sets.HasAny:
		m.Result = "reject"
		m.Reasons = append(m.Reasons, "the Service has endpoints, none for this traffic here: the virtual server has no real server, IPVS refuses new connections")
	default:
		m.Result = "reject"
		m.Reasons = append(m.Reasons, "no endpoints: new connections are refused (TCP reset / ICMP port unreachable)")
	}
	if fe == "loadBalancerIP" && len(sp.LoadBalancerSourceRanges) > 0 {
		var rs []string
		for _, p := range sp.LoadBalancerSourceRanges {
			rs = append(rs, p.String())
		}
		m.Reasons = append(m.Reasons, "loadBalancerSourceRanges: sources outside "+strings.Join(rs, ", ")+" are dropped")
	}
	if insp != nil {
		m.Dataplane = nonNil(insp.Route(st, name, dst, fe == "nodePort"))
	}
	return m
}

func schedulerText(s string) string {
	if s == "random" {
		return "random choice (nftables numgen)"
	}
	return "IPVS scheduler " + s
}

// whyNot explains why CategorizeEndpoints left e out.
func whyNot(e dataplane.Endpoint, local bool, topology string, readyChosen bool, node, zone string) string {
	switch {
	case local && e.NodeName != node:
		return "on another node (traffic policy Local)"
	case !e.Ready && !(e.Serving && e.Terminating):
		return "not ready"
	case !e.Ready && readyChosen:
		return "terminating (ready endpoints exist)"
	case !local && topology == dataplane.TopologyPreferSameZone && !slices.Contains(e.ZoneHints, zone):
		return "not hinted for zone " + zone + " (topology)"
	case !local && topology == dataplane.TopologyPreferSameNode && !slices.Contains(e.NodeHints, node):
		return "not hinted for node " + node + " (topology)"
	}
	return "not selected"
}
