package agentapi

import (
	"cmp"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/switchyard/switchyard/conntrack"
	"github.com/switchyard/switchyard/dataplane"
)

// Flow is one conntrack entry with what yardctl counts: its tuples and, for
// TCP, its state.
type Flow struct {
	// conntrack.Flow carries the TCP state ("ESTABLISHED", ...; "" for
	// other protocols).
	conntrack.Flow
}

// Established reports whether the flow counts as an established
// connection: TCP in ESTABLISHED, any UDP or SCTP flow (yardctl's and the
// metrics' "active"; other TCP states are "inactive").
func (f Flow) Established() bool {
	return f.Protocol != dataplane.TCP || f.TCPState == "ESTABLISHED"
}

// dnated reports whether the flow was translated to another destination
// (a Service's backend): replies come from elsewhere than the client's
// destination.
func (f Flow) dnated() bool { return f.Reply.Src != f.Orig.Dst }

// FlowLister lists the conntrack table.
type FlowLister interface {
	ListFlows() ([]Flow, error)
}

// flowCounts are the entries towards one backend.
type flowCounts struct {
	established, other int
}

func (c *flowCounts) add(f Flow) {
	if f.Established() {
		c.established++
	} else {
		c.other++
	}
}

// portFlows are the entries of one Service port: by backend, and the
// frontends they were sent to.
type portFlows struct {
	backends  map[netip.AddrPort]*flowCounts
	frontends map[string]bool
}

// FlowIndex finds the Service port of a flow's original destination, as
// yardctl conntrack and the agent's conntrack metrics attribute flows.
type FlowIndex struct {
	vips      map[frontendKey]dataplane.ServicePortName
	nodePorts map[frontendKey]dataplane.ServicePortName // address unset
}

type frontendKey struct {
	addr  netip.Addr
	port  uint16
	proto dataplane.Protocol
}

// NewFlowIndex indexes the frontends of st's Service ports. When two
// ports claim one frontend, the first by name wins, as in both dataplanes.
// The index keeps no reference to st.
func NewFlowIndex(st *dataplane.State) *FlowIndex {
	idx := &FlowIndex{vips: map[frontendKey]dataplane.ServicePortName{}, nodePorts: map[frontendKey]dataplane.ServicePortName{}}
	for _, name := range st.SortedServicePorts() {
		sp := st.Services[name]
		for _, fe := range sp.Frontends() {
			k := frontendKey{fe.Addr().Unmap(), fe.Port(), name.Protocol}
			if _, taken := idx.vips[k]; !taken {
				idx.vips[k] = name
			}
		}
		if sp.NodePort != 0 {
			k := frontendKey{port: sp.NodePort, proto: name.Protocol}
			if _, taken := idx.nodePorts[k]; !taken {
				idx.nodePorts[k] = name
			}
		}
	}
	return idx
}

// Lookup returns the Service port a DNATed flow belongs to: its original
// destination is a service IP and port, or a NodePort (on any address:
// NodePorts are open on the node's addresses, which the model may not
// list). A flow not DNATed belongs to none. Its backend is Reply.Src.
func (idx *FlowIndex) Lookup(f Flow) (dataplane.ServicePortName, bool) {
	if !f.dnated() {
		return dataplane.ServicePortName{}, false
	}
	k := frontendKey{f.Orig.Dst.Addr().Unmap(), f.Orig.Dst.Port(), f.Protocol}
	if n, ok := idx.vips[k]; ok {
		return n, true
	}
	k.addr = netip.Addr{}
	n, ok := idx.nodePorts[k]
	return n, ok
}

// countFlows attributes DNATed flows to the Service ports of st.
func countFlows(st *dataplane.State, flows []Flow) map[dataplane.ServicePortName]*portFlows {
	idx := NewFlowIndex(st)
	out := map[dataplane.ServicePortName]*portFlows{}
	for _, f := range flows {
		name, ok := idx.Lookup(f)
		if !ok {
			continue
		}
		pf := out[name]
		if pf == nil {
			pf = &portFlows{backends: map[netip.AddrPort]*flowCounts{}, frontends: map[string]bool{}}
			out[name] = pf
		}
		pf.frontends[f.Frontend()] = true
		c := pf.backends[f.Reply.Src]
		if c == nil {
			c = &flowCounts{}
			pf.backends[f.Reply.Src] = c
		}
		c.add(f)
	}
	return out
}

// Frontend is the flow's original destination as "ip:port/PROTO".
func (f Flow) Frontend() string { return f.Orig.Dst.String() + "/" + string(f.Protocol) }

