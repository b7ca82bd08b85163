package ebpf

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	cebpf "github.com/cilium/ebpf"
	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/dataplane"
)

// rcuGrace is how long entries stay after the last reference to them is
// gone, for programs that are mid-lookup (a few microseconds; far more
// under a preempted vCPU).
const rcuGrace = 5 * time.Millisecond

// kernelState is what the maps hold (the translation part; the LRU maps
// and counters belong to the programs).
type kernelState struct {
	frontends    map[l4]uint32
	services     map[uint32]socklbService
	slots        map[socklbSlotKey]uint32
	backends     map[uint32]l4
	backendAddrs map[l4]struct{}
	localAddrs   map[[16]byte]struct{}
}

func (k *kernelState) maxIDs() (svc, backend uint32) {
	for id := range k.services {
		svc = max(svc, id)
	}
	for key := range k.slots {
		svc = max(svc, key.SvcId)
	}
	for _, id := range k.frontends {
		svc = max(svc, id)
	}
	for id := range k.backends {
		backend = max(backend, id)
	}
	return svc, backend
}

// currentSlots returns the backend ids of svc's current generation in slot
// order, nil when a slot is missing (a torn write: rewrite it all).
func (k *kernelState) currentSlots(id uint32) []uint32 {
	svc, ok := k.services[id]
	if !ok {
		return nil
	}
	out := make([]uint32, 0, svc.Count)
	for i := uint32(1); i <= svc.Count; i++ {
		bid, ok := k.slots[socklbSlotKey{SvcId: id, Gen: uint16(svc.Gen), Slot: uint16(i)}]
		if !ok {
			return nil
		}
		out = append(out, bid)
	}
	return out
}

func readKernel(o *socklbObjects) (*kernelState, error) {
	k := &kernelState{
		frontends:    map[l4]uint32{},
		services:     map[uint32]socklbService{},
		slots:        map[socklbSlotKey]uint32{},
		backends:     map[uint32]l4{},
		backendAddrs: map[l4]struct{}{},
		localAddrs:   map[[16]byte]struct{}{},
	}
	errs := []error{
		each(o.Frontends, func(key socklbL4addr, id uint32) { k.frontends[l4FromKernel(key)] = id }),
		each(o.Services, func(id uint32, svc socklbService) { k.services[id] = svc }),
		each(o.Slots, func(key socklbSlotKey, id uint32) { k.slots[key] = id }),
		each(o.Backends, func(id uint32, be socklbBackend) { k.backends[id] = l4FromKernel(be.Addr) }),
		each(o.BackendAddrs, func(key socklbL4addr, _ uint8) { k.backendAddrs[l4FromKernel(key)] = struct{}{} }),
		each(o.LocalAddrs, func(key [16]byte, _ uint8) { k.localAddrs[key] = struct{}{} }),
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("read socket-LB maps: %w", err)
	}
	return k, nil
}

// writer applies changes to the maps and mirrors them in k, counting the
// writes.
type writer struct {
	o      *socklbObjects
	k      *kernelState
	writes int
}

func (w *writer) put(m *cebpf.Map, key, value any) error {
	w.writes++
	return m.Put(key, value)
}

func (w *writer) del(m *cebpf.Map, key any) error {
	w.writes++
	if err := m.Delete(key); err != nil && !errors.Is(err, cebpf.ErrKeyNotExist) {
		return err
	}
	return nil
}

// Sync makes the maps match st. A partial sync diffs against what the
// last sync left (the maps belong to this agent alone); a full one rereads
// the maps first, which repairs entries deleted or edited behind its back.
// The order of writes is the package's invariant (see doc.go).
func (s *SocketLB) Sync(ctx context.Context, st *dataplane.State, changes dataplane.Changes) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.objs == nil {
		return errClosed
	}
	nodeAddrs := s.cfg.NodeAddresses
	if nodeAddrs == nil {
		nodeAddrs = InterfaceAddrs
	}
	addrs, err := nodeAddrs()
	if err != nil {
		// NodePorts on the node's own addresses only: keep going with
		// State.NodeIPs.
		klog.ErrorS(err, "Listing node addresses for socket-LB NodePorts")
	}
	want := desired(st, addrs)

	full := changes.Full || s.kernel == nil
	k := s.kernel
	if full {
		if k, err = readKernel(s.objs); err != nil {
			s.kernel = nil
			return err
		}
	}
	s.kernel = nil // until this sync succeeds
	wasSynced := s.synced
	w := &writer{o: s.objs, k: k}
	if err := s.apply(w, want); err != nil {
		return err
	}
	s.kernel = k
	// A periodic full sync with no Service changed since the last
	// successful one has nothing to write unless something else did.
	if wasSynced && changes.Full && len(changes.Services) == 0 && w.writes > 0 {
		s.repairs.Add(1)
		klog.InfoS("Socket-LB maps differed from what this agent last wrote; repaired", "writes", w.writes)
	}
	s.lastWrites = w.writes
	klog.V(4).InfoS("Socket-LB sync", "full", full, "writes", w.writes)
	names := make(map[uint32]dataplane.ServicePortName, len(s.owner))
	for g, id := range s.owner {
		names[id] = g.name
	}
	s.names.Store(&names)
	return nil
}

