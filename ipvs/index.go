package ipvs

import (
	"maps"
	"net/netip"
	"slices"

	"github.com/switchyard/switchyard/dataplane"
)

// desiredIndex remembers, from one sync to the next, which keys and
// dummy-link addresses each Service port claims, so that a partial sync
// computes the desired state of the changed Services only, and of the keys
// whose owner they change, instead of calling Desired for the whole node.
//
// A full sync rebuilds it (see desired); a partial sync updates it with
// update. It describes the model as of the last sync: by the contract of
// dataplane.Changes, Services a partial sync is not told about are as they
// were then. A failed sync makes the next one full, so it is rebuilt.
type desiredIndex struct {
	// nodeIPs the index was built for; a change makes the sync full.
	nodeIPs []netip.Addr
	// ports holds the claims of each Service's ports, without repeats;
	// every entry of State.Services is there, even one claiming nothing.
	ports map[dataplane.ServiceName][]portClaims
	// entries is len(State.Services).
	entries int
	// keys lists the claimants of each key by ServicePortName order: the
	// first owns it (as in Desired), the others lost a conflict.
	keys map[Key][]claimant
	// addrs counts the Service ports that want each dummy-link address.
	addrs map[netip.Addr]int
}

// portClaims is what one Service port claims.
type portClaims struct {
	name dataplane.ServicePortName
	fes  []frontend
}

// claimant is one Service port claiming a key.
type claimant struct {
	name     dataplane.ServicePortName
	nodePort bool
	external bool
}

func newDesiredIndex(nodeIPs []netip.Addr) *desiredIndex {
	return &desiredIndex{
		nodeIPs: slices.Clone(nodeIPs),
		ports:   map[dataplane.ServiceName][]portClaims{},
		keys:    map[Key][]claimant{},
		addrs:   map[netip.Addr]int{},
	}
}

// recordPort records the claims of a port (fes without repeats) once they
// are in keys.
func (idx *desiredIndex) recordPort(name dataplane.ServicePortName, fes []frontend) {
	idx.ports[name.ServiceName] = append(idx.ports[name.ServiceName], portClaims{name: name, fes: fes})
	for _, fe := range fes {
		if !fe.nodePort {
			idx.addrs[fe.key.IP]++
		}
	}
}

func (idx *desiredIndex) insertClaim(k Key, c claimant) {
	cl := idx.keys[k]
	i, _ := slices.BinarySearchFunc(cl, c.name, func(e claimant, n dataplane.ServicePortName) int { return e.name.Compare(n) })
	idx.keys[k] = slices.Insert(cl, i, c)
}

func (idx *desiredIndex) removeClaim(k Key, name dataplane.ServicePortName) {
	cl := idx.keys[k]
	i := slices.IndexFunc(cl, func(c claimant) bool { return c.name == name })
	if i < 0 {
		return
	}
	if cl = slices.Delete(cl, i, i+1); len(cl) == 0 {
		delete(idx.keys, k)
	} else {
		idx.keys[k] = cl
	}
}

// owner returns the Service port that owns k.
func (idx *desiredIndex) owner(k Key) (dataplane.ServicePortName, bool) {
	if cl := idx.keys[k]; len(cl) > 0 {
		return cl[0].name, true
	}
	return dataplane.ServicePortName{}, false
}

// partialDesired is the share of the desired state a partial sync handles.
type partialDesired struct {
	// ds holds the wanted virtual servers among scope; as Addresses, those
	// the changed Services want and those of the virtual servers in ds;
	// as Conflicts, those on keys the changed Services claim.
	ds DesiredState
	// scope: the keys the changed Services owned after the last sync or
	// own now (so also the keys whose owner changes), and the extra keys
	// update was given.
	scope map[Key]bool
	// unwanted: addresses the changed Services wanted and no Service
	// wants any more. Sorted.
	unwanted []netip.Addr
}

