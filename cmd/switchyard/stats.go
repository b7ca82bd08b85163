package main

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netns"

	"github.com/switchyard/switchyard/agentapi"
	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/dataplane/metrics"
	"github.com/switchyard/switchyard/ebpf"
	"github.com/switchyard/switchyard/ipvs"
)

// ipvsTrafficReader reads the whole IPVS table with its counters (one
// dump, as `ipvsadm -Ln --stats`) into cache: the virtual servers
// switchyard owns, with the Service that wants each from the Proxier's
// snapshot of its last sync. It runs in the metrics refresher, never on a
// scrape.
func ipvsTrafficReader(p *ipvs.Proxier, cache *metrics.TrafficCache) metrics.RefreshFunc {
	return metrics.RefreshFunc{Name: "ipvs-stats", Read: func(context.Context) error {
		insp, err := p.Inspect(nil)
		if err != nil {
			return fmt.Errorf("read the IPVS table: %w", err)
		}
		if !insp.Stats {
			return fmt.Errorf("read the IPVS table: the handle reads no counters")
		}
		cache.Store(ipvsTraffic(insp.VirtualServers, p.Snapshot()))
		return nil
	}}
}

// ipvsTraffic turns the owned virtual servers of a table read into
// metrics, per virtual server and per real server.
func ipvsTraffic(table []ipvs.InspectedVS, snap []ipvs.VirtualServer) []metrics.Traffic {
	service := make(map[ipvs.Key]string, len(snap))
	for _, vs := range snap {
		service[vs.Key] = vs.Service
	}
	var out []metrics.Traffic
	for _, vs := range table {
		if !vs.Owned || vs.FWMark != 0 || vs.Stats == nil {
			continue
		}
		fe := vs.Key.String()
		out = append(out, metrics.Traffic{Service: service[vs.Key], Frontend: fe,
			PacketsIn: vs.Stats.PacketsIn, PacketsOut: vs.Stats.PacketsOut, BytesIn: vs.Stats.BytesIn, BytesOut: vs.Stats.BytesOut})
		for _, rs := range vs.RealServers {
			if rs.Stats == nil {
				continue
			}
			out = append(out, metrics.Traffic{Service: service[vs.Key], Frontend: fe, Backend: rs.Addr.String(),
				PacketsIn: rs.Stats.PacketsIn, PacketsOut: rs.Stats.PacketsOut, BytesIn: rs.Stats.BytesIn, BytesOut: rs.Stats.BytesOut})
		}
	}
	return out
}

// addConntrackMetrics registers the conntrack metrics (and, withConns,
// backend connections from conntrack) and returns their refresh function
// and what closes its netlink socket.
func addConntrackMetrics(m *metrics.Metrics, cfg *config, view func(func(*dataplane.State)), withConns bool) (metrics.RefreshFunc, func(), error) {
	flows, err := agentapi.NewNetlinkFlows(netns.None())
	if err != nil {
		return metrics.RefreshFunc{}, nil, err
	}
	entries := &metrics.Cache[[]metrics.ConntrackEntries]{}
	m.AddConntrackSource(entries.Load, cfg.metricsPerBackend, cfg.metricsBackendCap)
	var conns *metrics.Cache[[]metrics.BackendConns]
	if withConns {
		conns = &metrics.Cache[[]metrics.BackendConns]{}
		m.AddBackendSource(conns.Load, cfg.metricsPerBackend, cfg.metricsBackendCap)
	}
	return conntrackReader(flows, view, entries, conns), flows.Close, nil
}

// conntrackReader lists the conntrack table (the whole of it: costly on a
// busy node, so only here, every --metrics-refresh-interval, and not at
// all with --metrics-conntrack=false) and attributes the DNATed entries to
// the Service ports of the model as yardctl conntrack does
// (agentapi.FlowIndex). With conns set (nftables: no other source of
// connection counts) it also fills the backend connection metrics:
// active = established TCP, UDP and SCTP entries; inactive = other TCP
// states (yardctl's established and other).
func conntrackReader(flows agentapi.FlowLister, view func(func(*dataplane.State)),
	entries *metrics.Cache[[]metrics.ConntrackEntries], conns *metrics.Cache[[]metrics.BackendConns]) metrics.RefreshFunc {
	return metrics.RefreshFunc{Name: "conntrack", Read: func(context.Context) error {
		var idx *agentapi.FlowIndex
		view(func(st *dataplane.State) {
			if st != nil {
				idx = agentapi.NewFlowIndex(st)
			}
		})
		if idx == nil {
			return nil // not synced yet
		}
		fs, err := flows.ListFlows()
		if err != nil {
			return err
		}
		e, c := conntrackMetrics(idx, fs)
		entries.Store(e)
		if conns != nil {
			conns.Store(c)
		}
		return nil
	}}
}

