package ipvs

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/switchyard/switchyard/dataplane"
)

// DesiredState is what the kernel should hold for a model State.
type DesiredState struct {
	// Addresses belong on the dummy link: every ClusterIP, ExternalIP and
	// load-balancer IP of every Service port (all families). Sorted.
	Addresses []netip.Addr
	// VirtualServers by key.
	VirtualServers map[Key]*DesiredVS
	// Conflicts lists keys claimed by more than one Service port. Sorted by
	// key, then loser.
	Conflicts []Conflict
}

// DesiredVS is one wanted virtual server.
type DesiredVS struct {
	// Service is the Service port that owns the key (the first by
	// ServicePortName order when several claim it).
	Service   dataplane.ServicePortName
	Scheduler string
	Flags     ServiceFlags
	Timeout   uint32
	// NodePort is set for virtual servers on node addresses.
	NodePort bool
	// RealServers maps backend address to weight; weight 0 keeps existing
	// connections and takes no new ones. Weight 1: the endpoints the
	// traffic policy selects. Weight 0: endpoints the policy would pick
	// from (this node's under a Local policy, the hinted ones under
	// topology hints, else all) that are not selected because they are not
	// ready or terminating. Endpoints outside that pool (another node's,
	// another zone's) are left out, so a real server for one drains like a
	// removed endpoint's.
	RealServers map[netip.AddrPort]int
	// ConnLimit is switchyard.io/max-connections-per-backend (TCP ports
	// only; 0: none): every real server gets it as both its upper and its
	// lower threshold, so IPVS stops scheduling to a real server that
	// holds ConnLimit connections of this virtual server and resumes as
	// soon as one of them expires (the default lower threshold, 3/4 of
	// the upper, would keep a full backend out for longer). The kernel
	// counts per virtual server and per node: a backend behind a cluster
	// IP and a NodePort has a limit on each. It counts active and
	// inactive connections, so a closed connection is counted until its
	// IPVS entry expires (TIME_WAIT: 2 minutes after a FIN, CLOSE: 10 s
	// after a reset). With every real server full the kernel has no
	// destination and answers the client's SYN with ICMP port
	// unreachable: connection refused, not a hang.
	ConnLimit uint32
}

// realServer returns the kernel object for the real server addr of
// weight w.
func (d *DesiredVS) realServer(addr netip.AddrPort, w int) RealServer {
	return RealServer{Addr: addr, Weight: w, Forward: ForwardMasq, UpperThreshold: d.ConnLimit, LowerThreshold: d.ConnLimit}
}

// VirtualServer returns the kernel object for key k.
func (d *DesiredVS) VirtualServer(k Key) VirtualServer {
	return VirtualServer{Key: k, Scheduler: d.Scheduler, Flags: d.Flags, Timeout: d.Timeout}
}

// Conflict is a key two Service ports want; Winner got it.
type Conflict struct {
	Key    Key
	Winner dataplane.ServicePortName
	Loser  dataplane.ServicePortName
}

func (c Conflict) String() string {
	return fmt.Sprintf("%s wanted by %s and %s; %s wins", c.Key, c.Winner, c.Loser, c.Winner)
}

