package ipvs

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/switchyard/switchyard/dataplane"
)

// This file is the read-only side of the package for yardctl: the whole IPVS
// table as the kernel has it (ipvsadm -Ln --stats), each virtual server
// annotated with ownership (doc.go), the Service port that wants it and,
// given a model State, how it differs from the desired state. Nothing here
// writes to the kernel or to the state file.

// Stats are the traffic counters of a virtual or real server since it was
// created (ipvsadm --stats): connections scheduled, packets and bytes.
type Stats struct {
	Connections uint64
	PacketsIn   uint64
	PacketsOut  uint64
	BytesIn     uint64
	BytesOut    uint64
}

// TableReader is implemented by Handles that can read the whole table the
// way `ipvsadm -Ln --stats` shows it: every virtual server, firewall-mark
// ones included, with its real servers and counters. Inspect uses it when
// the Handle has it and falls back to ListVirtualServers and
// ListRealServers (no counters, no firewall-mark virtual servers).
type TableReader interface {
	// ReadTable returns the table unannotated (only the kernel's fields
	// of InspectedVS and InspectedRS are set).
	ReadTable() ([]InspectedVS, error)
}

// InspectedVS is one virtual server of an Inspection.
type InspectedVS struct {
	// Key is the zero Key for a firewall-mark virtual server.
	Key       Key
	FWMark    uint32
	Scheduler string
	Flags     ServiceFlags
	// Timeout is the persistence timeout in seconds (FlagPersistent).
	Timeout uint32
	// Stats is nil when the Handle cannot read counters.
	Stats       *Stats
	RealServers []InspectedRS

	// Owned: switchyard owns it (the ownership rules in doc.go).
	Owned bool
	// Missing: the desired state wants it and the kernel has none (the
	// kernel fields are then the desired ones, without counters).
	Missing bool
	// Service is the Service port that wants this key ("ns/name:port/proto"),
	// "" when none does or no desired state was given.
	Service string
	// Drift lists how an owned virtual server differs from the desired
	// state, or why a wanted one is not as wanted; empty when it matches
	// or no desired state was given.
	Drift []string
}

// InspectedRS is one real server of an InspectedVS.
type InspectedRS struct {
	RealServer
	// Stats is nil when the Handle cannot read counters.
	Stats *Stats
	// Wanted: the desired state lists this real server; DesiredWeight is
	// its weight there. Both unset without a desired state.
	Wanted        bool
	DesiredWeight int
	// Missing: wanted, not in the kernel.
	Missing bool
	// DrainingSince is when switchyard started draining it (from the
	// state file; zero when it is not draining).
	DrainingSince time.Time
}

// Inspection is the IPVS table for yardctl ipvs.
type Inspection struct {
	// VirtualServers in key order, firewall-mark ones last; wanted ones
	// the kernel lacks are included with Missing set.
	VirtualServers []InspectedVS
	// DriftChecked: the table was compared with a desired state.
	DriftChecked bool
	// Stats: the counters were read.
	Stats bool
}

// InspectKernel reads the table without a desired state, as yardctl does
// when the agent is down: ownership comes from the dummy link of l and
// the state file in stateDir (DefaultStateDir when empty), drains from the
// state file; there is no Service name and no drift.
func InspectKernel(h Handle, l Links, stateDir string) (*Inspection, error) {
	if stateDir == "" {
		stateDir = DefaultStateDir
	}
	own, drains, _, err := readOwnership(l, stateDir)
	if err != nil {
		return nil, err
	}
	return inspect(h, own, drains, nil)
}

// Inspect reads the kernel's table and compares what switchyard owns with
// the desired state for st (nil: no comparison). It may run while the
// Proxier syncs; a sync in progress then shows as drift. It reads the
// state file, never writes it.
func (p *Proxier) Inspect(st *dataplane.State) (*Inspection, error) {
	own, drains, hostList, err := readOwnership(p.links, p.cfg.StateDir)
	if err != nil {
		return nil, err
	}
	var ds *DesiredState
	if st != nil {
		d := Desired(st, NodePortIPs(hostList, p.cfg.NodePortAddresses), p.cfg)
		ds = &d
	}
	return inspect(p.handle, own, drains, ds)
}

