package ipvs

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/dataplane"
)

// observedVS is a virtual server as the kernel reported it this sync.
type observedVS struct {
	vs    VirtualServer
	owned bool
	// rss is only read for owned virtual servers.
	rss map[netip.AddrPort]RealServer
}

// syncRun holds one sync's inputs and bookkeeping.
type syncRun struct {
	full     bool
	ds       DesiredState
	own      ownership
	scope    []Key
	observed map[Key]*observedVS
	// skip holds keys not to touch this sync (their read failed, or their
	// address could not be bound).
	skip map[Key]bool
	// next is the persistent state being built; saved at the end.
	next *persistentState
	// after is what owned keys in scope look like after the sync.
	after map[Key]VirtualServer
	errs  []error
}

// Sync implements dataplane.Dataplane. A full sync compares every owned
// virtual server, real server and address with the desired state; a partial
// one reads back only the virtual servers of changed Services and of real
// servers still draining. Nothing is ever flushed; errors on one virtual
// server do not stop the others and are returned joined.
func (p *Proxier) Sync(ctx context.Context, st *dataplane.State, changes dataplane.Changes) error {
	p.syncMu.Lock()
	defer p.syncMu.Unlock()
	full := changes.Full || !p.synced
	p.synced = false
	p.loadState()
	if full || !p.sysctlsSet {
		ensureSysctls(p.sysctl, p.cfg.StrictARP)
		p.sysctlsSet = true
	}
	err := p.sync(ctx, st, changes, full)
	p.synced = err == nil
	p.scheduleDrainCheck(len(p.persist.Drains) > 0)
	return err
}

func (p *Proxier) sync(ctx context.Context, st *dataplane.State, changes dataplane.Changes, full bool) error {
	if err := p.links.EnsureLink(); err != nil {
		return fmt.Errorf("ensure dummy link: %w", err)
	}
	hostList, err := p.links.NodeAddresses()
	if err != nil {
		return fmt.Errorf("list node addresses: %w", err)
	}
	nodeIPs := NodePortIPs(hostList, p.cfg.NodePortAddresses)
	if !full && !slices.Equal(nodeIPs, p.nodeIPs) {
		klog.V(2).InfoS("Node addresses changed; syncing every Service", "nodePortIPs", nodeIPs)
		full = true
	}
	linkList, err := p.links.Addresses()
	if err != nil {
		return fmt.Errorf("list dummy link addresses: %w", err)
	}
	r := &syncRun{
		full: full,
		ds:   Desired(st, nodeIPs, p.cfg),
		own:  ownership{link: addrSet(linkList), host: addrSet(hostList)},
		skip: map[Key]bool{},
		next: p.persist.clone(),
	}
	r.own.hostVS = r.next.HostVS
	p.logConflicts(r.ds, changes, full)

	// Addresses first: a virtual server on a service address is recognized
	// as switchyard's by its address being on the dummy link.
	unbound := p.bindAddresses(r)

	if err := p.observe(r, changes); err != nil {
		return errors.Join(append(r.errs, err)...)
	}
	for _, k := range r.scope {
		if _, ok := r.ds.VirtualServers[k]; ok && unbound[k.IP] && r.own.dependsOnLink(k) {
			r.skip[k] = true
		}
	}
	p.registerHostVS(r)
	if err := ctx.Err(); err != nil {
		return errors.Join(append(r.errs, err)...)
	}

	now := p.clock.Now()
	r.after = map[Key]VirtualServer{}
	for _, k := range r.scope {
		if r.skip[k] {
			if o := r.observed[k]; o != nil && o.owned {
				r.after[k] = o.snapshot(r.ds.VirtualServers[k])
			}
			continue
		}
		p.applyKey(r, k, now)
	}
	p.unbindAddresses(r, linkList)
	p.finishState(r)

	if err := p.file.save(r.next); err != nil {
		r.errs = append(r.errs, fmt.Errorf("save state: %w", err))
	}
	p.persist = r.next
	p.svcKeys = r.ds.ServiceKeys()
	p.nodeIPs = nodeIPs
	p.setSnapshot(full, r.scope, r.after)
	return errors.Join(r.errs...)
}

// bindAddresses adds missing desired addresses to the dummy link and
// returns those it could not add.
func (p *Proxier) bindAddresses(r *syncRun) map[netip.Addr]bool {
	unbound := map[netip.Addr]bool{}
	for _, a := range r.ds.Addresses {
		if r.own.link[a] {
			continue
		}
		err := p.links.AddAddress(a)
		switch {
		case err == nil || IsExists(err):
			r.own.link[a] = true
		case errors.Is(err, ErrFamilyUnsupported):
			// A dual-stack Service on a node without IPv6: its IPv6 half
			// cannot work here; skip it quietly after the first time.
			unbound[a] = true
			if !p.loggedUnsupported[a] {
				p.loggedUnsupported[a] = true
				klog.InfoS("Node cannot hold this service address; skipping its virtual servers", "address", a, "err", err)
			}
		default:
			unbound[a] = true
			r.errs = append(r.errs, fmt.Errorf("bind service address: %w", err))
		}
	}
	return unbound
}