// Desired computes the virtual servers and dummy-link addresses for st.
// nodeIPs are the addresses that get NodePort virtual servers (see
// NodePortIPs). It is a pure function.
//
// Each Service port gets one virtual server per ClusterIP, ExternalIP and
// load-balancer IP on its port, and, when it has a NodePort, one per node IP;
// ExternalIPs, LB IPs and node IPs of a family the Service's ClusterIPs do
// not have are ignored.
//
// Real servers come from dataplane.CategorizeEndpoints for st.NodeName and
// st.NodeZone, applied to the endpoints of the virtual server's family only
// (IPVS masquerading cannot cross families; kube-proxy runs one proxier per
// family): ClusterIP virtual servers use the Cluster set, or the Local set
// under internalTrafficPolicy Local; ExternalIP, load-balancer IP and
// NodePort virtual servers use the Local set under externalTrafficPolicy
// Local, else the Cluster set. Selected endpoints weigh 1, the other
// endpoints of the same pool 0 (see DesiredVS.RealServers).
//
// As kube-proxy's IPVS mode (kubernetes#97081), an external virtual server
// of an externalTrafficPolicy Local port whose Local set is empty uses the
// Cluster set instead (weighed over the Cluster pool), so that this node's
// pods and the node itself still reach the Service through its external
// addresses (kube-proxy's "short circuit"). Traffic from elsewhere must not
// reach those remote endpoints (it would lose its client address, and the
// endpoint's reply would bypass this node): package iptables drops it
// before IPVS sees it, which the IPVS dataplane runs first, and masquerades
// the node's own.
func Desired(st *dataplane.State, nodeIPs []netip.Addr, cfg Config) DesiredState {
	return desired(st, nodeIPs, cfg, nil)
}

// desired is Desired; when idx is not nil it also records every claim in
// it (idx must be empty), for later partial syncs.
func desired(st *dataplane.State, nodeIPs []netip.Addr, cfg Config, idx *desiredIndex) DesiredState {
	ds := DesiredState{VirtualServers: map[Key]*DesiredVS{}}
	addrs := map[netip.Addr]bool{}
	var fes []frontend
	for _, name := range st.SortedServicePorts() {
		sp := st.Services[name]
		if sp == nil {
			if idx != nil {
				idx.recordPort(name, nil)
			}
			continue
		}
		pd := newPortDesired(name, sp, st, cfg)
		fes = appendFrontends(fes[:0], sp, nodeIPs)
		var claimed []frontend // idx only: fes without repeats
		for _, fe := range fes {
			k := fe.key
			if !fe.nodePort {
				addrs[k.IP] = true
			}
			if idx != nil {
				if cl := idx.keys[k]; len(cl) == 0 || cl[len(cl)-1].name != name {
					idx.keys[k] = append(cl, claimant{name: name, nodePort: fe.nodePort, external: fe.external})
					claimed = append(claimed, fe)
				}
			}
			if prev, taken := ds.VirtualServers[k]; taken {
				if prev.Service != name {
					ds.Conflicts = append(ds.Conflicts, Conflict{Key: k, Winner: prev.Service, Loser: name})
				}
				continue
			}
			ds.VirtualServers[k] = pd.virtualServer(k, fe.nodePort, fe.external)
		}
		if idx != nil {
			idx.recordPort(name, claimed)
		}
	}
	ds.Addresses = slices.SortedFunc(maps.Keys(addrs), netip.Addr.Compare)
	sortConflicts(ds.Conflicts)
	if idx != nil {
		idx.entries = len(st.Services)
	}
	return ds
}

func sortConflicts(cs []Conflict) {
	slices.SortFunc(cs, func(a, b Conflict) int {
		if c := a.Key.Compare(b.Key); c != 0 {
			return c
		}
		return a.Loser.Compare(b.Loser)
	})
}

// frontend is one key a Service port claims. nodePort marks keys on node
// IPs (the NodePort); external marks keys external traffic arrives on
// (ExternalIPs, LB IPs and NodePorts), which follow externalTrafficPolicy.
type frontend struct {
	key      Key
	nodePort bool
	external bool
}

