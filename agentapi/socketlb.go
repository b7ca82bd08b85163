package agentapi

import (
	"net/netip"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/ebpf"
)

// SocketLB is the BPF socket load balancer as the API reads it;
// *ebpf.SocketLB is one. Its methods may run concurrently with syncs.
type SocketLB interface {
	// Connections are the sockops counts of established TCP connections
	// per backend address and direction.
	Connections() ([]ebpf.BackendConnections, error)
	// Sockets are the counted sockets, oldest first.
	Sockets() ([]ebpf.Socket, error)
}

// AddBPFConnections fills in the BPFConnections of every backend of the
// TCP ports of sl from conns (zero for a backend without a count); UDP and
// SCTP ports keep null: sockops counts TCP only.
func AddBPFConnections(sl *ServiceList, conns []ebpf.BackendConnections) {
	counts := map[string]*BPFConnections{}
	for _, c := range conns {
		k := c.Backend.String()
		bc := counts[k]
		if bc == nil {
			bc = &BPFConnections{}
			counts[k] = bc
		}
		if c.Direction == ebpf.In {
			bc.In += c.Count
		} else {
			bc.Out += c.Count
		}
	}
	for i := range sl.Services {
		s := &sl.Services[i]
		if s.Protocol != string(dataplane.TCP) {
			continue
		}
		for j := range s.Backends {
			b := &s.Backends[j]
			bc := BPFConnections{}
			if c := counts[b.Address]; c != nil {
				bc = *c
			}
			b.BPFConnections = &bc
		}
	}
}

// SocketsFrom converts the socket load balancer's sockets for the API.
// With filtered set, only the sockets of the Service ports in names are
// kept: those translated for one of them, and those whose backend (the
// remote address going out, the local one coming in) is one of their
// endpoints.
func SocketsFrom(st *dataplane.State, names []dataplane.ServicePortName, filtered bool, socks []ebpf.Socket) []SocketLBSocket {
	selected := map[dataplane.ServicePortName]bool{}
	endpoints := map[netip.AddrPort]bool{}
	for _, n := range names {
		selected[n] = true
		if n.Protocol != dataplane.TCP {
			continue
		}
		for _, e := range st.Endpoints[n] {
			endpoints[e.Addr] = true
		}
	}
	out := []SocketLBSocket{}
	for _, s := range socks {
		translated := s.Service != (dataplane.ServicePortName{})
		if filtered {
			backend := s.Remote
			if s.Direction == ebpf.In {
				backend = s.Local
			}
			if !(translated && selected[s.Service]) && !endpoints[backend] {
				continue
			}
		}
		sock := SocketLBSocket{
			Cookie:      s.Cookie,
			Direction:   string(s.Direction),
			Local:       s.Local.String(),
			Remote:      s.Remote.String(),
			Established: s.Established.UTC(),
			NetnsCookie: s.NetnsCookie,
		}
		if s.Frontend.IsValid() {
			sock.Frontend = s.Frontend.String()
		}
		if translated {
			sock.Service = s.Service.String()
		}
		out = append(out, sock)
	}
	return out
}