// observe decides which keys this sync looks at and reads them.
func (p *Proxier) observe(r *syncRun, changes dataplane.Changes) error {
	r.observed = map[Key]*observedVS{}
	scope := map[Key]bool{}
	if r.full {
		vss, err := p.handle.ListVirtualServers()
		if err != nil {
			return fmt.Errorf("list virtual servers: %w", err)
		}
		for _, vs := range vss {
			r.observed[vs.Key] = &observedVS{vs: vs, owned: r.own.owns(vs.Key)}
			if r.observed[vs.Key].owned {
				scope[vs.Key] = true
			}
		}
		for k := range r.ds.VirtualServers {
			scope[k] = true
		}
	} else {
		for svc := range changes.Services {
			for _, k := range p.svcKeys[svc] {
				scope[k] = true
			}
		}
		for k, d := range r.ds.VirtualServers {
			if changes.Has(d.Service.ServiceName) {
				scope[k] = true
			}
		}
		// Sweep drains: their virtual servers are read back too.
		for dk := range r.next.Drains {
			scope[dk.VS] = true
		}
		for k := range scope {
			vs, err := p.handle.GetVirtualServer(k)
			switch {
			case err == nil:
				r.observed[k] = &observedVS{vs: vs, owned: r.own.owns(k)}
			case IsNotFound(err):
			default:
				r.skip[k] = true
				r.errs = append(r.errs, err)
			}
		}
	}
	r.scope = slices.SortedFunc(maps.Keys(scope), Key.Compare)
	for _, k := range r.scope {
		o := r.observed[k]
		if o == nil || !o.owned || r.skip[k] {
			continue
		}
		rss, err := p.handle.ListRealServers(k)
		if err != nil {
			if IsNotFound(err) { // deleted between the two reads
				delete(r.observed, k)
				continue
			}
			r.skip[k] = true
			r.errs = append(r.errs, err)
			continue
		}
		o.rss = make(map[netip.AddrPort]RealServer, len(rss))
		for _, rs := range rss {
			o.rss[rs.Addr] = rs
		}
	}
	return nil
}

// registerHostVS records, before creating them, the virtual servers on node
// addresses this sync will create, so a crash right after creation cannot
// orphan them (ownership rule 3).
func (p *Proxier) registerHostVS(r *syncRun) {
	var added []Key
	for _, k := range r.scope {
		if _, want := r.ds.VirtualServers[k]; !want || r.skip[k] || r.own.dependsOnLink(k) || r.next.HostVS[k] {
			continue
		}
		if r.observed[k] != nil {
			continue // exists and is not ours (else it would be listed)
		}
		r.next.HostVS[k] = true
		added = append(added, k)
	}
	if len(added) == 0 {
		return
	}
	if err := p.file.save(r.next); err != nil {
		r.errs = append(r.errs, fmt.Errorf("record node-address virtual servers before creating them: %w", err))
		for _, k := range added {
			delete(r.next.HostVS, k)
			r.skip[k] = true
		}
	}
}

// unbindAddresses removes addresses no Service wants, unless a virtual
// server switchyard still owns through that address remains (its deletion
// failed): removing the address would orphan it.
func (p *Proxier) unbindAddresses(r *syncRun, linkList []netip.Addr) {
	wanted := addrSet(r.ds.Addresses)
	inUse := map[netip.Addr]bool{}
	for k := range r.after {
		if r.own.dependsOnLink(k) {
			inUse[k.IP] = true
		}
	}
	for _, a := range linkList {
		if wanted[a] || inUse[a] {
			continue
		}
		if err := p.links.DeleteAddress(a); err != nil && !IsNotFound(err) {
			r.errs = append(r.errs, fmt.Errorf("unbind service address: %w", err))
		}
	}
}

// finishState updates the node-address virtual servers and drains after
// applying. Entries outside the scope of a partial sync are kept.
func (p *Proxier) finishState(r *syncRun) {
	inScope := func(k Key) bool { _, ok := slices.BinarySearchFunc(r.scope, k, Key.Compare); return ok }
	for k := range r.next.HostVS {
		if !inScope(k) {
			if r.full {
				delete(r.next.HostVS, k) // neither wanted nor in the kernel
			}
			continue
		}
		// Keep wanted keys whose creation failed: the retry creates them.
		_, exists := r.after[k]
		_, wanted := r.ds.VirtualServers[k]
		if !exists && !wanted {
			delete(r.next.HostVS, k)
		}
	}
	for dk := range r.next.Drains {
		if !inScope(dk.VS) && r.full {
			delete(r.next.Drains, dk)
		}
	}
}

func (p *Proxier) logConflicts(ds DesiredState, changes dataplane.Changes, full bool) {
	for _, c := range ds.Conflicts {
		if full || changes.Has(c.Loser.ServiceName) || changes.Has(c.Winner.ServiceName) {
			klog.ErrorS(nil, "Two Services want the same IPVS virtual server; the first by name gets it",
				"virtualServer", c.Key, "winner", c.Winner, "loser", c.Loser)
		}
	}
}
