package hostport

import (
	"fmt"
	"maps"
	"slices"

	"github.com/google/nftables"
)

// batch collects the writes of one family's table in the order the kernel
// needs them within one transaction: the table, its sets and chains (the
// regular chain before the base chains whose rules jump to it), rules,
// then element deletions before additions (a changed map element is
// deleted and added again: the kernel refuses to overwrite one).
type batch struct {
	f     *family
	table *nftables.Table
	ops   []func(Conn) error
	stats syncStats
	// rebuild says why the table is deleted and created again ("" when it
	// is not).
	rebuild string
}

// syncStats counts what a sync wrote, for logs and tests.
type syncStats struct {
	Messages        int // netlink messages in the transaction
	TablesCreated   int
	ChainsRewritten int
	ElementsAdded   int
	ElementsDeleted int
}

func (s *syncStats) add(o syncStats) {
	s.Messages += o.Messages
	s.TablesCreated += o.TablesCreated
	s.ChainsRewritten += o.ChainsRewritten
	s.ElementsAdded += o.ElementsAdded
	s.ElementsDeleted += o.ElementsDeleted
}

func (b *batch) queue(msgs int, op func(Conn) error) {
	b.ops = append(b.ops, op)
	b.stats.Messages += msgs
}

// plan queues what turns the kernel's table kt into the skeleton plus the
// elements of want. A table whose structure (sets, chains, hooks) differs
// from the skeleton is deleted and created again in the same transaction:
// hostport owns it entirely, it is small, and the kernel swaps it
// atomically, so packets see either the old or the new table. Otherwise
// only chains whose rules differ are refilled, and only differing
// elements written. A table that already matches gets no writes.
func plan(f *family, kt *kernelTable, want entries) *batch {
	b := &batch{f: f, table: f.tableRef()}
	specs, chains := setSpecs(f), skeleton(f)
	wantElems := want.elements()
	if kt.exists {
		b.rebuild = structureDiff(kt, specs, chains)
	}
	if !kt.exists || b.rebuild != "" {
		if b.rebuild != "" {
			b.queue(1, func(c Conn) error { c.DelTable(b.table); return nil })
		}
		b.create(specs, chains, wantElems)
		return b
	}
	for _, spec := range chains {
		if !slices.Equal(kt.chains[spec.name].keys, ruleKeys(spec.rules)) {
			b.writeRules(spec, true)
		}
	}
	for _, spec := range specs {
		have, wnt := kt.elems[spec.name], wantElems[spec.name]
		var dels []string
		for k, v := range have {
			if w, ok := wnt[k]; !ok || w != v {
				dels = append(dels, k)
			}
		}
		adds := map[string]string{}
		for k, v := range wnt {
			if h, ok := have[k]; !ok || h != v {
				adds[k] = v
			}
		}
		slices.Sort(dels)
		b.delElements(spec, dels)
		b.addElements(spec, adds)
	}
	return b
}

// structureDiff says how kt's sets and chains differ from the skeleton, or
// "" when they match.
func structureDiff(kt *kernelTable, specs []setSpec, chains []chainSpec) string {
	for _, spec := range specs {
		s := kt.sets[spec.name]
		if s == nil {
			return "set " + spec.name + " is missing"
		}
		if !setMatches(s, spec) {
			return "set " + spec.name + " has another type or flags"
		}
	}
	for _, name := range slices.Sorted(maps.Keys(kt.sets)) {
		if !slices.ContainsFunc(specs, func(sp setSpec) bool { return sp.name == name }) {
			return "unknown set " + name
		}
	}
	for _, spec := range chains {
		c := kt.chains[spec.name]
		if c == nil {
			return "chain " + spec.name + " is missing"
		}
		if !hookMatches(c.chain, spec.hook) {
			return "chain " + spec.name + " has another hook, type or priority"
		}
	}
	for _, name := range slices.Sorted(maps.Keys(kt.chains)) {
		if !slices.ContainsFunc(chains, func(c chainSpec) bool { return c.name == name }) {
			return "unknown chain " + name
		}
	}
	return ""
}