// DefaultScheduler is the scheduler of Services without the scheduler
// annotation (Config.Scheduler).
func (p *Proxier) DefaultScheduler() string { return p.cfg.Scheduler }

// ServiceVirtualServers reads, live from the kernel, the virtual servers
// the desired state for st gives the Service ports in names, with their
// real servers and connection counts; virtual servers missing from the
// kernel or not owned are left out. It is what yardctl services shows for
// IPVS: one netlink request per virtual server, whatever the table's size.
func (p *Proxier) ServiceVirtualServers(st *dataplane.State, names []dataplane.ServicePortName) (map[dataplane.ServicePortName][]VirtualServer, error) {
	own, _, hostList, err := readOwnership(p.links, p.cfg.StateDir)
	if err != nil {
		return nil, err
	}
	ds := Desired(st, NodePortIPs(hostList, p.cfg.NodePortAddresses), p.cfg)
	want := make(map[dataplane.ServicePortName]bool, len(names))
	for _, n := range names {
		want[n] = true
	}
	out := map[dataplane.ServicePortName][]VirtualServer{}
	for _, k := range slices.SortedFunc(maps.Keys(ds.VirtualServers), Key.Compare) {
		d := ds.VirtualServers[k]
		if !want[d.Service] || !own.owns(k) {
			continue
		}
		vs, err := p.handle.GetVirtualServer(k)
		if IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		rss, err := p.handle.ListRealServers(k)
		if IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		vs.RealServers = rss
		vs.Service = d.Service.String()
		out[d.Service] = append(out[d.Service], vs)
	}
	return out, nil
}

// readOwnership gathers what the ownership rules need, and the drains, from
// the links and the state file (read with its own stateFile, so it never
// races with a sync's).
func readOwnership(l Links, stateDir string) (ownership, map[drainKey]time.Time, []netip.Addr, error) {
	linkList, err := l.Addresses()
	if err != nil && !IsNotFound(err) {
		return ownership{}, nil, nil, fmt.Errorf("list dummy link addresses: %w", err)
	}
	hostList, err := l.NodeAddresses()
	if err != nil {
		return ownership{}, nil, nil, fmt.Errorf("list node addresses: %w", err)
	}
	ps, err := newStateFile(stateDir).load()
	if err != nil {
		// As a sync would: an unreadable file owns nothing.
		ps = newPersistentState()
	}
	return ownership{link: addrSet(linkList), host: addrSet(hostList), hostVS: ps.HostVS}, ps.Drains, hostList, nil
}

func inspect(h Handle, own ownership, drains map[drainKey]time.Time, ds *DesiredState) (*Inspection, error) {
	vss, withStats, err := readTable(h)
	if err != nil {
		return nil, err
	}
	out := &Inspection{DriftChecked: ds != nil, Stats: withStats}
	seen := map[Key]bool{}
	for _, vs := range vss {
		if vs.FWMark != 0 {
			// Never switchyard's (doc.go, rule 4).
			out.VirtualServers = append(out.VirtualServers, vs)
			continue
		}
		seen[vs.Key] = true
		vs.Owned = own.owns(vs.Key)
		for i := range vs.RealServers {
			rs := &vs.RealServers[i]
			if since, ok := drains[drainKey{vs.Key, rs.Addr}]; ok && vs.Owned {
				rs.DrainingSince = since
			}
		}
		if ds != nil {
			annotate(&vs, ds.VirtualServers[vs.Key])
		}
		out.VirtualServers = append(out.VirtualServers, vs)
	}
	if ds != nil {
		for k, d := range ds.VirtualServers {
			if seen[k] {
				continue
			}
			vs := InspectedVS{Key: k, Scheduler: d.Scheduler, Flags: d.Flags, Timeout: d.Timeout, Missing: true,
				Owned: true, Service: d.Service.String(), Drift: []string{"missing from the kernel"}}
			for _, a := range slices.SortedFunc(maps.Keys(d.RealServers), netip.AddrPort.Compare) {
				vs.RealServers = append(vs.RealServers, InspectedRS{RealServer: d.realServer(a, d.RealServers[a]),
					Wanted: true, DesiredWeight: d.RealServers[a], Missing: true})
			}
			out.VirtualServers = append(out.VirtualServers, vs)
		}
	}
	slices.SortFunc(out.VirtualServers, compareInspected)
	return out, nil
}

