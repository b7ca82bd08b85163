package iptables

import (
	"context"
	"slices"

	"k8s.io/klog/v2"
)

// listChains returns the chains of every table used.
func (p *Proxier) listChains() (map[string][]string, error) {
	existing := map[string][]string{}
	for _, table := range tableNames() {
		chains, err := p.tables.ListChains(table)
		if err != nil {
			return nil, err
		}
		existing[table] = chains
	}
	return existing, nil
}

// syncChains creates missing owned chains and rewrites those whose rules
// differ, in Desired's order (leaves first), so a jump is only written once
// its target chain exists and is filled. existing is what listChains saw.
func (p *Proxier) syncChains(ctx context.Context, want DesiredState, existing map[string][]string, n *opCounts) error {
	for _, c := range want.Chains {
		if err := ctx.Err(); err != nil {
			return err
		}
		var cur []Rule
		if slices.Contains(existing[c.Table], c.Name) {
			var err error
			if cur, err = p.tables.ListRules(c.Table, c.Name); err != nil {
				return err
			}
		} else {
			if err := p.tables.NewChain(c.Table, c.Name); err != nil && !IsExists(err) {
				return err
			}
			n.chainCreates++
		}
		if err := p.writeChain(ctx, c.Table, c.Name, cur, c.Rules, n); err != nil {
			return err
		}
	}
	return nil
}

// writeChain turns cur into want with the fewest rule writes and no moment
// where a rule both lists have is missing: the common prefix and suffix are
// kept, the differing middle is replaced rule by rule (iptables -R is
// atomic), and what is left over is inserted or deleted. An unchanged chain
// costs nothing.
func (p *Proxier) writeChain(ctx context.Context, table, chain string, cur, want []Rule, n *opCounts) error {
	pre := 0
	for pre < len(cur) && pre < len(want) && cur[pre].Equal(want[pre]) {
		pre++
	}
	suf := 0
	for suf < len(cur)-pre && suf < len(want)-pre && cur[len(cur)-1-suf].Equal(want[len(want)-1-suf]) {
		suf++
	}
	curMid, wantMid := cur[pre:len(cur)-suf], want[pre:len(want)-suf]
	if len(curMid) == 0 && len(wantMid) == 0 {
		return nil
	}
	klog.FromContext(ctx).V(2).Info("Rewriting chain", "table", table, "chain", chain,
		"keep", pre+suf, "replace", min(len(curMid), len(wantMid)), "had", len(cur), "want", len(want))
	common := min(len(curMid), len(wantMid))
	for i := 0; i < common; i++ {
		if err := p.tables.Replace(table, chain, pre+i+1, wantMid[i]); err != nil {
			return err
		}
		n.ruleWrites++
	}
	length := len(cur)
	for i := common; i < len(wantMid); i++ {
		pos := pre + i + 1
		var err error
		if pos == length+1 {
			err = p.tables.Append(table, chain, wantMid[i])
		} else {
			err = p.tables.Insert(table, chain, pos, wantMid[i])
		}
		if err != nil {
			return err
		}
		length++
		n.ruleWrites++
	}
	for i := common; i < len(curMid); i++ {
		if err := p.tables.DeleteAt(table, chain, pre+common+1); err != nil {
			return err
		}
		n.ruleWrites++
	}
	return nil
}

// syncHooks makes the hooks of each built-in chain its first rules, in
// order, each exactly once. A missing or misplaced hook is inserted where
// it belongs (other software inserted before it, another hook of ours
// taking its place) and the old copy deleted afterwards, so the jump is
// never absent. Other rules in the built-in chain are never touched.
func (p *Proxier) syncHooks(ctx context.Context, want DesiredState, n *opCounts) error {
	for _, g := range groupHooks(want.Hooks) {
		if err := ctx.Err(); err != nil {
			return err
		}
		rules, err := p.tables.ListRules(g.table, g.chain)
		if err != nil {
			return err
		}
		for i, h := range g.rules {
			if i < len(rules) && rules[i].Equal(h) {
				continue
			}
			if i == len(rules) {
				err = p.tables.Append(g.table, g.chain, h)
			} else {
				err = p.tables.Insert(g.table, g.chain, i+1, h)
			}
			if err != nil {
				return err
			}
			n.ruleWrites++
			rules = slices.Insert(rules, i, h)
			klog.FromContext(ctx).V(2).Info("Inserted hook", "table", g.table, "chain", g.chain, "position", i+1, "rule", h.String())
		}
		// Delete from the bottom so positions above stay valid.
		for i := len(rules) - 1; i >= len(g.rules); i-- {
			if !isOurHook(rules[i]) {
				continue
			}
			if err := p.tables.DeleteAt(g.table, g.chain, i+1); err != nil {
				return err
			}
			n.ruleWrites++
			klog.FromContext(ctx).V(2).Info("Deleted duplicate or stale hook", "table", g.table, "chain", g.chain, "rule", rules[i].String())
		}
	}
	return nil
}

// removeStaleChains deletes owned chains Desired no longer lists (chains
// syncChains created are all desired, so what listChains saw before is
// enough). By now no desired chain or hook jumps to them; hooks of ours
// elsewhere (a built-in chain we no longer hook) are removed first.
func (p *Proxier) removeStaleChains(ctx context.Context, want DesiredState, existing map[string][]string, n *opCounts) error {
	for _, table := range tableNames() {
		var stale []string
		for _, c := range existing[table] {
			if isOwned(c) && want.Chain(table, c) == nil {
				stale = append(stale, c)
			}
		}
		if len(stale) == 0 {
			continue
		}
		if err := p.removeHooks(table, func(r Rule) bool { return slices.Contains(stale, r.Target()) }, n); err != nil {
			return err
		}
		// Flush all before deleting any: stale chains may jump to each other.
		for _, c := range stale {
			if err := p.tables.ClearChain(table, c); err != nil {
				return err
			}
		}
		for _, c := range stale {
			if err := p.tables.DeleteChain(table, c); err != nil && !IsNotFound(err) {
				return err
			}
			n.chainDeletes++
			klog.FromContext(ctx).V(2).Info("Deleted stale chain", "table", table, "chain", c)
		}
	}
	return nil
}

// removeHooks deletes our hook rules matching which from every built-in
// chain of table.
func (p *Proxier) removeHooks(table string, which func(Rule) bool, n *opCounts) error {
	for _, chain := range builtinChains(table) {
		rules, err := p.tables.ListRules(table, chain)
		if err != nil {
			return err
		}
		for i := len(rules) - 1; i >= 0; i-- {
			if isOurHook(rules[i]) && which(rules[i]) {
				if err := p.tables.DeleteAt(table, chain, i+1); err != nil {
					return err
				}
				n.ruleWrites++
			}
		}
	}
	return nil
}
