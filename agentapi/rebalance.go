package agentapi

import (
	"maps"
	"net/netip"
	"slices"

	"github.com/switchyard/switchyard/conntrack/rebalance"
	"github.com/switchyard/switchyard/dataplane"
)

// AddRebalance adds, to each Service port of r that opted in to the
// rebalancer in st, the rebalancer's last round from statuses (a port
// that has had no round yet gets its settings only).
func AddRebalance(r *ConntrackReport, st *dataplane.State, statuses map[dataplane.ServicePortName]rebalance.Status) {
	byName := map[string]dataplane.ServicePortName{}
	for name, sp := range st.Services {
		if sp.Rebalance != nil {
			byName[name.String()] = name
		}
	}
	for i := range r.Services {
		name, ok := byName[r.Services[i].Service]
		if !ok {
			continue
		}
		spec := st.Services[name].Rebalance
		out := &ConntrackRebalance{DryRun: spec.DryRun, Tolerance: spec.Tolerance, Backends: []RebalanceBackend{}}
		if s, ok := statuses[name]; ok {
			out.LastRound, out.Outcome = s.At, s.Reason
			out.Ratio, out.RatioAfter = s.Ratio, s.RatioAfter
			out.Planned, out.Closed, out.Resets = s.Planned, s.Closed, s.Resets
			addrs := map[netip.AddrPort]bool{}
			for _, m := range []map[netip.AddrPort]int{s.Measured, s.After, s.Steer} {
				for a := range m {
					addrs[a] = true
				}
			}
			for _, a := range slices.SortedFunc(maps.Keys(addrs), netip.AddrPort.Compare) {
				out.Backends = append(out.Backends, RebalanceBackend{Address: a.String(), Connections: s.Measured[a], Expected: s.After[a], Weight: s.Steer[a]})
			}
		}
		r.Services[i].Rebalance = out
	}
}
