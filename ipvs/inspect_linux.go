package ipvs

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	libipvs "github.com/moby/ipvs"
)

var _ TableReader = (*KernelHandle)(nil)

// ReadTable implements TableReader: one dump of the virtual servers (with
// their counters) and one of each virtual server's real servers.
func (k *KernelHandle) ReadTable() ([]InspectedVS, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	svcs, err := k.h.GetServices()
	if err != nil {
		return nil, fmt.Errorf("list virtual servers: %w", err)
	}
	out := make([]InspectedVS, 0, len(svcs))
	for _, s := range svcs {
		iv := InspectedVS{FWMark: s.FWMark, Scheduler: s.SchedName, Flags: ServiceFlags(s.Flags) &^ flagHashed,
			Timeout: s.Timeout, Stats: libStats(libipvs.DstStats(s.Stats))}
		if s.FWMark == 0 {
			vs, err := fromLibService(s)
			if err != nil {
				return nil, fmt.Errorf("list virtual servers: %w", err)
			}
			iv.Key = vs.Key
		}
		dsts, err := k.h.GetDestinations(s)
		if err != nil {
			if errors.Is(err, syscall.ESRCH) { // deleted since the dump
				continue
			}
			return nil, fmt.Errorf("list real servers of %s: %w", describeLib(iv), err)
		}
		for _, d := range dsts {
			a, ok := netip.AddrFromSlice(d.Address)
			if !ok {
				return nil, fmt.Errorf("list real servers of %s: bad address %v", describeLib(iv), d.Address)
			}
			iv.RealServers = append(iv.RealServers, InspectedRS{
				RealServer: RealServer{
					Addr:           netip.AddrPortFrom(a.Unmap(), d.Port),
					Weight:         d.Weight,
					Forward:        ForwardMethod(d.ConnectionFlags) & forwardMask,
					UpperThreshold: d.UpperThreshold,
					LowerThreshold: d.LowerThreshold,
					ActiveConns:    d.ActiveConnections,
					InactiveConns:  d.InactiveConnections,
				},
				Stats: libStats(d.Stats),
			})
		}
		out = append(out, iv)
	}
	return out, nil
}

func describeLib(iv InspectedVS) string {
	if iv.FWMark != 0 {
		return fmt.Sprintf("fwmark %d", iv.FWMark)
	}
	return iv.Key.String()
}

// libStats converts moby/ipvs's counters, which it reads from the kernel's
// 32-bit statistics attribute for connections and packets (they wrap).
func libStats(s libipvs.DstStats) *Stats {
	return &Stats{
		Connections: uint64(s.Connections),
		PacketsIn:   uint64(s.PacketsIn),
		PacketsOut:  uint64(s.PacketsOut),
		BytesIn:     s.BytesIn,
		BytesOut:    s.BytesOut,
	}
}
