package agentapi

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/ipvs"
	"github.com/switchyard/switchyard/nftables"
)

// Dataplane kinds.
const (
	KindIPVS     = "ipvs"
	KindNFTables = "nftables"
)

// Inspector is the agent's kernel dataplane as the API sees it. Its
// methods may be called from any goroutine, concurrently with syncs; st is
// the server's private copy of the model.
type Inspector interface {
	// Kind is KindIPVS or KindNFTables.
	Kind() string
	// Scheduler names how new connections of sp pick a backend.
	Scheduler(sp *dataplane.ServicePort) string
	// Backends reads, from the kernel, the weights and connection counts
	// of the backends of the named ports. A nil map means the dataplane
	// keeps none (nftables): the server then weighs backends from the
	// model and counts connections from conntrack.
	Backends(st *dataplane.State, names []dataplane.ServicePortName) (map[dataplane.ServicePortName][]KernelBackend, error)
	// Table reads the kernel for yardctl ipvs or nft, compared with the
	// desired state for st: an *IPVSTable or an *NFTables.
	Table(st *dataplane.State) (any, error)
	// Route lists the kernel objects a new connection to dst of Service
	// port name meets (nodePort: dst is a node address and the port's
	// NodePort).
	Route(st *dataplane.State, name dataplane.ServicePortName, dst netip.AddrPort, nodePort bool) []string
}

// Weigher is implemented by Inspectors whose dataplane can say which
// backends a frontend's new connections may reach (weight > 0); trace then
// reports the dataplane's choice where it differs from the traffic
// policy's alone.
type Weigher interface {
	// Weights returns the backends and weights for dst of Service port
	// name, and false when the dataplane has nothing for dst.
	Weights(st *dataplane.State, name dataplane.ServicePortName, dst netip.AddrPort) (map[netip.AddrPort]int, bool)
}

// KernelBackend is a backend as the kernel dataplane has it, over all the
// frontends of one Service port.
type KernelBackend struct {
	Addr             netip.AddrPort
	Weight           int // the highest
	Active, Inactive int // summed
}

// NewIPVSInspector inspects the IPVS dataplane p.
func NewIPVSInspector(p *ipvs.Proxier) Inspector { return ipvsInspector{p} }

type ipvsInspector struct{ p *ipvs.Proxier }

func (i ipvsInspector) Kind() string { return KindIPVS }

func (i ipvsInspector) Scheduler(sp *dataplane.ServicePort) string {
	if sp.Scheduler != "" {
		return sp.Scheduler
	}
	return i.p.DefaultScheduler()
}

func (i ipvsInspector) Backends(st *dataplane.State, names []dataplane.ServicePortName) (map[dataplane.ServicePortName][]KernelBackend, error) {
	vss, err := i.p.ServiceVirtualServers(st, names)
	if err != nil {
		return nil, fmt.Errorf("read ipvs: %w", err)
	}
	out := make(map[dataplane.ServicePortName][]KernelBackend, len(names))
	for _, n := range names {
		byAddr := map[netip.AddrPort]*KernelBackend{}
		var order []netip.AddrPort
		for _, vs := range vss[n] {
			for _, rs := range vs.RealServers {
				kb := byAddr[rs.Addr]
				if kb == nil {
					kb = &KernelBackend{Addr: rs.Addr}
					byAddr[rs.Addr] = kb
					order = append(order, rs.Addr)
				}
				kb.Weight = max(kb.Weight, rs.Weight)
				kb.Active += rs.ActiveConns
				kb.Inactive += rs.InactiveConns
			}
		}
		kbs := []KernelBackend{}
		for _, a := range order {
			kbs = append(kbs, *byAddr[a])
		}
		out[n] = kbs
	}
	return out, nil
}

func (i ipvsInspector) Table(st *dataplane.State) (any, error) {
	in, err := i.p.Inspect(st)
	if err != nil {
		return nil, fmt.Errorf("inspect ipvs: %w", err)
	}
	return IPVSTableFrom(in, SourceAgent), nil
}