func ruleKeys(rules []ruleSpec) []string {
	out := make([]string, len(rules))
	for i, r := range rules {
		out[i] = r.key
	}
	return out
}

// create queues the whole table.
func (b *batch) create(specs []setSpec, chains []chainSpec, elems map[string]map[string]string) {
	b.stats.TablesCreated++
	b.queue(1, func(c Conn) error { c.AddTable(b.table); return nil })
	for _, spec := range specs {
		s := spec.set(b.table)
		b.queue(1, func(c Conn) error { return c.AddSet(s, nil) })
	}
	for _, spec := range chains {
		ch := spec.chain(b.table)
		b.queue(1, func(c Conn) error { c.AddChain(ch); return nil })
	}
	for _, spec := range chains {
		b.writeRules(spec, false)
	}
	for _, spec := range specs {
		b.addElements(spec, elems[spec.name])
	}
}

// writeRules fills a chain, flushing it first when it may hold rules.
func (b *batch) writeRules(spec chainSpec, flush bool) {
	ch := &nftables.Chain{Table: b.table, Name: spec.name}
	if flush {
		b.stats.ChainsRewritten++
		b.queue(1, func(c Conn) error { c.FlushChain(ch); return nil })
	}
	for _, r := range spec.rules {
		nr := &nftables.Rule{Table: b.table, Chain: ch, Exprs: r.exprs}
		b.queue(1, func(c Conn) error { c.AddRule(nr); return nil })
	}
}

func (b *batch) delElements(spec setSpec, keys []string) {
	if len(keys) == 0 {
		return
	}
	b.stats.ElementsDeleted += len(keys)
	elems := make([]nftables.SetElement, len(keys))
	for i, k := range keys {
		elems[i] = nftables.SetElement{Key: []byte(k)}
	}
	s := spec.set(b.table)
	for _, chunk := range chunkElements(elems) {
		b.queue(1, func(c Conn) error { return c.SetDeleteElements(s, chunk) })
	}
}

func (b *batch) addElements(spec setSpec, elems map[string]string) {
	if len(elems) == 0 {
		return
	}
	b.stats.ElementsAdded += len(elems)
	out := make([]nftables.SetElement, 0, len(elems))
	for _, k := range sortedKeys(elems) {
		e := nftables.SetElement{Key: []byte(k)}
		if spec.isMap {
			e.Val = []byte(elems[k])
		}
		out = append(out, e)
	}
	s := spec.set(b.table)
	for _, chunk := range chunkElements(out) {
		b.queue(1, func(c Conn) error { return c.SetAddElements(s, chunk) })
	}
}

// maxElementBytes bounds the element list of one message: the list is one
// netlink attribute, whose 16-bit length the library silently overflows.
const maxElementBytes = 32 << 10

// chunkElements splits elements into lists that fit one message.
func chunkElements(elems []nftables.SetElement) [][]nftables.SetElement {
	var out [][]nftables.SetElement
	start, size := 0, 0
	for i, e := range elems {
		n := 48 + len(e.Key) + len(e.Val) // attribute headers and padding: a generous bound
		if size+n > maxElementBytes && i > start {
			out = append(out, elems[start:i])
			start, size = i, 0
		}
		size += n
	}
	if start < len(elems) {
		out = append(out, elems[start:])
	}
	return out
}

// runBatches sends the batches' writes as one transaction; nothing is sent
// when they are all empty.
func runBatches(c Conn, bs []*batch) (syncStats, error) {
	var total syncStats
	for _, b := range bs {
		if b == nil || len(b.ops) == 0 {
			continue
		}
		total.add(b.stats)
		for _, op := range b.ops {
			if err := op(c); err != nil {
				// Never send half a transaction.
				if d, ok := c.(interface{ Discard() }); ok {
					d.Discard()
				}
				return syncStats{}, fmt.Errorf("%s table: %w", b.f.name, err)
			}
		}
	}
	if total.Messages == 0 {
		return total, nil
	}
	if err := c.Flush(); err != nil {
		return syncStats{}, fmt.Errorf("send transaction of %d messages: %w", total.Messages, err)
	}
	return total, nil
}
