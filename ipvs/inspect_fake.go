package ipvs

import (
	"fmt"
	"net/netip"
)

var _ TableReader = (*FakeHandle)(nil)

// SetStats sets the counters of a virtual server (rs invalid) or of one of
// its real servers, as traffic would; ReadTable reports them.
func (f *FakeHandle) SetStats(k Key, rs netip.AddrPort, s Stats) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.vss[k]
	if !ok {
		return fmt.Errorf("virtual server %s: %w", k, ErrNotFound)
	}
	if rs.IsValid() {
		if _, ok := v.rss[rs]; !ok {
			return fmt.Errorf("real server %s of %s: %w", rs, k, ErrNotFound)
		}
	}
	if v.stats == nil {
		v.stats = map[netip.AddrPort]Stats{}
	}
	v.stats[rs] = s
	return nil
}

// ReadTable implements TableReader. The fake has no firewall-mark virtual
// servers.
func (f *FakeHandle) ReadTable() ([]InspectedVS, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	// Recorded as a List call: Mutations leaves it out.
	f.calls = append(f.calls, "ListTable")
	if f.Fail != nil {
		if err := f.Fail("ListTable", Key{}); err != nil {
			return nil, err
		}
	}
	out := make([]InspectedVS, 0, len(f.vss))
	for _, k := range f.sortedKeys() {
		v := f.vss[k]
		iv := InspectedVS{Key: k, Scheduler: v.vs.Scheduler, Flags: v.vs.Flags, Timeout: v.vs.Timeout, Stats: v.statsOf(netip.AddrPort{})}
		for _, rs := range v.sortedRS() {
			iv.RealServers = append(iv.RealServers, InspectedRS{RealServer: rs, Stats: v.statsOf(rs.Addr)})
		}
		out = append(out, iv)
	}
	return out, nil
}

func (v *fakeVS) statsOf(a netip.AddrPort) *Stats {
	s := v.stats[a]
	return &s
}
