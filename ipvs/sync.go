package ipvs

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"

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
	full bool
	// ds is the whole desired state on a full sync. On a partial one it
	// holds only what the sync handles (see partialDesired).
	ds  DesiredState
	own ownership
	// partial is a partial sync's share of the desired state; its scope
	// includes the virtual servers of draining real servers.
	partial  partialDesired
	scope    []Key
	observed map[Key]*observedVS
	// skip holds keys not to touch this sync (their read failed, or their
	// address could not be bound).
	skip map[Key]bool
	// next is the persistent state being built; saved at the end. It is
	// p.persist itself until the first change (see edit): change it only
	// through the syncRun methods below.
	next     *persistentState
	nextCopy bool
	// after is what owned keys in scope look like after the sync.
	after map[Key]VirtualServer
	errs  []error
	// prev is the snapshot the last sync left: what this process last
	// applied (empty after a restart, so adopting is never a repair).
	// repaired: this sync rewrote something prev had and the kernel had
	// lost or changed behind the agent's back (see Proxier.Repairs).
	prev     map[Key]VirtualServer
	repaired bool
}

// Sync implements dataplane.Dataplane. A full sync computes the whole
// desired state and compares every owned virtual server, real server and
// address with it. A partial one computes the desired state of the changed
// Services only (from the index of every Service port's claims kept since
// the last sync, see desiredIndex), so its cost does not grow with the
// number of Services: it reads back only the virtual servers the changed
// Services owned or now own (a key whose conflict winner changes included)
// and those of real servers still draining, binds the addresses they want
// and unbinds the ones no Service wants any more. Nothing is ever flushed;
// errors on one virtual server do not stop the others and are returned
// joined.
func (p *Proxier) Sync(ctx context.Context, st *dataplane.State, changes dataplane.Changes) error {
	p.syncMu.Lock()
	defer p.syncMu.Unlock()
	full := changes.Full || !p.synced
	p.synced = false
	p.loadState()
	if full || !p.sysctlsSet {
		ensureSysctls(p.sysctl, p.cfg.StrictARP)
		ensureTimeouts(p.handle, p.cfg.Timeouts)
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
	if !full && p.idx == nil {
		full = true
	}
	if !full && !slices.Equal(nodeIPs, p.idx.nodeIPs) {
		klog.V(2).InfoS("Node addresses changed; syncing every Service", "nodePortIPs", nodeIPs)
		full = true
	}
	linkList, err := p.links.Addresses()
	if err != nil {
		return fmt.Errorf("list dummy link addresses: %w", err)
	}
	p.mu.Lock()
	prev := p.snapshot // replaced or edited only by setSnapshot, below
	p.mu.Unlock()
	r := &syncRun{
		full: full,
		own:  ownership{host: addrSet(hostList)},
		skip: map[Key]bool{},
		next: p.persist,
		prev: prev,
	}
	r.own.hostVS = r.next.HostVS
	if full {
		p.idx = newDesiredIndex(nodeIPs)
		r.ds = desired(st, nodeIPs, p.cfg, p.idx)
		r.own.link = addrSet(linkList)
	} else {
		// The desired state of the changed Services only, and of the keys
		// whose owner they change. Sweep drains: their virtual servers are
		// read back too.
		var draining []Key
		for dk := range r.next.Drains {
			draining = append(draining, dk.VS)
		}
		r.partial = p.idx.update(st, changes.Services, draining, p.cfg)
		r.ds = r.partial.ds
		r.own.link = linkSubset(linkList, r.partialAddresses())
	}
	p.logConflicts(r.ds, changes, full)

	// Addresses first: a virtual server on a service address is recognized
	// as switchyard's by its address being on the dummy link.
	unbound := p.bindAddresses(r)

	if err := p.observe(r); err != nil {
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

	// Unchanged and already on disk: skip encoding it (its size grows with
	// the NodePort Services).
	if r.nextCopy || !p.persistSaved {
		err := p.file.save(r.next)
		if err != nil {
			r.errs = append(r.errs, fmt.Errorf("save state: %w", err))
		}
		p.persistSaved = err == nil
	}
	p.persist = r.next
	p.setSnapshot(full, r.scope, r.after)
	if r.repaired {
		p.repairs.Add(1)
		klog.InfoS("Repaired IPVS drift: virtual servers, real servers or addresses differed from what this agent had programmed", "full", full)
	}
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
			if err == nil && r.hadAddress(a) {
				r.repaired = true
			}
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
func (p *Proxier) observe(r *syncRun) error {
	r.observed = map[Key]*observedVS{}
	if r.full {
		scope := map[Key]bool{}
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
		r.scope = slices.SortedFunc(maps.Keys(scope), Key.Compare)
	} else {
		r.scope = slices.SortedFunc(maps.Keys(r.partial.scope), Key.Compare)
		for _, k := range r.scope {
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
		r.setHostVS(k)
		added = append(added, k)
	}
	if len(added) == 0 {
		return
	}
	p.persistSaved = false // the file is ahead of p.persist until the sync ends
	if err := p.file.save(r.next); err != nil {
		r.errs = append(r.errs, fmt.Errorf("record node-address virtual servers before creating them: %w", err))
		for _, k := range added {
			r.deleteHostVS(k)
			r.skip[k] = true
		}
	}
}

// unbindAddresses removes addresses no Service wants, unless a virtual
// server switchyard still owns through that address remains (its deletion
// failed): removing the address would orphan it. A full sync looks at every
// address on the dummy link, a partial one at those the changed Services
// no longer want.
func (p *Proxier) unbindAddresses(r *syncRun, linkList []netip.Addr) {
	inUse := map[netip.Addr]bool{}
	for k := range r.after {
		if r.own.dependsOnLink(k) {
			inUse[k.IP] = true
		}
	}
	candidates := r.partial.unwanted
	if r.full {
		wanted := addrSet(r.ds.Addresses)
		candidates = slices.DeleteFunc(slices.Clone(linkList), func(a netip.Addr) bool { return wanted[a] })
	}
	for _, a := range candidates {
		if inUse[a] || !r.full && !r.own.link[a] {
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
	// Keep wanted keys whose creation failed: the retry creates them.
	gone := func(k Key) bool {
		_, exists := r.after[k]
		_, wanted := r.ds.VirtualServers[k]
		return !exists && !wanted
	}
	if !r.full {
		for _, k := range r.scope {
			if gone(k) {
				r.deleteHostVS(k)
			}
		}
		return
	}
	inScope := func(k Key) bool { _, ok := slices.BinarySearchFunc(r.scope, k, Key.Compare); return ok }
	for k := range r.next.HostVS {
		// Out of scope: neither wanted nor in the kernel.
		if !inScope(k) || gone(k) {
			r.deleteHostVS(k)
		}
	}
	for dk := range r.next.Drains {
		if !inScope(dk.VS) {
			r.deleteDrain(dk)
		}
	}
}

// hadAddress reports whether the last sync left a on the dummy link (a
// virtual server it owned through the link is on a).
func (r *syncRun) hadAddress(a netip.Addr) bool {
	for k := range r.prev {
		if k.IP == a && r.own.dependsOnLink(k) {
			return true
		}
	}
	return false
}

// hadRealServer returns the real server addr of k as the last sync left
// it.
func (r *syncRun) hadRealServer(k Key, addr netip.AddrPort) (RealServer, bool) {
	vs, ok := r.prev[k]
	if !ok {
		return RealServer{}, false
	}
	i, found := slices.BinarySearchFunc(vs.RealServers, addr, func(rs RealServer, a netip.AddrPort) int { return rs.Addr.Compare(a) })
	if !found {
		return RealServer{}, false
	}
	return vs.RealServers[i], true
}

// edit returns r.next, copied from p.persist first if it is still shared,
// so that a sync that changes nothing copies nothing.
func (r *syncRun) edit() *persistentState {
	if !r.nextCopy {
		r.next = r.next.clone()
		r.own.hostVS = r.next.HostVS
		r.nextCopy = true
	}
	return r.next
}

func (r *syncRun) setHostVS(k Key) {
	if !r.next.HostVS[k] {
		r.edit().HostVS[k] = true
	}
}

func (r *syncRun) deleteHostVS(k Key) {
	if r.next.HostVS[k] {
		delete(r.edit().HostVS, k)
	}
}

func (r *syncRun) setDrain(dk drainKey, since time.Time) {
	if cur, ok := r.next.Drains[dk]; !ok || !cur.Equal(since) {
		r.edit().Drains[dk] = since
	}
}

func (r *syncRun) deleteDrain(dk drainKey) {
	if _, ok := r.next.Drains[dk]; ok {
		delete(r.edit().Drains, dk)
	}
}

// partialAddresses lists the addresses whose presence on the dummy link a
// partial sync needs to know: those of its keys, those it binds and those
// it may unbind.
func (r *syncRun) partialAddresses() map[netip.Addr]bool {
	m := make(map[netip.Addr]bool, len(r.partial.scope)+len(r.ds.Addresses)+len(r.partial.unwanted))
	for k := range r.partial.scope {
		m[k.IP] = true
	}
	for _, a := range r.ds.Addresses {
		m[a] = true
	}
	for _, a := range r.partial.unwanted {
		m[a] = true
	}
	return m
}

// linkSubset is addrSet(list) limited to the addresses in of, without
// building a set of the whole list; it stops once it found them all.
func linkSubset(list []netip.Addr, of map[netip.Addr]bool) map[netip.Addr]bool {
	m := make(map[netip.Addr]bool, len(of))
	if len(of) > 8 {
		for _, a := range list {
			if a = a.Unmap(); of[a] {
				if m[a] = true; len(m) == len(of) {
					break
				}
			}
		}
		return m
	}
	few := slices.Collect(maps.Keys(of)) // comparing beats hashing
	for _, a := range list {
		a = a.Unmap()
		for _, f := range few {
			if a == f {
				m[a] = true
				break
			}
		}
		if len(m) == len(few) {
			break
		}
	}
	return m
}

func (p *Proxier) logConflicts(ds DesiredState, changes dataplane.Changes, full bool) {
	for _, c := range ds.Conflicts {
		if full || changes.Has(c.Loser.ServiceName) || changes.Has(c.Winner.ServiceName) {
			klog.ErrorS(nil, "Two Services want the same IPVS virtual server; the first by name gets it",
				"virtualServer", c.Key, "winner", c.Winner, "loser", c.Loser)
		}
	}
}
