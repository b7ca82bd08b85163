package nftables

import (
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
)

// A batch collects the writes of one sync and sends them as one netlink
// transaction. The kernel applies a transaction atomically, but resolves
// references message by message, so writes are queued in phases:
//
//  1. create the table, sets and chains (nothing refers to them yet);
//  2. flush and refill changed chains (their rules may refer to any set
//     and chain created in 1);
//  3. delete map elements (releasing references to chains);
//  4. add map elements (referring to chains created in 1);
//  5. delete stale chains, then stale sets: by now no element and no
//     rule refers to them (a chain still referenced fails with EBUSY).
type batch struct {
	f      *family
	table  *nftables.Table
	phases [numPhases][]func(Conn) error
	setID  uint32
	stats  syncStats
}

const (
	phaseCreate = iota
	phaseRules
	phaseElemDel
	phaseElemAdd
	phaseDelete
	numPhases
)

// syncStats counts what a sync wrote, for logs and tests.
type syncStats struct {
	Messages        int // netlink messages in the transaction
	ChainsAdded     int
	ChainsRewritten int
	ChainsDeleted   int
	ElementsAdded   int
	ElementsDeleted int
}

func newBatch(f *family) *batch { return &batch{f: f, table: f.tableRef()} }

func (b *batch) empty() bool { return b.stats.Messages == 0 }

func (b *batch) queue(phase, msgs int, op func(Conn) error) {
	b.phases[phase] = append(b.phases[phase], op)
	b.stats.Messages += msgs
}

// nextSetID numbers the sets created in this transaction; the kernel uses
// the ID to find a set created earlier in the same transaction.
func (b *batch) nextSetID() uint32 {
	b.setID++
	return b.setID
}

func (b *batch) addTable() {
	b.queue(phaseCreate, 1, func(c Conn) error { c.AddTable(b.table); return nil })
}

func (b *batch) addSet(spec setSpec) {
	s := spec.set(b.table)
	s.ID = b.nextSetID()
	b.queue(phaseCreate, 1, func(c Conn) error { return c.AddSet(s, nil) })
}

func (b *batch) delSet(name string) {
	b.queue(phaseDelete, 1, func(c Conn) error { c.DelSet(&nftables.Set{Table: b.table, Name: name}); return nil })
}

func (b *batch) addChain(spec chainSpec) {
	b.stats.ChainsAdded++
	ch := spec.chain(b.table)
	b.queue(phaseCreate, 1, func(c Conn) error { c.AddChain(ch); return nil })
}

// replaceBaseChain deletes a base chain whose hook differs from the wanted
// one (nothing can refer to a base chain) and creates it again.
func (b *batch) replaceBaseChain(spec chainSpec) {
	b.queue(phaseCreate, 1, func(c Conn) error { c.DelChain(&nftables.Chain{Table: b.table, Name: spec.name}); return nil })
	b.addChain(spec)
}

// delChain deletes a chain with its rules.
func (b *batch) delChain(name string) {
	b.stats.ChainsDeleted++
	b.queue(phaseDelete, 1, func(c Conn) error { c.DelChain(&nftables.Chain{Table: b.table, Name: name}); return nil })
}