func (i ipvsInspector) Route(st *dataplane.State, name dataplane.ServicePortName, dst netip.AddrPort, nodePort bool) []string {
	k := ipvs.Key{IP: dst.Addr().Unmap(), Protocol: name.Protocol, Port: dst.Port()}
	vs, owned, err := i.p.ReadVirtualServer(k)
	switch {
	case ipvs.IsNotFound(err):
		return []string{"ipvs virtual server " + k.String() + ": not in the kernel"}
	case err != nil:
		return []string{"ipvs virtual server " + k.String() + ": " + err.Error()}
	}
	line := "ipvs virtual server " + k.String() + " scheduler " + vs.Scheduler
	if vs.Flags&ipvs.FlagPersistent != 0 {
		line += fmt.Sprintf(" persistent %ds", vs.Timeout)
	}
	if !owned {
		line += " (not owned by switchyard)"
	}
	out := []string{line}
	slices.SortFunc(vs.RealServers, func(a, b ipvs.RealServer) int { return a.Addr.Compare(b.Addr) })
	for _, rs := range vs.RealServers {
		out = append(out, fmt.Sprintf("  -> %s %s weight %d active %d inactive %d", rs.Addr, rs.Forward, rs.Weight, rs.ActiveConns, rs.InactiveConns))
	}
	return out
}

func (i ipvsInspector) Weights(st *dataplane.State, name dataplane.ServicePortName, dst netip.AddrPort) (map[netip.AddrPort]int, bool) {
	w, ok, err := i.p.DesiredRealServers(st, ipvs.Key{IP: dst.Addr().Unmap(), Protocol: name.Protocol, Port: dst.Port()})
	if err != nil {
		return nil, false
	}
	return w, ok
}

// NewNFTablesInspector inspects the nftables dataplane p.
func NewNFTablesInspector(p *nftables.Proxier) Inspector { return nftInspector{p} }

type nftInspector struct{ p *nftables.Proxier }

func (i nftInspector) Kind() string                            { return KindNFTables }
func (i nftInspector) Scheduler(*dataplane.ServicePort) string { return "random" }

func (i nftInspector) Backends(*dataplane.State, []dataplane.ServicePortName) (map[dataplane.ServicePortName][]KernelBackend, error) {
	return nil, nil
}

func (i nftInspector) Table(st *dataplane.State) (any, error) {
	in, err := i.p.Inspect(st)
	if err != nil {
		return nil, fmt.Errorf("inspect nftables: %w", err)
	}
	return NFTablesFrom(in, SourceAgent), nil
}

func (i nftInspector) Route(st *dataplane.State, name dataplane.ServicePortName, dst netip.AddrPort, nodePort bool) []string {
	return i.p.Route(st, name, dst, nodePort)
}

// FindInspector returns an Inspector for the first IPVS or nftables
// Proxier in dp, looking inside dataplane.Chains: the agent's dataplane is
// a chain of parts. It returns nil when there is none.
func FindInspector(dp dataplane.Dataplane) Inspector {
	switch d := dp.(type) {
	case *ipvs.Proxier:
		return NewIPVSInspector(d)
	case *nftables.Proxier:
		return NewNFTablesInspector(d)
	case dataplane.Chain:
		for _, part := range d {
			if i := FindInspector(part); i != nil {
				return i
			}
		}
	}
	return nil
}

// errNoState is answered before the agent's first sync.
var errNoState = errors.New("the agent has not synced yet")

// addrPortString formats an address and port ("[fd00::1]:80").
func addrPortString(a netip.Addr, port uint16) string { return netip.AddrPortFrom(a, port).String() }

// policyName names a traffic policy.
func policyName(local bool) string {
	if local {
		return "Local"
	}
	return "Cluster"
}

func addrStrings(as []netip.Addr) []string {
	out := make([]string, 0, len(as))
	for _, a := range as {
		out = append(out, a.String())
	}
	return out
}

// ParseServiceName accepts "namespace/name" or "name" (any namespace).
func ParseServiceName(s string) (namespace, name string) {
	if ns, n, ok := strings.Cut(s, "/"); ok {
		return ns, n
	}
	return "", s
}