func (s *SocketLB) apply(w *writer, want *desiredState) error {
	k, o := w.k, w.o
	svcMax, beMax := k.maxIDs()
	nextSvc := func() uint32 { svcMax++; return svcMax }
	nextBackend := func() uint32 { beMax++; return beMax }

	// Which BPF service id each group gets: the one it had, else the id
	// its frontends point at in the maps (a restarted agent), else a new
	// one.
	ids := make(map[groupKey]uint32, len(want.groups))
	claimed := map[uint32]bool{}
	keys := make([]groupKey, 0, len(want.groups))
	for g := range want.groups {
		keys = append(keys, g)
	}
	slices.SortFunc(keys, compareGroupKeys)
	for _, g := range keys {
		if id, ok := s.owner[g]; ok && !claimed[id] {
			ids[g], claimed[id] = id, true
		}
	}
	for _, g := range keys {
		if _, ok := ids[g]; ok {
			continue
		}
		for _, f := range want.groups[g].frontends {
			if id, ok := k.frontends[f]; ok && id != 0 && !claimed[id] {
				ids[g], claimed[id] = id, true
				break
			}
		}
		if _, ok := ids[g]; !ok {
			id := nextSvc()
			ids[g], claimed[id] = id, true
		}
	}

	// Backend addresses sockops counts: additions first, so a connection
	// to a new backend is counted from its first moment.
	for a := range want.backendAddrs {
		if _, ok := k.backendAddrs[a]; !ok {
			if err := w.put(o.BackendAddrs, a.kernel(), uint8(1)); err != nil {
				return fmt.Errorf("write backend address: %w", err)
			}
			k.backendAddrs[a] = struct{}{}
		}
	}
	for a := range want.localAddrs {
		if _, ok := k.localAddrs[a]; !ok {
			if err := w.put(o.LocalAddrs, a, uint8(1)); err != nil {
				return fmt.Errorf("write node address: %w", err)
			}
			k.localAddrs[a] = struct{}{}
		}
	}

	keep := map[uint32]bool{} // backend ids still referenced
	for _, g := range keys {
		id, grp := ids[g], want.groups[g]
		// This group's backends by address, from its current slots.
		byAddr := map[netip.AddrPort]uint32{}
		cur := k.currentSlots(id)
		for _, bid := range cur {
			if be, ok := k.backends[bid]; ok {
				byAddr[be.addrPort()] = bid
			}
		}
		proto := grp.frontends[0].proto
		slots := make([]uint32, 0, len(grp.slots))
		for _, ap := range grp.slots {
			bid, ok := byAddr[ap]
			want := l4From(ap, proto, 0)
			if !ok || k.backends[bid] != want {
				bid = nextBackend()
				if err := w.put(o.Backends, bid, socklbBackend{Addr: want.kernel()}); err != nil {
					return fmt.Errorf("write backend %s: %w", ap, err)
				}
				k.backends[bid] = want
				byAddr[ap] = bid
			}
			slots = append(slots, bid)
			keep[bid] = true
		}
		if err := w.service(id, slots, cur, grp); err != nil {
			return fmt.Errorf("service %s: %w", g.name, err)
		}
		for _, f := range grp.frontends {
			if have, ok := k.frontends[f]; !ok || have != id {
				if err := w.put(o.Frontends, f.kernel(), id); err != nil {
					return fmt.Errorf("write frontend %s of %s: %w", f.addrPort(), g.name, err)
				}
				k.frontends[f] = id
			}
		}
	}

	// Deletions, in reverse order: frontends, services with their slots,
	// backends, addresses.
	wantFrontends := map[l4]bool{}
	for _, g := range keys {
		for _, f := range want.groups[g].frontends {
			wantFrontends[f] = true
		}
	}
	for f := range k.frontends {
		if !wantFrontends[f] {
			if err := w.del(o.Frontends, f.kernel()); err != nil {
				return fmt.Errorf("delete frontend %s: %w", f.addrPort(), err)
			}
			delete(k.frontends, f)
		}
	}
	// What no lookup starting from now can reach: services whose
	// frontends are gone, slots of older generations, backends in no
	// current slot. A program that read the old entries a moment ago may
	// still follow them (it runs under RCU, in microseconds): delete
	// only after a grace period, so it never meets a dangling reference
	// and falls through mid-flip.
	var staleServices []uint32
	var staleSlots []socklbSlotKey
	var staleBackends []uint32
	for id := range k.services {
		if !claimed[id] {
			staleServices = append(staleServices, id)
		}
	}
	for key := range k.slots {
		svc, ok := k.services[key.SvcId]
		if ok && claimed[key.SvcId] && uint32(key.Gen) == svc.Gen && uint32(key.Slot) >= 1 && uint32(key.Slot) <= svc.Count {
			continue
		}
		staleSlots = append(staleSlots, key)
	}
	for bid := range k.backends {
		if !keep[bid] {
			staleBackends = append(staleBackends, bid)
		}
	}
	if len(staleServices)+len(staleSlots)+len(staleBackends) > 0 {
		time.Sleep(rcuGrace)
	}
	for _, id := range staleServices {
		if err := w.del(o.Services, id); err != nil {
			return fmt.Errorf("delete service %d: %w", id, err)
		}
		delete(k.services, id)
	}
	for _, key := range staleSlots {
		if err := w.del(o.Slots, key); err != nil {
			return fmt.Errorf("delete slot: %w", err)
		}
		delete(k.slots, key)
	}
	for _, bid := range staleBackends {
		if err := w.del(o.Backends, bid); err != nil {
			return fmt.Errorf("delete backend %d: %w", bid, err)
		}
		delete(k.backends, bid)
	}
	for a := range k.backendAddrs {
		if _, ok := want.backendAddrs[a]; !ok {
			if err := w.del(o.BackendAddrs, a.kernel()); err != nil {
				return fmt.Errorf("delete backend address: %w", err)
			}
			delete(k.backendAddrs, a)
		}
	}
	for a := range k.localAddrs {
		if _, ok := want.localAddrs[a]; !ok {
			if err := w.del(o.LocalAddrs, a); err != nil {
				return fmt.Errorf("delete node address: %w", err)
			}
			delete(k.localAddrs, a)
		}
	}
	s.owner = ids
	s.synced = true
	return nil
}