// conntrackMetrics counts flows by Service port, frontend, backend and
// state, in a stable order.
func conntrackMetrics(idx *agentapi.FlowIndex, flows []agentapi.Flow) ([]metrics.ConntrackEntries, []metrics.BackendConns) {
	type beKey struct{ service, frontend, backend string }
	type stKey struct {
		beKey
		state string
	}
	states := map[stKey]int{}
	conns := map[beKey]*metrics.BackendConns{}
	for _, f := range flows {
		name, ok := idx.Lookup(f)
		if !ok {
			continue
		}
		k := beKey{name.String(), f.Frontend(), f.Reply.Src.String()}
		state := f.TCPState
		if f.Protocol != dataplane.TCP || state == "" {
			state = string(f.Protocol)
		}
		states[stKey{k, state}]++
		c := conns[k]
		if c == nil {
			c = &metrics.BackendConns{Service: k.service, Frontend: k.frontend, Backend: k.backend}
			conns[k] = c
		}
		if f.Established() {
			c.Active++
		} else {
			c.Inactive++
		}
	}
	entries := make([]metrics.ConntrackEntries, 0, len(states))
	for k, n := range states {
		entries = append(entries, metrics.ConntrackEntries{Service: k.service, Frontend: k.frontend, Backend: k.backend, State: k.state, Count: n})
	}
	slices.SortFunc(entries, func(a, b metrics.ConntrackEntries) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), cmp.Compare(a.Frontend, b.Frontend), cmp.Compare(a.Backend, b.Backend), cmp.Compare(a.State, b.State))
	})
	out := make([]metrics.BackendConns, 0, len(conns))
	for _, c := range conns {
		out = append(out, *c)
	}
	slices.SortFunc(out, func(a, b metrics.BackendConns) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), cmp.Compare(a.Frontend, b.Frontend), cmp.Compare(a.Backend, b.Backend))
	})
	return entries, out
}

// socketLBReader reads the socket load balancer's per-backend connection
// counts (one pass over a BPF map) into cache, attributed to the Service
// ports whose endpoints the backends are (bpfConnectionMetrics). It runs
// in the metrics refresher, never on a scrape.
func socketLBReader(lb agentapi.SocketLB, view func(func(*dataplane.State)), cache *metrics.Cache[[]metrics.BPFConnections]) metrics.RefreshFunc {
	return metrics.RefreshFunc{Name: "socket-lb", Read: func(context.Context) error {
		conns, err := lb.Connections()
		if err != nil {
			return fmt.Errorf("read socket-LB connection counts: %w", err)
		}
		synced := false
		var out []metrics.BPFConnections
		view(func(st *dataplane.State) {
			if st != nil {
				synced = true
				out = bpfConnectionMetrics(st, conns)
			}
		})
		if synced {
			cache.Store(out)
		}
		return nil
	}}
}

// bpfConnectionMetrics attributes the counts to the TCP Service ports of
// st whose endpoints the backends are (a backend of several ports counts
// under each; one of none, such as a removed endpoint still holding
// connections, under Service ""), in a stable order.
func bpfConnectionMetrics(st *dataplane.State, conns []ebpf.BackendConnections) []metrics.BPFConnections {
	ports := map[netip.AddrPort][]string{}
	for _, name := range st.SortedServicePorts() {
		if name.Protocol != dataplane.TCP {
			continue
		}
		for _, e := range st.Endpoints[name] {
			if !slices.Contains(ports[e.Addr], name.String()) {
				ports[e.Addr] = append(ports[e.Addr], name.String())
			}
		}
	}
	var out []metrics.BPFConnections
	for _, c := range conns {
		names := ports[c.Backend]
		if len(names) == 0 {
			names = []string{""}
		}
		for _, n := range names {
			out = append(out, metrics.BPFConnections{Service: n, Backend: c.Backend.String(), Direction: string(c.Direction), Count: c.Count})
		}
	}
	slices.SortFunc(out, func(a, b metrics.BPFConnections) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), cmp.Compare(a.Backend, b.Backend), cmp.Compare(a.Direction, b.Direction))
	})
	return out
}