// writeRules fills a chain; flush first when it may hold rules. A rule's
// anonymous map is created right before the rule. The previous map of a
// flushed chain is released by the flush, in the same transaction, so the
// new one can take the same name.
func (b *batch) writeRules(chain string, rules []rule, flush bool) {
	ch := &nftables.Chain{Table: b.table, Name: chain}
	if flush {
		b.stats.ChainsRewritten++
		b.queue(phaseRules, 1, func(c Conn) error { c.FlushChain(ch); return nil })
	}
	for _, r := range rules {
		exprs := append([]expr.Any(nil), r.exprs...)
		for _, am := range r.anons {
			// Size: the library declares a constant set's size as the
			// number of elements given to AddSet (the first chunk); the
			// kernel then refuses more (ENFILE). A second size attribute,
			// which the kernel reads last, declares them all.
			anon := &nftables.Set{Table: b.table, Name: am.name, ID: b.nextSetID(), Anonymous: true, Constant: true,
				IsMap: am.isMap, KeyType: am.keyType, DataType: am.dataType, Size: uint32(len(am.elems))}
			chunks := chunkElements(am.elems)
			// The rule's own copy of the lookup, with this transaction's
			// set ID; the desired state stays untouched.
			lookup := *exprs[am.idx].(*expr.Lookup)
			lookup.SetID = anon.ID
			exprs[am.idx] = &lookup
			b.queue(phaseRules, 1+len(chunks), func(c Conn) error {
				if err := c.AddSet(anon, chunks[0]); err != nil {
					return fmt.Errorf("add anonymous set of %s: %w", chain, err)
				}
				// Elements beyond one message's worth go in more messages,
				// before the rule binds (and freezes) the map. The library
				// refuses to add to a set marked anonymous; the message
				// itself only names the set.
				more := *anon
				more.Anonymous = false
				for _, ch := range chunks[1:] {
					if err := c.SetAddElements(&more, ch); err != nil {
						return fmt.Errorf("add anonymous set elements of %s: %w", chain, err)
					}
				}
				return nil
			})
		}
		nr := &nftables.Rule{Table: b.table, Chain: ch, Exprs: exprs}
		if r.comment != "" {
			nr.UserData = userdata.AppendString(nil, userdata.TypeComment, r.comment)
		}
		b.queue(phaseRules, 1, func(c Conn) error { c.AddRule(nr); return nil })
	}
}

// delElements deletes elements by key.
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
	for _, ch := range chunkElements(elems) {
		b.queue(phaseElemDel, 1, func(c Conn) error { return c.SetDeleteElements(s, ch) })
	}
}

// addElements adds elements; in verdict maps each goes to its chain.
func (b *batch) addElements(spec setSpec, elems []element) {
	if len(elems) == 0 {
		return
	}
	b.stats.ElementsAdded += len(elems)
	out := make([]nftables.SetElement, len(elems))
	for i, e := range elems {
		out[i] = nftables.SetElement{Key: []byte(e.key)}
		if e.chain != "" {
			out[i].VerdictData = goTo(e.chain)
		}
	}
	s := spec.set(b.table)
	for _, ch := range chunkElements(out) {
		b.queue(phaseElemAdd, 1, func(c Conn) error { return c.SetAddElements(s, ch) })
	}
}

// runBatches sends the batches (one per family; nil ones are skipped) as
// one transaction, each batch's writes in phase order, and returns their
// summed counts. Nothing is sent when all are empty.
func runBatches(c Conn, bs []*batch) (syncStats, error) {
	var total syncStats
	for _, b := range bs {
		if b == nil || b.empty() {
			continue
		}
		total.add(b.stats)
		for _, ops := range b.phases {
			for _, op := range ops {
				if err := op(c); err != nil {
					// Never send half a batch: drop what was queued.
					if d, ok := c.(interface{ Discard() }); ok {
						d.Discard()
					}
					return syncStats{}, fmt.Errorf("%s table: %w", b.f.name, err)
				}
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

func (s *syncStats) add(o syncStats) {
	s.Messages += o.Messages
	s.ChainsAdded += o.ChainsAdded
	s.ChainsRewritten += o.ChainsRewritten
	s.ChainsDeleted += o.ChainsDeleted
	s.ElementsAdded += o.ElementsAdded
	s.ElementsDeleted += o.ElementsDeleted
}

// maxElementBytes bounds the element list of one message: the list is one
// netlink attribute, whose length field has 16 bits (the library silently
// truncates longer ones, which corrupts the message).
const maxElementBytes = 48 << 10

// chunkElements splits elements into lists that fit one message; it always
// returns at least one (possibly empty) list.
func chunkElements(elems []nftables.SetElement) [][]nftables.SetElement {
	var out [][]nftables.SetElement
	start, size := 0, 0
	for i, e := range elems {
		// Attribute headers and padding: generous upper bound.
		n := 48 + len(e.Key) + len(e.Val)
		if e.VerdictData != nil {
			n += 32 + len(e.VerdictData.Chain)
		}
		if size+n > maxElementBytes && i > start {
			out = append(out, elems[start:i])
			start, size = i, 0
		}
		size += n
	}
	return append(out, elems[start:])
}