// ConntrackFrom builds the report for the Service ports in names (all of
// st's when nil), listing every endpoint of each port, with or without
// entries, and the backends entries go to that are no endpoint.
func ConntrackFrom(st *dataplane.State, names []dataplane.ServicePortName, flows []Flow) *ConntrackReport {
	counts := countFlows(st, flows)
	out := &ConntrackReport{Source: SourceAgent, Services: []ConntrackService{}, Sockets: []SocketLBSocket{}}
	for _, name := range names {
		pf := counts[name]
		if pf == nil {
			pf = &portFlows{backends: map[netip.AddrPort]*flowCounts{}, frontends: map[string]bool{}}
		}
		var eps []netip.AddrPort
		for _, e := range st.Endpoints[name] {
			eps = append(eps, e.Addr)
		}
		out.Services = append(out.Services, conntrackService(name.String(), pf, eps))
	}
	return out
}

// KernelConntrack is the report yardctl builds when the agent is down:
// DNATed flows grouped by the destination clients used, no Service names,
// every backend seen counted.
func KernelConntrack(flows []Flow) *ConntrackReport {
	groups := map[string]*portFlows{}
	for _, f := range flows {
		if !f.dnated() {
			continue
		}
		fe := f.Frontend()
		pf := groups[fe]
		if pf == nil {
			pf = &portFlows{backends: map[netip.AddrPort]*flowCounts{}, frontends: map[string]bool{fe: true}}
			groups[fe] = pf
		}
		c := pf.backends[f.Reply.Src]
		if c == nil {
			c = &flowCounts{}
			pf.backends[f.Reply.Src] = c
		}
		c.add(f)
	}
	out := &ConntrackReport{Source: SourceKernel, Services: []ConntrackService{}, Sockets: []SocketLBSocket{}}
	for _, fe := range slices.SortedFunc(maps.Keys(groups), compareFrontendStrings) {
		out.Services = append(out.Services, conntrackService("", groups[fe], nil))
	}
	return out
}

// compareFrontendStrings orders "ip:port/PROTO" by address, then protocol.
func compareFrontendStrings(a, b string) int {
	ai, ap, _ := strings.Cut(a, "/")
	bi, bp, _ := strings.Cut(b, "/")
	x, errA := netip.ParseAddrPort(ai)
	y, errB := netip.ParseAddrPort(bi)
	if errA != nil || errB != nil {
		return strings.Compare(a, b)
	}
	return cmp.Or(x.Compare(y), strings.Compare(ap, bp))
}

// conntrackService summarizes one port; eps are its endpoints (nil when
// unknown: the statistics then cover every backend seen).
func conntrackService(service string, pf *portFlows, eps []netip.AddrPort) ConntrackService {
	cs := ConntrackService{Service: service, Frontends: []string{}, Backends: []ConntrackBackend{}}
	for fe := range pf.frontends {
		cs.Frontends = append(cs.Frontends, fe)
	}
	slices.SortFunc(cs.Frontends, compareFrontendStrings)
	isEP := map[netip.AddrPort]bool{}
	for _, a := range eps {
		isEP[a] = true
	}
	addrs := make([]netip.AddrPort, 0, len(pf.backends)+len(eps))
	addrs = append(addrs, eps...)
	for a := range pf.backends {
		if !isEP[a] {
			addrs = append(addrs, a)
		}
	}
	slices.SortFunc(addrs, netip.AddrPort.Compare)
	addrs = slices.Compact(addrs)
	var counted []int
	for _, a := range addrs {
		c := pf.backends[a]
		if c == nil {
			c = &flowCounts{}
		}
		cs.Backends = append(cs.Backends, ConntrackBackend{Address: a.String(), Endpoint: isEP[a], Established: c.established, Other: c.other})
		cs.Established += c.established
		cs.Other += c.other
		if eps == nil || isEP[a] {
			counted = append(counted, c.established)
		}
	}
	cs.Max, cs.Mean, cs.Imbalance = imbalance(counted)
	return cs
}

// imbalance returns max, mean and max/mean of counts (0 ratio when the
// mean is 0).
func imbalance(counts []int) (int, float64, float64) {
	if len(counts) == 0 {
		return 0, 0, 0
	}
	sum, m := 0, 0
	for _, c := range counts {
		sum += c
		m = max(m, c)
	}
	mean := float64(sum) / float64(len(counts))
	if mean == 0 {
		return m, 0, 0
	}
	return m, mean, float64(m) / mean
}
