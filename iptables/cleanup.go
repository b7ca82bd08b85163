package iptables

import (
	"context"
	"errors"

	"k8s.io/klog/v2"
)

// Cleanup removes every hook, chain and set this package owns in the
// Proxier's family (the chains in its Tables, the sets starting with the
// family's prefix, see ownsSet), found by listing the kernel (not from
// memory: it works in a fresh process), and nothing else. A dual-stack node
// cleans up with one Proxier per family. It keeps going after an error and returns them all joined;
// running it again is harmless.
//
// Order matters to the kernel: hooks first (a referenced chain cannot be
// deleted), chains flushed before deleted (they reference each other), sets
// last (a set referenced by a rule cannot be destroyed).
func (p *Proxier) Cleanup(ctx context.Context) error {
	logger := klog.FromContext(ctx).WithValues("dataplane", p.Name())
	var errs []error
	var n opCounts
	for _, table := range tableNames() {
		if err := p.removeHooks(table, func(Rule) bool { return true }, &n); err != nil {
			errs = append(errs, err)
		}
	}
	for _, table := range tableNames() {
		chains, err := p.tables.ListChains(table)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var owned []string
		for _, c := range chains {
			if isOwned(c) {
				owned = append(owned, c)
			}
		}
		for _, c := range owned {
			if err := p.tables.ClearChain(table, c); err != nil {
				errs = append(errs, err)
			}
		}
		for _, c := range owned {
			if err := p.tables.DeleteChain(table, c); err != nil && !IsNotFound(err) {
				errs = append(errs, err)
				continue
			}
			n.chainDeletes++
		}
	}
	names, err := p.ipset.ListNames()
	if err != nil {
		errs = append(errs, err)
	}
	destroyed := 0
	for _, name := range names {
		if !ownsSet(p.cfg.Family, name) {
			continue
		}
		if err := p.ipset.Destroy(name); err != nil && !IsNotFound(err) {
			errs = append(errs, err)
			continue
		}
		destroyed++
	}
	p.synced = false
	p.known = nil
	logger.V(1).Info("Cleaned up iptables and ipsets", "hooksDeleted", n.ruleWrites,
		"chainsDeleted", n.chainDeletes, "setsDestroyed", destroyed, "errors", len(errs))
	return errors.Join(errs...)
}
