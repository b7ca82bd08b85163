package nftables

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/dataplane"
)

// planFullSync reads family f's table, computes its whole desired state and
// plans the difference.
func (p *Proxier) planFullSync(logger klog.Logger, f *family, st *dataplane.State) (*batch, *tableState, error) {
	kt, err := readTable(p.conn, f, true)
	if err != nil {
		return nil, nil, fmt.Errorf("full sync: read %s table: %w", f.name, err)
	}
	want := buildTableState(logger, p.cfg, f, st)
	b := newBatch(f)
	if err := planFull(p.cfg, b, kt, want); err != nil {
		return nil, nil, fmt.Errorf("full sync of the %s table: %w", f.name, err)
	}
	return b, want, nil
}

// planFull queues what turns kt into skeleton + want.
func planFull(cfg Config, b *batch, kt *kernelTable, want *tableState) error {
	f := b.f
	specs := setSpecs(f)
	if !kt.exists {
		b.addTable()
	}
	portSets := want.portSets()
	allSets := append([]setSpec(nil), specs...)
	for _, name := range slices.Sorted(maps.Keys(portSets)) {
		allSets = append(allSets, portSets[name])
	}
	for _, spec := range allSets {
		ks := kt.sets[spec.name]
		if ks == nil {
			b.addSet(spec)
			continue
		}
		if !setMatches(ks, spec) {
			// Rules refer to the set; replacing it means rewriting them
			// all. Only a foreign edit (or a future incompatible version)
			// gets here.
			return fmt.Errorf("set %s exists with another type or flags; run cleanup to recreate the table", spec.name)
		}
	}

	wanted := map[string]bool{}
	for _, c := range skeletonChains(cfg, f) {
		wanted[c.name] = true
		planChain(b, kt.chains[c.name], c)
	}
	for _, name := range slices.SortedFunc(maps.Keys(want.ports), dataplane.ServicePortName.Compare) {
		for _, c := range want.ports[name].chains {
			wanted[c.name] = true
			planChain(b, kt.chains[c.name], c)
		}
	}

	wantElems := want.elements(specs)
	for _, spec := range specs {
		have, wnt := kt.elems[spec.name], wantElems[spec.name]
		var dels []string
		var adds []element
		for k, v := range have {
			if w, ok := wnt[k]; !ok || w != v {
				dels = append(dels, k)
			}
		}
		for k, v := range wnt {
			if h, ok := have[k]; !ok || h != v {
				adds = append(adds, element{set: spec.name, key: k, chain: strings.TrimPrefix(v, "goto ")})
			}
		}
		slices.Sort(dels)
		slices.SortFunc(adds, func(a, b element) int { return strings.Compare(a.key, b.key) })
		b.delElements(spec, dels)
		b.addElements(spec, adds)
	}

	for _, name := range slices.Sorted(maps.Keys(kt.chains)) {
		if !wanted[name] {
			b.delChain(name)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(kt.sets)) {
		s := kt.sets[name]
		_, portSet := portSets[name]
		if !s.Anonymous && !isAnonymousSetName(name) && !portSet && !slices.ContainsFunc(specs, func(sp setSpec) bool { return sp.name == name }) {
			b.delSet(name)
		}
	}
	return nil
}

// planChain queues what makes the kernel's chain kc (nil if missing) into
// spec: create it, recreate it (a base chain on the wrong hook), or refill
// it when its rules differ. A matching chain is left alone.
func planChain(b *batch, kc *kernelChain, spec chainSpec) {
	switch {
	case kc == nil:
		b.addChain(spec)
		b.writeRules(spec.name, spec.rules, false)
	case !hookMatches(kc.chain, spec.hook):
		b.replaceBaseChain(spec)
		b.writeRules(spec.name, spec.rules, false)
	case !slices.Equal(kc.rules, ruleTexts(spec.rules)):
		b.writeRules(spec.name, spec.rules, true)
	}
}

func hookMatches(c *nftables.Chain, h *baseHook) bool {
	if h == nil {
		return c.Hooknum == nil
	}
	return c.Hooknum != nil && *c.Hooknum == h.hook && c.Priority != nil && *c.Priority == h.priority &&
		c.Type == h.typ && (c.Policy == nil || *c.Policy == nftables.ChainPolicyAccept)
}

// setMatches compares a set read back with its spec. The library reports a
// verdict map's data type in KeyType (a decoding quirk of v0.3.0), so maps
// are compared by flags and key length only.
func setMatches(s *nftables.Set, spec setSpec) bool {
	if s.IsMap != spec.isMap || s.Interval || s.Anonymous || s.Constant || s.HasTimeout != spec.timeout {
		return false
	}
	if spec.isMap {
		return true
	}
	return s.KeyType.Name == spec.keyType.Name && s.KeyType.Bytes == spec.keyType.Bytes
}

// planPartial updates ts (the applied state) with the changed Services and
// returns the writes that make the kernel follow. It reads nothing from the
// kernel and costs O(size of the changed Services) plus one pass over the
// State's Service ports to find the changed ones.
func planPartial(logger klog.Logger, cfg Config, f *family, ts *tableState, st *dataplane.State, changes dataplane.Changes) *batch {
	// The ports of changed Services, before and after.
	before := map[dataplane.ServicePortName]*servicePortState{}
	after := map[dataplane.ServicePortName]*servicePortState{}
	for svc := range changes.Services {
		for _, n := range ts.byService[svc] {
			before[n] = ts.ports[n]
		}
	}
	for name, sp := range st.Services {
		if !changes.Has(name.ServiceName) {
			continue
		}
		if ps := desiredServicePort(cfg, f, sp, st.Endpoints[name], st.Weights[name], nodeOf(st)); ps != nil {
			after[name] = ps
		}
	}

	// Remember the elements the touched keys have now, apply the change
	// to the state, then compare.
	affected := map[frontend]bool{}
	addrs := map[netip.Addr]bool{}
	for _, m := range []map[dataplane.ServicePortName]*servicePortState{before, after} {
		for _, ps := range m {
			for _, fr := range ps.frontends {
				affected[fr] = true
			}
			for _, a := range ps.hairpin {
				addrs[a] = true
			}
		}
	}
	oldElems := map[frontend][]element{}
	for fr := range affected {
		oldElems[fr] = ts.elementsFor(fr)
	}
	oldHairpin := map[netip.Addr]bool{}
	for a := range addrs {
		oldHairpin[a] = ts.hairpin[a] > 0
	}

	for n := range before {
		ts.remove(n)
	}
	for _, n := range slices.SortedFunc(maps.Keys(after), dataplane.ServicePortName.Compare) {
		ts.add(logger, after[n])
	}

	b := newBatch(f)
	var delSets []string
	for _, n := range slices.SortedFunc(maps.Keys(mergeKeys(before, after)), dataplane.ServicePortName.Compare) {
		old, nw := before[n], after[n]
		if old == nil {
			old = &servicePortState{}
		}
		if nw == nil {
			nw = &servicePortState{}
		}
		for _, s := range nw.sets {
			if !slices.ContainsFunc(old.sets, func(o setSpec) bool { return o.name == s.name }) {
				b.addSet(s)
			}
		}
		for _, c := range nw.chains {
			oc, had := old.chain(c.name)
			switch {
			case !had:
				b.addChain(chainSpec{name: c.name})
				b.writeRules(c.name, c.rules, false)
			case !slices.Equal(ruleTexts(oc.rules), ruleTexts(c.rules)):
				b.writeRules(c.name, c.rules, true)
			}
		}
		for _, c := range old.chains {
			if _, keep := nw.chain(c.name); !keep {
				b.delChain(c.name)
			}
		}
		for _, s := range old.sets {
			if !slices.ContainsFunc(nw.sets, func(o setSpec) bool { return o.name == s.name }) {
				delSets = append(delSets, s.name)
			}
		}
	}
	// After the chains: their rules refer to the sets.
	for _, name := range delSets {
		b.delSet(name)
	}

	dels := map[string][]string{}
	adds := map[string][]element{}
	for _, fr := range slices.SortedFunc(maps.Keys(affected), compareFrontends) {
		oldE, newE := oldElems[fr], ts.elementsFor(fr)
		for _, e := range oldE {
			if !slices.Contains(newE, e) {
				dels[e.set] = append(dels[e.set], e.key)
			}
		}
		for _, e := range newE {
			if !slices.Contains(oldE, e) {
				adds[e.set] = append(adds[e.set], e)
			}
		}
	}
	for _, a := range slices.SortedFunc(maps.Keys(addrs), netip.Addr.Compare) {
		k := string(hairpinKey(a))
		switch now := ts.hairpin[a] > 0; {
		case oldHairpin[a] && !now:
			dels[setHairpin] = append(dels[setHairpin], k)
		case !oldHairpin[a] && now:
			adds[setHairpin] = append(adds[setHairpin], element{set: setHairpin, key: k})
		}
	}
	for _, spec := range setSpecs(f) {
		b.delElements(spec, dels[spec.name])
		b.addElements(spec, adds[spec.name])
	}
	return b
}

func mergeKeys[K comparable, V any](a, b map[K]V) map[K]bool {
	out := make(map[K]bool, len(a)+len(b))
	for k := range a {
		out[k] = true
	}
	for k := range b {
		out[k] = true
	}
	return out
}