// update replaces the claims of the changed Services with those they make
// in st and returns what the partial sync must look at; extra keys (those
// of draining real servers) are added to its scope. Its cost depends on
// the changed Services and extra only, except when a changed Service gained
// a port: finding it takes a pass over st.Services (Changes names
// Services, not ports).
func (idx *desiredIndex) update(st *dataplane.State, changed map[dataplane.ServiceName]struct{}, extra []Key, cfg Config) partialDesired {
	out := partialDesired{ds: DesiredState{VirtualServers: map[Key]*DesiredVS{}}, scope: map[Key]bool{}}
	dropped := map[netip.Addr]bool{}
	var known []dataplane.ServicePortName // ports of the changed Services still in st
	old := 0
	for svc := range changed {
		for _, pc := range idx.ports[svc] {
			old++
			if _, ok := st.Services[pc.name]; ok {
				known = append(known, pc.name)
			}
			for _, fe := range pc.fes {
				if o, _ := idx.owner(fe.key); o == pc.name {
					out.scope[fe.key] = true
				}
				idx.removeClaim(fe.key, pc.name)
				if !fe.nodePort {
					if idx.addrs[fe.key.IP]--; idx.addrs[fe.key.IP] <= 0 {
						delete(idx.addrs, fe.key.IP)
					}
					dropped[fe.key.IP] = true
				}
			}
		}
		delete(idx.ports, svc)
	}

	claimed := map[Key]bool{} // keys the changed Services claim now
	bind := map[netip.Addr]bool{}
	// Services not reported changed kept their entries, so st holds this
	// many new ones, all of changed Services.
	names := known
	if added := len(st.Services) - (idx.entries - old) - len(known); added != 0 {
		names = changedPorts(st, changed)
	} else {
		slices.SortFunc(names, dataplane.ServicePortName.Compare)
	}
	idx.entries = len(st.Services)
	var buf []frontend
	for _, name := range names {
		sp := st.Services[name]
		if sp == nil {
			idx.recordPort(name, nil)
			continue
		}
		buf = dedupeFrontends(appendFrontends(buf[:0], sp, idx.nodeIPs))
		fes := slices.Clone(buf)
		for _, fe := range fes {
			idx.insertClaim(fe.key, claimant{name: name, nodePort: fe.nodePort, external: fe.external})
			claimed[fe.key] = true
			if !fe.nodePort {
				bind[fe.key.IP] = true
			}
		}
		idx.recordPort(name, fes)
	}
	for k := range claimed {
		cl := idx.keys[k]
		if _, ok := changed[cl[0].name.ServiceName]; ok {
			out.scope[k] = true
		}
		for _, c := range cl[1:] {
			out.ds.Conflicts = append(out.ds.Conflicts, Conflict{Key: k, Winner: cl[0].name, Loser: c.name})
		}
	}
	sortConflicts(out.ds.Conflicts)
	for _, k := range extra {
		out.scope[k] = true
	}

	pds := map[dataplane.ServicePortName]*portDesired{}
	for k := range out.scope {
		cl := idx.keys[k]
		if len(cl) == 0 {
			continue
		}
		c := cl[0]
		sp := st.Services[c.name]
		if sp == nil {
			continue // gone without being reported changed; a full sync agrees
		}
		pd := pds[c.name]
		if pd == nil {
			v := newPortDesired(c.name, sp, st, cfg)
			pd = &v
			pds[c.name] = pd
		}
		out.ds.VirtualServers[k] = pd.virtualServer(k, c.nodePort, c.external)
		if idx.addrs[k.IP] > 0 {
			bind[k.IP] = true
		}
	}
	out.ds.Addresses = slices.SortedFunc(maps.Keys(bind), netip.Addr.Compare)
	for a := range dropped {
		if idx.addrs[a] == 0 {
			out.unwanted = append(out.unwanted, a)
		}
	}
	slices.SortFunc(out.unwanted, netip.Addr.Compare)
	return out
}

// changedPorts returns, sorted, the entries in st.Services of the changed
// Services.
func changedPorts(st *dataplane.State, changed map[dataplane.ServiceName]struct{}) []dataplane.ServicePortName {
	var names []dataplane.ServicePortName
	switch len(changed) {
	case 0:
		return nil
	case 1: // compare instead of hashing every name
		var only dataplane.ServiceName
		for n := range changed {
			only = n
		}
		for name := range st.Services {
			if name.ServiceName == only {
				names = append(names, name)
			}
		}
	default:
		for name := range st.Services {
			if _, ok := changed[name.ServiceName]; ok {
				names = append(names, name)
			}
		}
	}
	slices.SortFunc(names, dataplane.ServicePortName.Compare)
	return names
}

// dedupeFrontends keeps the first claim of each key, in place.
func dedupeFrontends(fes []frontend) []frontend {
	out := fes[:0]
	if len(fes) > 32 {
		seen := make(map[Key]bool, len(fes))
		for _, fe := range fes {
			if !seen[fe.key] {
				seen[fe.key] = true
				out = append(out, fe)
			}
		}
		return out
	}
next:
	for _, fe := range fes {
		for _, o := range out {
			if o.key == fe.key {
				continue next
			}
		}
		out = append(out, fe)
	}
	return out
}