// service writes one BPF service: when its slots change, the new slots
// under the other generation first, then the entry that flips to them.
// The previous generation's slots are deleted with the other stale slots.
func (w *writer) service(id uint32, slots, cur []uint32, grp *group) error {
	o, k := w.o, w.k
	old, exists := k.services[id]
	want := socklbService{Count: uint32(len(slots)), Gen: old.Gen, AffinityTimeout: grp.affinityTimeout, MaxConns: grp.maxConns}
	if grp.affinityTimeout > 0 {
		want.Flags |= flagAffinity
	}
	if grp.leastConn {
		want.Flags |= flagLeastConn
	}
	if !exists || !slices.Equal(slots, cur) || cur == nil && len(slots) > 0 {
		if exists && len(slots) > 0 {
			want.Gen = (old.Gen + 1) & 0xffff
		}
		for i, bid := range slots {
			key := socklbSlotKey{SvcId: id, Gen: uint16(want.Gen), Slot: uint16(i + 1)}
			if have, ok := k.slots[key]; ok && have == bid && exists && want.Gen == old.Gen {
				continue
			}
			if err := w.put(o.Slots, key, bid); err != nil {
				return fmt.Errorf("write slot: %w", err)
			}
			k.slots[key] = bid
		}
	}
	if exists && old == want {
		return nil
	}
	if err := w.put(o.Services, id, want); err != nil {
		return fmt.Errorf("write service entry: %w", err)
	}
	k.services[id] = want
	return nil
}

func compareGroupKeys(a, b groupKey) int {
	if c := a.name.Compare(b.name); c != 0 {
		return c
	}
	if a.v6 != b.v6 {
		if !a.v6 {
			return -1
		}
		return 1
	}
	if a.external != b.external {
		if !a.external {
			return -1
		}
		return 1
	}
	return 0
}

// each calls fn for every entry of m.
func each[K, V any](m *cebpf.Map, fn func(K, V)) error {
	var k K
	var v V
	it := m.Iterate()
	for it.Next(&k, &v) {
		fn(k, v)
	}
	return it.Err()
}