// appendFrontends appends the keys sp claims, in claim order: ClusterIPs,
// ExternalIPs and LB IPs on the Service port, then node IPs on the NodePort.
// A key may repeat (an ExternalIP that is also a ClusterIP, a node IP that
// is also an ExternalIP on a NodePort equal to the port); its first claim
// counts. The non-NodePort keys' addresses are the ones sp wants on the
// dummy link.
func appendFrontends(dst []frontend, sp *dataplane.ServicePort, nodeIPs []netip.Addr) []frontend {
	var has4, has6 bool // families of the ClusterIPs
	for _, ip := range sp.ClusterIPs {
		if ip.Is4() {
			has4 = true
		} else {
			has6 = true
		}
	}
	family := func(ip netip.Addr) bool {
		if ip.Is4() {
			return has4
		}
		return has6
	}
	proto := sp.Name.Protocol
	for g, group := range [...][]netip.Addr{sp.ClusterIPs, sp.ExternalIPs, sp.LoadBalancerIPs} {
		for _, ip := range group {
			ip = ip.Unmap()
			if !family(ip) {
				// Like kube-proxy's per-family proxiers: an ExternalIP
				// or LB IP of a family the Service does not have
				// could never reach one of its endpoints.
				continue
			}
			dst = append(dst, frontend{key: Key{IP: ip, Protocol: proto, Port: sp.Port}, external: g > 0})
		}
	}
	if sp.NodePort != 0 {
		for _, ip := range nodeIPs {
			if family(ip) {
				dst = append(dst, frontend{key: Key{IP: ip.Unmap(), Protocol: proto, Port: sp.NodePort}, nodePort: true, external: true})
			}
		}
	}
	return dst
}

// portDesired builds the DesiredVS of the keys one Service port wins.
type portDesired struct {
	tmpl     DesiredVS
	sp       *dataplane.ServicePort
	eps      []dataplane.Endpoint
	nodeName string
	zone     string
	// byFamily caches the real servers of each family ([0] IPv4, [1]
	// IPv6), computed on first use.
	byFamily [2]*familyRealServers
}

// familyRealServers are the weighted real servers of one family for
// internal (ClusterIP) and external (ExternalIP, LB IP, NodePort) keys.
type familyRealServers struct {
	internal, external map[netip.AddrPort]int
}

// RebalanceScheduler is the scheduler of Services that opt into the
// connection rebalancer, unless their scheduler annotation says otherwise:
// weighted least-connection.
const RebalanceScheduler = "wlc"

func newPortDesired(name dataplane.ServicePortName, sp *dataplane.ServicePort, st *dataplane.State, cfg Config) portDesired {
	pd := portDesired{
		tmpl:     DesiredVS{Service: name, Scheduler: cfg.Scheduler},
		sp:       sp,
		eps:      st.Endpoints[name],
		nodeName: st.NodeName,
		zone:     st.NodeZone,
	}
	if pd.tmpl.Scheduler == "" {
		pd.tmpl.Scheduler = DefaultScheduler
	}
	if sp.Rebalance != nil {
		// A Service that asked for rebalancing gets its new (and
		// reconnecting) connections on the least-loaded real servers,
		// so shed clients land on the new pods.
		pd.tmpl.Scheduler = RebalanceScheduler
	}
	if sp.Scheduler != "" {
		pd.tmpl.Scheduler = sp.Scheduler
	}
	// UDP and SCTP "connections" in IPVS are timers refreshed by every
	// packet: a limit would count flows long gone. The other dataplanes
	// limit TCP only too.
	if sp.MaxConnectionsPerBackend > 0 && name.Protocol == dataplane.TCP {
		pd.tmpl.ConnLimit = uint32(sp.MaxConnectionsPerBackend)
	}
	if sp.SessionAffinityTimeout > 0 {
		pd.tmpl.Flags |= FlagPersistent
		pd.tmpl.Timeout = uint32(min(sp.SessionAffinityTimeout.Seconds(), float64(^uint32(0))))
		if pd.tmpl.Timeout == 0 {
			pd.tmpl.Timeout = 1
		}
	}
	return pd
}

func (pd *portDesired) virtualServer(k Key, nodePort, external bool) *DesiredVS {
	d := pd.tmpl
	d.NodePort = nodePort
	fam := 0
	if !k.IP.Is4() {
		fam = 1
	}
	if pd.byFamily[fam] == nil {
		pd.byFamily[fam] = pd.realServers(k.IP.Is4())
	}
	rs := pd.byFamily[fam].internal
	if external {
		rs = pd.byFamily[fam].external
	}
	d.RealServers = maps.Clone(rs)
	return &d
}