// annotate compares one virtual server from the kernel with what the
// desired state wants at its key (d nil: nothing).
func annotate(vs *InspectedVS, d *DesiredVS) {
	if d != nil {
		vs.Service = d.Service.String()
	}
	switch {
	case !vs.Owned && d != nil:
		vs.Drift = append(vs.Drift, "wanted by "+vs.Service+" but held by a virtual server switchyard does not own")
		return
	case !vs.Owned:
		return
	case d == nil:
		vs.Drift = append(vs.Drift, "owned but no Service wants it")
		return
	}
	if vs.Scheduler != d.Scheduler {
		vs.Drift = append(vs.Drift, fmt.Sprintf("scheduler %s, want %s", vs.Scheduler, d.Scheduler))
	}
	if vs.Flags != d.Flags || vs.Timeout != d.Timeout {
		vs.Drift = append(vs.Drift, fmt.Sprintf("persistence %s, want %s", persistence(vs.Flags, vs.Timeout), persistence(d.Flags, d.Timeout)))
	}
	have := map[netip.AddrPort]bool{}
	for i := range vs.RealServers {
		rs := &vs.RealServers[i]
		have[rs.Addr] = true
		w, wanted := d.RealServers[rs.Addr]
		rs.Wanted, rs.DesiredWeight = wanted, w
		switch {
		case wanted && rs.Weight != w:
			vs.Drift = append(vs.Drift, fmt.Sprintf("real server %s weight %d, want %d", rs.Addr, rs.Weight, w))
		case !wanted && rs.Weight != 0:
			vs.Drift = append(vs.Drift, fmt.Sprintf("real server %s not wanted, weight %d", rs.Addr, rs.Weight))
		case wanted && rs.Forward != ForwardMasq:
			vs.Drift = append(vs.Drift, fmt.Sprintf("real server %s forwarding %s, want masq", rs.Addr, rs.Forward))
		case wanted && !rs.sameThresholds(d.realServer(rs.Addr, w)):
			vs.Drift = append(vs.Drift, fmt.Sprintf("real server %s thresholds upper %d lower %d, want %d %d",
				rs.Addr, rs.UpperThreshold, rs.LowerThreshold, d.ConnLimit, d.ConnLimit))
		}
		// Not wanted at weight 0: draining, as expected.
	}
	for _, a := range slices.SortedFunc(maps.Keys(d.RealServers), netip.AddrPort.Compare) {
		if have[a] {
			continue
		}
		w := d.RealServers[a]
		vs.RealServers = append(vs.RealServers, InspectedRS{RealServer: d.realServer(a, w), Wanted: true, DesiredWeight: w, Missing: true})
		vs.Drift = append(vs.Drift, fmt.Sprintf("real server %s missing", a))
	}
	slices.SortFunc(vs.RealServers, func(a, b InspectedRS) int { return a.Addr.Compare(b.Addr) })
}

func persistence(f ServiceFlags, timeout uint32) string {
	if f&FlagPersistent == 0 {
		return "off"
	}
	return formatSeconds(timeout)
}

// compareInspected orders address keys first (Key.Compare), then
// firewall-mark virtual servers by mark.
func compareInspected(a, b InspectedVS) int {
	if (a.FWMark != 0) != (b.FWMark != 0) {
		if a.FWMark != 0 {
			return 1
		}
		return -1
	}
	if a.FWMark != 0 {
		return cmp.Compare(a.FWMark, b.FWMark)
	}
	return a.Key.Compare(b.Key)
}

// readTable reads the table through TableReader when h has it.
func readTable(h Handle) ([]InspectedVS, bool, error) {
	if tr, ok := h.(TableReader); ok {
		vss, err := tr.ReadTable()
		if err != nil {
			return nil, false, fmt.Errorf("read ipvs table: %w", err)
		}
		return vss, true, nil
	}
	list, err := h.ListVirtualServers()
	if err != nil {
		return nil, false, err
	}
	out := make([]InspectedVS, 0, len(list))
	for _, vs := range list {
		rss, err := h.ListRealServers(vs.Key)
		if IsNotFound(err) {
			continue // deleted between the two reads
		}
		if err != nil {
			return nil, false, err
		}
		iv := InspectedVS{Key: vs.Key, Scheduler: vs.Scheduler, Flags: vs.Flags, Timeout: vs.Timeout}
		for _, rs := range rss {
			iv.RealServers = append(iv.RealServers, InspectedRS{RealServer: rs})
		}
		out = append(out, iv)
	}
	return out, false, nil
}

