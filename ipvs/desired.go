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
	// connections and takes no new ones.
	RealServers map[netip.AddrPort]int
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
// not have are ignored. Real servers come from
// dataplane.ClusterEndpoints, limited to the virtual server's family (IPVS
// masquerading cannot cross families): usable endpoints weigh 1, the others
// the slices still list weigh 0 so their connections drain.
func Desired(st *dataplane.State, nodeIPs []netip.Addr, cfg Config) DesiredState {
	ds := DesiredState{VirtualServers: map[Key]*DesiredVS{}}
	addrs := map[netip.Addr]bool{}
	defaultSched := cfg.Scheduler
	if defaultSched == "" {
		defaultSched = DefaultScheduler
	}
	for _, name := range st.SortedServicePorts() {
		sp := st.Services[name]
		if sp == nil {
			continue
		}
		weighted := dataplane.ClusterEndpoints(st.Endpoints[name])
		proto := name.Protocol
		tmpl := DesiredVS{Service: name, Scheduler: defaultSched}
		if sp.Scheduler != "" {
			tmpl.Scheduler = sp.Scheduler
		}
		if sp.SessionAffinityTimeout > 0 {
			tmpl.Flags |= FlagPersistent
			tmpl.Timeout = uint32(min(sp.SessionAffinityTimeout.Seconds(), float64(^uint32(0))))
			if tmpl.Timeout == 0 {
				tmpl.Timeout = 1
			}
		}
		claim := func(k Key, nodePort bool) {
			if prev, taken := ds.VirtualServers[k]; taken {
				if prev.Service != name {
					ds.Conflicts = append(ds.Conflicts, Conflict{Key: k, Winner: prev.Service, Loser: name})
				}
				return
			}
			d := tmpl
			d.NodePort = nodePort
			d.RealServers = map[netip.AddrPort]int{}
			for _, e := range weighted {
				if sameFamily(e.Addr.Addr(), k.IP) {
					d.RealServers[e.Addr] = e.Weight
				}
			}
			ds.VirtualServers[k] = &d
		}
		families := map[bool]bool{} // is4 → present
		for _, ip := range sp.ClusterIPs {
			families[ip.Is4()] = true
		}
		for _, group := range [][]netip.Addr{sp.ClusterIPs, sp.ExternalIPs, sp.LoadBalancerIPs} {
			for _, ip := range group {
				ip = ip.Unmap()
				if !families[ip.Is4()] {
					// Like kube-proxy's per-family proxiers: an ExternalIP
					// or LB IP of a family the Service does not have
					// could never reach one of its endpoints.
					continue
				}
				addrs[ip] = true
				claim(Key{IP: ip, Protocol: proto, Port: sp.Port}, false)
			}
		}
		if sp.NodePort != 0 {
			for _, ip := range nodeIPs {
				if families[ip.Is4()] {
					claim(Key{IP: ip.Unmap(), Protocol: proto, Port: sp.NodePort}, true)
				}
			}
		}
	}
	ds.Addresses = slices.SortedFunc(maps.Keys(addrs), netip.Addr.Compare)
	slices.SortFunc(ds.Conflicts, func(a, b Conflict) int {
		if c := a.Key.Compare(b.Key); c != 0 {
			return c
		}
		return a.Loser.Compare(b.Loser)
	})
	return ds
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
