package ipvs

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"

	"k8s.io/klog/v2"
)

// applyKey makes one virtual server match the desired state. Order keeps
// traffic flowing: a virtual server is created before its real servers, new
// real servers are added before removed ones start draining.
func (p *Proxier) applyKey(r *syncRun, k Key, now time.Time) {
	d := r.ds.VirtualServers[k]
	o := r.observed[k]
	switch {
	case o != nil && !o.owned:
		if d != nil {
			klog.ErrorS(nil, "A virtual server switchyard does not own holds a wanted key; leaving it alone",
				"virtualServer", k, "service", d.Service)
		}
	case d == nil && o == nil:
		p.dropDrains(r, k, nil)
	case d == nil:
		// Unwanted: delete at once, like kube-proxy. Draining applies to
		// real servers of wanted virtual servers only; a Service that is
		// gone has nothing left to drain to.
		if err := p.handle.DeleteVirtualServer(k); err != nil && !IsNotFound(err) {
			r.errs = append(r.errs, err)
			r.after[k] = o.snapshot(nil)
			return
		}
		klog.V(2).InfoS("Deleted virtual server", "virtualServer", k)
		p.dropDrains(r, k, nil)
	case o == nil:
		if !r.own.dependsOnLink(k) && !r.own.hostVS[k] {
			return // not registered (state file unwritable); error already reported
		}
		if err := p.handle.AddVirtualServer(d.VirtualServer(k)); err != nil {
			r.errs = append(r.errs, err)
			return
		}
		klog.V(2).InfoS("Added virtual server", "virtualServer", k, "service", d.Service)
		if _, had := r.prev[k]; had {
			r.repaired = true
		}
		p.dropDrains(r, k, nil)
		o = &observedVS{vs: d.VirtualServer(k), owned: true, rss: map[netip.AddrPort]RealServer{}}
		p.syncRealServers(r, k, d, o, now)
		r.after[k] = o.snapshot(d)
	default:
		if want := d.VirtualServer(k); !o.vs.sameConfig(want) {
			if err := p.handle.UpdateVirtualServer(want); err != nil {
				r.errs = append(r.errs, err)
			} else {
				klog.V(2).InfoS("Updated virtual server", "virtualServer", k, "scheduler", want.Scheduler, "flags", want.Flags, "timeout", want.Timeout)
				o.vs = want
				if had, ok := r.prev[k]; ok && had.sameConfig(want) {
					r.repaired = true
				}
			}
		}
		p.syncRealServers(r, k, d, o, now)
		r.after[k] = o.snapshot(d)
	}
}

// syncRealServers diffs the real servers of one owned virtual server and
// updates o.rss to what the kernel holds afterwards.
//
// Graceful termination: a real server no Service wants any more gets weight
// 0 (no new connections) and is deleted once it has no active or inactive
// connections, or once it has drained for Config.DrainTimeout. UDP and SCTP
// real servers are deleted at once (see gracefulDrain). Drain start times
// are kept in the state file; after a restart a weight-0 real server that
// is not wanted is recognized as draining from the kernel alone, so none is
// left behind for ever (kubernetes#92019). Wanted weight-0 real servers
// (terminating endpoints the policy still lists) are not draining: they stay
// until the endpoint goes away.
func (p *Proxier) syncRealServers(r *syncRun, k Key, d *DesiredVS, o *observedVS, now time.Time) {
	for _, addr := range slices.SortedFunc(maps.Keys(d.RealServers), netip.AddrPort.Compare) {
		w := d.RealServers[addr]
		want := d.realServer(addr, w)
		cur, ok := o.rss[addr]
		switch {
		case !ok:
			if err := p.handle.AddRealServer(k, want); err != nil {
				r.errs = append(r.errs, err)
				continue
			}
			o.rss[addr] = want
			if _, had := r.hadRealServer(k, addr); had {
				r.repaired = true
			}
		case cur.Weight != w || cur.Forward != ForwardMasq || !cur.sameThresholds(want):
			if err := p.handle.UpdateRealServer(k, want); err != nil {
				r.errs = append(r.errs, err)
				continue
			}
			cur.Weight, cur.Forward, cur.UpperThreshold, cur.LowerThreshold = w, ForwardMasq, want.UpperThreshold, want.LowerThreshold
			o.rss[addr] = cur
			if had, ok := r.hadRealServer(k, addr); ok && had.Weight == w && had.Forward == ForwardMasq && had.sameThresholds(want) {
				r.repaired = true
			}
		}
		r.deleteDrain(drainKey{k, addr})
	}
	for _, addr := range slices.SortedFunc(maps.Keys(o.rss), netip.AddrPort.Compare) {
		if _, wanted := d.RealServers[addr]; wanted {
			continue
		}
		cur := o.rss[addr]
		dk := drainKey{k, addr}
		since, draining := r.next.Drains[dk]
		if !draining {
			since = now
		}
		conns := cur.ActiveConns + cur.InactiveConns
		reason := ""
		switch {
		case !gracefulDrain(k.Protocol):
			reason = "protocol without graceful termination"
		case conns == 0:
			reason = "no connections left"
		case now.Sub(since) >= p.cfg.DrainTimeout:
			reason = "drain timeout"
		}
		if reason != "" {
			if err := p.handle.DeleteRealServer(k, addr); err != nil && !IsNotFound(err) {
				r.errs = append(r.errs, err)
				continue
			}
			klog.V(2).InfoS("Deleted real server", "virtualServer", k, "realServer", addr, "reason", reason, "connections", conns)
			delete(o.rss, addr)
			r.deleteDrain(dk)
			continue
		}
		if cur.Weight != 0 {
			cur.Weight = 0
			// The update writes every attribute: the thresholds stay.
			if err := p.handle.UpdateRealServer(k, RealServer{Addr: addr, Weight: 0, Forward: cur.Forward,
				UpperThreshold: cur.UpperThreshold, LowerThreshold: cur.LowerThreshold}); err != nil {
				r.errs = append(r.errs, fmt.Errorf("drain: %w", err))
				continue
			}
			klog.V(2).InfoS("Draining real server", "virtualServer", k, "realServer", addr, "connections", conns)
			o.rss[addr] = cur
			if had, ok := r.hadRealServer(k, addr); ok && draining && had.Weight == 0 {
				r.repaired = true
			}
		}
		r.setDrain(dk, since)
	}
	p.dropDrains(r, k, o.rss)
}

// dropDrains forgets drains of k whose real server is gone (all of them when
// present is nil).
func (p *Proxier) dropDrains(r *syncRun, k Key, present map[netip.AddrPort]RealServer) {
	for dk := range r.next.Drains {
		if dk.VS != k {
			continue
		}
		if _, ok := present[dk.RS]; !ok {
			r.deleteDrain(dk)
		}
	}
}

// snapshot renders an observed virtual server for Proxier.Snapshot.
func (o *observedVS) snapshot(d *DesiredVS) VirtualServer {
	vs := o.vs
	vs.RealServers = make([]RealServer, 0, len(o.rss))
	for _, addr := range slices.SortedFunc(maps.Keys(o.rss), netip.AddrPort.Compare) {
		vs.RealServers = append(vs.RealServers, o.rss[addr])
	}
	if d != nil {
		vs.Service = d.Service.String()
	}
	return vs
}