// realServers applies dataplane.CategorizeEndpoints to the endpoints of
// one family and weighs them (see Desired).
func (pd *portDesired) realServers(v4 bool) *familyRealServers {
	var eps []dataplane.Endpoint
	for _, e := range pd.eps {
		if e.Addr.Addr().Unmap().Is4() == v4 {
			eps = append(eps, e)
		}
	}
	sets := dataplane.CategorizeEndpoints(pd.sp, eps, pd.nodeName, pd.zone)
	// The pools the sets are chosen from: a listed endpoint of the pool
	// that is not chosen (not ready, terminating) weighs 0.
	localPool := func(e dataplane.Endpoint) bool { return e.NodeName != "" && e.NodeName == pd.nodeName }
	clusterPool := func(e dataplane.Endpoint) bool {
		switch sets.TopologyMode {
		case dataplane.TopologyPreferSameNode:
			return slices.Contains(e.NodeHints, pd.nodeName)
		case dataplane.TopologyPreferSameZone:
			return slices.Contains(e.ZoneHints, pd.zone)
		}
		return true
	}
	weigh := func(local bool) map[netip.AddrPort]int {
		selected, pool := sets.Cluster, clusterPool
		if local {
			selected, pool = sets.Local, localPool
		}
		m := make(map[netip.AddrPort]int, len(eps))
		for _, e := range eps {
			if pool(e) {
				m[e.Addr] = 0
			}
		}
		for _, e := range selected {
			m[e.Addr] = 1
		}
		return m
	}
	// External traffic without a local endpoint falls back to the
	// Cluster endpoints (see Desired). Internal traffic does not:
	// kube-proxy's IPVS mode falls back for a Local internal policy too
	// (when the port is externally accessible, so that a Cluster set
	// exists), but its iptables and nftables modes and switchyard's
	// nftables dataplane drop that traffic, and nothing here could tell
	// this node's pods, which internalTrafficPolicy Local confines to it,
	// from any other client of the ClusterIP.
	externalLocal := pd.sp.ExternalPolicyLocal
	if externalLocal && len(sets.Local) == 0 && len(sets.Cluster) > 0 && pd.sp.UsesClusterEndpoints() {
		externalLocal = false
	}
	out := &familyRealServers{internal: weigh(pd.sp.InternalPolicyLocal)}
	if pd.sp.InternalPolicyLocal == externalLocal {
		out.external = out.internal
	} else {
		out.external = weigh(externalLocal)
	}
	return out
}

// ServiceKeys maps each Service to the keys it owns.
func (ds DesiredState) ServiceKeys() map[dataplane.ServiceName][]Key {
	out := map[dataplane.ServiceName][]Key{}
	for k, d := range ds.VirtualServers {
		out[d.Service.ServiceName] = append(out[d.Service.ServiceName], k)
	}
	for _, ks := range out {
		slices.SortFunc(ks, Key.Compare)
	}
	return out
}

// Dump renders the desired state one line per object, sorted, for golden
// tests and yardctl.
func (ds DesiredState) Dump() string {
	var b strings.Builder
	for _, a := range ds.Addresses {
		b.WriteString("address " + a.String() + "\n")
	}
	for _, k := range slices.SortedFunc(maps.Keys(ds.VirtualServers), Key.Compare) {
		d := ds.VirtualServers[k]
		b.WriteString(d.VirtualServer(k).header())
		if d.NodePort {
			b.WriteString(" nodeport")
		}
		b.WriteString(" svc=" + d.Service.String() + "\n")
		for _, a := range slices.SortedFunc(maps.Keys(d.RealServers), netip.AddrPort.Compare) {
			fmt.Fprintf(&b, "  rs %s weight=%d\n", a, d.RealServers[a])
		}
	}
	for _, c := range ds.Conflicts {
		b.WriteString("conflict " + c.String() + "\n")
	}
	return b.String()
}
