package agentapi

import (
	"net/netip"
	"slices"

	"github.com/switchyard/switchyard/dataplane"
)

// SelectPorts returns st's Service ports of namespace and name ("" matches
// any), sorted.
func SelectPorts(st *dataplane.State, namespace, name string) []dataplane.ServicePortName {
	var out []dataplane.ServicePortName
	for _, n := range st.SortedServicePorts() {
		if (namespace == "" || n.Namespace == namespace) && (name == "" || n.Name == name) {
			out = append(out, n)
		}
	}
	return out
}

// ServicesFrom builds the services view of the ports in names. kind and
// sched describe the dataplane; kernel holds what the dataplane reports per
// port (nil: weights from the model); flows, when not nil, give connection
// counts for ports without kernel counts.
func ServicesFrom(st *dataplane.State, names []dataplane.ServicePortName, kind string, sched func(*dataplane.ServicePort) string,
	kernel map[dataplane.ServicePortName][]KernelBackend, flows []Flow) *ServiceList {
	out := &ServiceList{Dataplane: kind, Services: []Service{}}
	var counts map[dataplane.ServicePortName]*portFlows
	if flows != nil {
		counts = countFlows(st, flows)
	}
	for _, name := range names {
		sp := st.Services[name]
		if sp == nil {
			continue
		}
		eps := st.Endpoints[name]
		sets := dataplane.CategorizeEndpoints(sp, eps, st.NodeName, st.NodeZone)
		s := Service{
			Namespace:              name.Namespace,
			Name:                   name.Name,
			PortName:               name.Port,
			Protocol:               string(name.Protocol),
			Port:                   sp.Port,
			NodePort:               sp.NodePort,
			ClusterIPs:             addrStrings(sp.ClusterIPs),
			ExternalIPs:            addrStrings(sp.ExternalIPs),
			LoadBalancerIPs:        addrStrings(sp.LoadBalancerIPs),
			SessionAffinitySeconds: int(sp.SessionAffinityTimeout.Seconds()),
			ExternalTrafficPolicy:  policyName(sp.ExternalPolicyLocal),
			InternalTrafficPolicy:  policyName(sp.InternalPolicyLocal),
			TopologyMode:           sets.TopologyMode,
			Backends:               []Backend{},
		}
		if sched != nil {
			s.Scheduler = sched(sp)
		}
		reachable := map[netip.AddrPort]bool{}
		for _, e := range sets.AllReachable {
			reachable[e.Addr] = true
		}
		kbs, fromKernel := kernel[name]
		byAddr := map[netip.AddrPort]KernelBackend{}
		for _, kb := range kbs {
			byAddr[kb.Addr] = kb
		}
		var pf *portFlows
		if counts != nil {
			if pf = counts[name]; pf == nil {
				pf = &portFlows{backends: map[netip.AddrPort]*flowCounts{}}
			}
		}
		conns := func(a netip.AddrPort) *Connections {
			switch {
			case fromKernel:
				kb := byAddr[a]
				return &Connections{Active: kb.Active, Inactive: kb.Inactive}
			case pf != nil:
				c := pf.backends[a]
				if c == nil {
					return &Connections{}
				}
				return &Connections{Active: c.established, Inactive: c.other}
			}
			return nil
		}
		isEP := map[netip.AddrPort]bool{}
		for _, e := range eps {
			isEP[e.Addr] = true
			b := Backend{Address: e.Addr.String(), Node: e.NodeName, Zone: e.Zone, State: endpointState(e), Connections: conns(e.Addr)}
			if fromKernel {
				b.Weight = byAddr[e.Addr].Weight
			} else if reachable[e.Addr] {
				b.Weight = 1
			}
			s.Backends = append(s.Backends, b)
		}
		// What the dataplane still sends to that is no endpoint: IPVS real
		// servers draining at weight 0, or (nftables) conntrack entries.
		var gone []netip.AddrPort
		for _, kb := range kbs {
			if !isEP[kb.Addr] {
				gone = append(gone, kb.Addr)
			}
		}
		if !fromKernel && pf != nil {
			for a := range pf.backends {
				if !isEP[a] {
					gone = append(gone, a)
				}
			}
		}
		slices.SortFunc(gone, netip.AddrPort.Compare)
		for _, a := range slices.Compact(gone) {
			s.Backends = append(s.Backends, Backend{Address: a.String(), State: "draining", Weight: byAddr[a].Weight, Connections: conns(a)})
		}
		out.Services = append(out.Services, s)
	}
	return out
}

// endpointState names an endpoint's conditions.
func endpointState(e dataplane.Endpoint) string {
	switch {
	case e.Ready:
		return "ready"
	case e.Terminating:
		return "terminating"
	case e.Serving:
		return "serving"
	}
	return "notready"
}
