package iptables

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"k8s.io/klog/v2"
)

// knownSet is what the kernel holds in one owned set as of the last sync
// that read or wrote it.
type knownSet struct {
	spec    SetSpec
	members map[Member]struct{}
}

// syncSets creates missing sets, grows sets that are too small and diffs
// the members of the others. A set is never flushed: members that stay are
// never touched.
//
// Full syncs read every set back from the kernel. Partial syncs diff
// against p.known instead (reading a 70000-member set costs ~300 ms through
// the netlink library, measured on this host) and only check that each set
// still exists, so a set destroyed behind our back is recreated at once,
// while a member removed behind our back waits for the next full sync.
func (p *Proxier) syncSets(ctx context.Context, want DesiredState, full bool, n *opCounts) error {
	if p.known == nil {
		p.known = map[string]*knownSet{}
	}
	for _, ds := range want.Sets {
		if err := ctx.Err(); err != nil {
			return err
		}
		cur, err := p.currentSet(ds.Spec.Name, full)
		if err != nil {
			return err
		}
		// Forget what we knew until the set is in its new state.
		delete(p.known, ds.Spec.Name)
		var now *knownSet
		switch {
		case cur == nil:
			now, err = p.createSet(ctx, ds, n)
		case !cur.spec.sameKind(ds.Spec):
			// Swap cannot change a set's type, and destroying it needs every
			// rule referencing it gone first; not worth automating for a
			// name collision nobody should have.
			err = fmt.Errorf("set %s exists as %s, want %s: remove it (switchyard --cleanup)", ds.Spec.Name, cur.spec, ds.Spec)
		case cur.spec.MaxElem < ds.Spec.MaxElem:
			now, err = p.growSet(ctx, cur, ds, n)
		default:
			now, err = p.diffMembers(ctx, cur, ds, n)
		}
		if err != nil {
			return err
		}
		p.known[ds.Spec.Name] = now
	}
	return nil
}

// currentSet returns what the kernel holds in set name, nil if the set does
// not exist.
func (p *Proxier) currentSet(name string, full bool) (*knownSet, error) {
	if k := p.known[name]; k != nil && !full {
		_, err := p.ipset.Test(name, probeMember(k.spec))
		switch {
		case err == nil:
			return k, nil
		case IsNotFound(err):
			return nil, nil
		default:
			return nil, err
		}
	}
	s, err := p.ipset.Get(name)
	switch {
	case IsNotFound(err):
		return nil, nil
	case err != nil:
		return nil, err
	}
	return &knownSet{spec: s.SetSpec, members: memberSet(s.Members)}, nil
}

func memberSet(ms []Member) map[Member]struct{} {
	out := make(map[Member]struct{}, len(ms))
	for _, m := range ms {
		out[m] = struct{}{}
	}
	return out
}

// diffMembers deletes unwanted members first, then adds missing ones, so
// the set never holds more than max(current, wanted) members and cannot
// overflow on the way.
func (p *Proxier) diffMembers(ctx context.Context, cur *knownSet, ds DesiredSet, n *opCounts) (*knownSet, error) {
	wanted := ds.Members
	var stale []Member
	for m := range cur.members {
		if _, ok := wanted[m]; !ok {
			stale = append(stale, m)
		}
	}
	// Deterministic order: logs and tests see the same sequence every run.
	slices.SortFunc(stale, func(a, b Member) int { return strings.Compare(a.String(), b.String()) })
	for _, m := range stale {
		if err := p.ipset.Del(ds.Spec.Name, m); err != nil && !IsNotFound(err) {
			return nil, err
		}
		n.memberDels++
	}
	if err := p.addMembers(ctx, ds.Spec.Name, ds.Members, cur.members, n); err != nil {
		return nil, err
	}
	return &knownSet{spec: cur.spec, members: wanted}, nil
}

// addMembers adds every member of ms not in present.
func (p *Proxier) addMembers(ctx context.Context, set string, ms, present map[Member]struct{}, n *opCounts) error {
	i := 0
	for m := range ms {
		if _, ok := present[m]; ok {
			continue
		}
		// Big fills take a while (one netlink round trip per member).
		if i++; i%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		if err := p.ipset.Add(set, m); err != nil && !IsExists(err) {
			return err
		}
		n.memberAdds++
	}
	return nil
}

func (p *Proxier) createSet(ctx context.Context, ds DesiredSet, n *opCounts) (*knownSet, error) {
	if err := p.ipset.Create(ds.Spec); err != nil {
		return nil, err
	}
	n.setCreates++
	klog.FromContext(ctx).V(2).Info("Created set", "set", ds.Spec.Name, "spec", ds.Spec.String())
	if err := p.addMembers(ctx, ds.Spec.Name, ds.Members, nil, n); err != nil {
		return nil, err
	}
	return &knownSet{spec: ds.Spec, members: ds.Members}, nil
}

// growSet replaces a set whose maxelem is below what its content needs by
// a bigger one without a moment where the set is empty or partial: fill a
// temporary set of the new size, swap it in (the kernel swaps atomically,
// and rules reference the name), destroy the old one. A maxelem is fixed
// at creation, so there is no in-place resize.
func (p *Proxier) growSet(ctx context.Context, cur *knownSet, ds DesiredSet, n *opCounts) (_ *knownSet, err error) {
	tmp := ds.Spec
	tmp.Name = tempSetName(ds.Spec.Family, ds.Spec.Name)
	// A temp set left by an interrupted grow would make Create fail.
	if err := p.ipset.Destroy(tmp.Name); err != nil {
		return nil, err
	}
	if err := p.ipset.Create(tmp); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			// Best effort: the next full sync removes it otherwise.
			err = errors.Join(err, p.ipset.Destroy(tmp.Name))
		}
	}()
	if err := p.addMembers(ctx, tmp.Name, ds.Members, nil, n); err != nil {
		return nil, err
	}
	if err := p.ipset.Swap(ds.Spec.Name, tmp.Name); err != nil {
		return nil, err
	}
	// tmp now holds the old content under the temp name, unreferenced.
	if err := p.ipset.Destroy(tmp.Name); err != nil {
		return nil, err
	}
	n.setGrows++
	klog.FromContext(ctx).V(1).Info("Grew set", "set", ds.Spec.Name, "fromMaxElem", cur.spec.MaxElem,
		"toMaxElem", ds.Spec.MaxElem, "members", len(ds.Members))
	return &knownSet{spec: ds.Spec, members: ds.Members}, nil
}

// removeStaleSets destroys this family's owned sets Desired no longer lists
// (a temp set of an interrupted grow, a set of an older version). A set
// still referenced by a rule is left for a later sync. The other family's
// sets are not ours to judge (see ownsSet).
func (p *Proxier) removeStaleSets(ctx context.Context, want DesiredState) error {
	names, err := p.ipset.ListNames()
	if err != nil {
		return err
	}
	for _, name := range names {
		if !ownsSet(p.cfg.Family, name) || want.Set(name) != nil {
			continue
		}
		switch err := p.ipset.Destroy(name); {
		case err == nil:
			klog.FromContext(ctx).V(2).Info("Destroyed stale set", "set", name)
		case IsInUse(err):
			klog.FromContext(ctx).Info("Stale set still referenced, keeping it", "set", name, "err", err)
		default:
			return err
		}
	}
	return nil
}
