package agentapi

import (
	"github.com/switchyard/switchyard/ipvs"
	"github.com/switchyard/switchyard/nftables"
)

// Sources of a dataplane view.
const (
	SourceAgent  = "agent"
	SourceKernel = "kernel"
)

// IPVSTableFrom converts an ipvs.Inspection.
func IPVSTableFrom(in *ipvs.Inspection, source string) *IPVSTable {
	out := &IPVSTable{Source: source, DriftChecked: in.DriftChecked, Stats: in.Stats, VirtualServers: []IPVSVirtualServer{}}
	for _, vs := range in.VirtualServers {
		v := IPVSVirtualServer{
			FirewallMark: vs.FWMark,
			Scheduler:    vs.Scheduler,
			Owned:        vs.Owned,
			Missing:      vs.Missing,
			Service:      vs.Service,
			Drift:        nonNil(vs.Drift),
			Stats:        ipvsStats(vs.Stats),
			RealServers:  []IPVSRealServer{},
		}
		if vs.FWMark == 0 {
			v.Address = addrPortString(vs.Key.IP, vs.Key.Port)
			v.Protocol = string(vs.Key.Protocol)
		}
		if vs.Flags&ipvs.FlagPersistent != 0 {
			v.PersistenceSeconds = vs.Timeout
		}
		for _, rs := range vs.RealServers {
			r := IPVSRealServer{
				Address:             rs.Addr.String(),
				Forward:             rs.Forward.String(),
				Weight:              rs.Weight,
				Missing:             rs.Missing,
				ActiveConnections:   rs.ActiveConns,
				InactiveConnections: rs.InactiveConns,
				UpperThreshold:      int(rs.UpperThreshold),
				LowerThreshold:      int(rs.LowerThreshold),
				Stats:               ipvsStats(rs.Stats),
			}
			if rs.Wanted {
				w := rs.DesiredWeight
				r.DesiredWeight = &w
			}
			if !rs.DrainingSince.IsZero() {
				t := rs.DrainingSince.UTC()
				r.DrainingSince = &t
			}
			v.RealServers = append(v.RealServers, r)
		}
		out.VirtualServers = append(out.VirtualServers, v)
	}
	return out
}

func ipvsStats(s *ipvs.Stats) *IPVSStats {
	if s == nil {
		return nil
	}
	return &IPVSStats{Connections: s.Connections, PacketsIn: s.PacketsIn, PacketsOut: s.PacketsOut, BytesIn: s.BytesIn, BytesOut: s.BytesOut}
}

// NFTablesFrom converts an nftables.Inspection.
func NFTablesFrom(in *nftables.Inspection, source string) *NFTables {
	out := &NFTables{Source: source, DriftChecked: in.DriftChecked, Counters: in.Counters, Tables: []NFTTable{}}
	for _, t := range in.Tables {
		tt := NFTTable{Family: t.Family, Name: t.Name, Exists: t.Exists, Drift: nonNil(t.Drift), Sets: []NFTSet{}, Chains: []NFTChain{}}
		for _, s := range t.Sets {
			tt.Sets = append(tt.Sets, NFTSet{Name: s.Name, Map: s.Map, Elements: nonNil(s.Elements)})
		}
		for _, c := range t.Chains {
			cc := NFTChain{Name: c.Name, Kind: c.Kind, Service: c.Service, Hook: c.Hook, Frontends: nonNil(c.Frontends),
				Rules: []NFTRule{}, Missing: c.Missing, Drift: nonNil(c.Drift)}
			for _, r := range c.Rules {
				rr := NFTRule{Text: r.Text}
				if r.Counter != nil {
					p, b := r.Counter.Packets, r.Counter.Bytes
					rr.Packets, rr.Bytes = &p, &b
				}
				cc.Rules = append(cc.Rules, rr)
			}
			tt.Chains = append(tt.Chains, cc)
		}
		out.Tables = append(out.Tables, tt)
	}
	return out
}

// nonNil makes JSON print [] rather than null.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