// Dump renders the inspection one line per virtual server and real
// server, in order, for tests and bug reports.
func (in *Inspection) Dump() string {
	var b strings.Builder
	for _, vs := range in.VirtualServers {
		if vs.FWMark != 0 {
			fmt.Fprintf(&b, "vs fwmark %d %s", vs.FWMark, vs.Scheduler)
		} else {
			fmt.Fprintf(&b, "vs %s %s", vs.Key, vs.Scheduler)
		}
		if vs.Flags&FlagPersistent != 0 {
			fmt.Fprintf(&b, " persistent=%s", formatSeconds(vs.Timeout))
		}
		switch {
		case vs.Missing:
			b.WriteString(" missing")
		case vs.Owned:
			b.WriteString(" owned")
		default:
			b.WriteString(" foreign")
		}
		if vs.Service != "" {
			b.WriteString(" svc=" + vs.Service)
		}
		if vs.Stats != nil {
			b.WriteString(" " + vs.Stats.String())
		}
		b.WriteByte('\n')
		for _, rs := range vs.RealServers {
			fmt.Fprintf(&b, "  rs %s %s weight=%d%s active=%d inactive=%d", rs.Addr, rs.Forward, rs.Weight, rs.thresholds(), rs.ActiveConns, rs.InactiveConns)
			if rs.Missing {
				b.WriteString(" missing")
			}
			if in.DriftChecked && !vs.Missing && vs.Owned {
				if rs.Wanted {
					fmt.Fprintf(&b, " want=%d", rs.DesiredWeight)
				} else {
					b.WriteString(" unwanted")
				}
			}
			if !rs.DrainingSince.IsZero() {
				b.WriteString(" draining-since=" + rs.DrainingSince.UTC().Format(time.RFC3339))
			}
			if rs.Stats != nil {
				b.WriteString(" " + rs.Stats.String())
			}
			b.WriteByte('\n')
		}
		for _, d := range vs.Drift {
			b.WriteString("  drift: " + d + "\n")
		}
	}
	return b.String()
}

func (s Stats) String() string {
	return fmt.Sprintf("conns=%d pktsIn=%d pktsOut=%d bytesIn=%d bytesOut=%d", s.Connections, s.PacketsIn, s.PacketsOut, s.BytesIn, s.BytesOut)
}

// ReadVirtualServer reads one virtual server and its real servers live
// from the kernel (yardctl trace); ErrNotFound when there is none. Owned
// reports whether switchyard owns it.
func (p *Proxier) ReadVirtualServer(k Key) (vs VirtualServer, owned bool, err error) {
	own, _, _, err := readOwnership(p.links, p.cfg.StateDir)
	if err != nil {
		return VirtualServer{}, false, err
	}
	if vs, err = p.handle.GetVirtualServer(k); err != nil {
		return VirtualServer{}, false, err
	}
	if vs.RealServers, err = p.handle.ListRealServers(k); err != nil {
		return VirtualServer{}, false, err
	}
	return vs, own.owns(k), nil
}

// DesiredRealServers returns the real servers, with their weights, that
// the desired state for st gives the virtual server k, and whether it
// wants k at all (yardctl trace: what IPVS will choose from).
func (p *Proxier) DesiredRealServers(st *dataplane.State, k Key) (map[netip.AddrPort]int, bool, error) {
	hostList, err := p.links.NodeAddresses()
	if err != nil {
		return nil, false, fmt.Errorf("list node addresses: %w", err)
	}
	d, ok := Desired(st, NodePortIPs(hostList, p.cfg.NodePortAddresses), p.cfg).VirtualServers[k]
	if !ok {
		return nil, false, nil
	}
	return maps.Clone(d.RealServers), true, nil
}
