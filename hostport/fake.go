package hostport

import (
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// FakeConn is an in-memory Conn with the kernel's semantics as far as
// hostport relies on them:
//
//   - writes are queued and applied by Flush as one transaction: all or
//     nothing, in order, each seeing the effects of the ones before;
//   - errors: ENOENT for a missing table, chain, set or element (also
//     for a rule's lookup of a missing set or jump to a missing chain);
//     EEXIST for adding an element whose key exists with another value
//     (elements are never overwritten), and for a set or base chain
//     re-added with another type; EINVAL for keys or values of the wrong
//     length;
//   - reads report registers the way the kernel does (a 32-bit register at
//     the start of a 128-bit one as that register), and NAT's maximum
//     registers equal to the minimum ones.
//
// Tests may also make the next Flush fail (FailFlush) and count what was
// sent (Stats).
type FakeConn struct {
	mu     sync.Mutex
	tables map[fakeTableKey]*fakeTable
	queue  []func(map[fakeTableKey]*fakeTable) error
	// failNext fails the next Flush that has something to send.
	failNext error
	flushes  int
	messages int
}

type fakeTableKey struct {
	family nftables.TableFamily
	name   string
}

type fakeTable struct {
	chains     map[string]*fakeChain
	chainOrder []string
	sets       map[string]*fakeSet
}

type fakeChain struct {
	chain nftables.Chain
	rules [][]expr.Any
}

type fakeSet struct {
	set   nftables.Set
	elems map[string]string
}

var _ Conn = (*FakeConn)(nil)

// NewFakeConn returns an empty FakeConn.
func NewFakeConn() *FakeConn { return &FakeConn{tables: map[fakeTableKey]*fakeTable{}} }

// FailFlush makes the next Flush that has something to send fail with err,
// applying nothing.
func (c *FakeConn) FailFlush(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failNext = err
}

// Stats returns how many Flush calls sent something and how many messages
// they sent in all, and resets both.
func (c *FakeConn) Stats() (flushes, messages int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	flushes, messages = c.flushes, c.messages
	c.flushes, c.messages = 0, 0
	return flushes, messages
}

func errno(e unix.Errno, format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), e)
}

func (c *FakeConn) enqueue(op func(map[fakeTableKey]*fakeTable) error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.queue = append(c.queue, op)
}

// Flush implements Conn.
func (c *FakeConn) Flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	queue := c.queue
	c.queue = nil
	if len(queue) == 0 {
		return nil
	}
	if c.failNext != nil {
		err := c.failNext
		c.failNext = nil
		return err
	}
	next := cloneTables(c.tables)
	for _, op := range queue {
		if err := op(next); err != nil {
			return err
		}
	}
	c.tables = next
	c.flushes++
	c.messages += len(queue)
	return nil
}

// Discard drops the queued writes.
func (c *FakeConn) Discard() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.queue = nil
}

func cloneTables(in map[fakeTableKey]*fakeTable) map[fakeTableKey]*fakeTable {
	out := make(map[fakeTableKey]*fakeTable, len(in))
	for k, t := range in {
		nt := &fakeTable{chains: map[string]*fakeChain{}, chainOrder: slices.Clone(t.chainOrder), sets: map[string]*fakeSet{}}
		for n, ch := range t.chains {
			nt.chains[n] = &fakeChain{chain: ch.chain, rules: slices.Clone(ch.rules)}
		}
		for n, s := range t.sets {
			nt.sets[n] = &fakeSet{set: s.set, elems: maps.Clone(s.elems)}
		}
		out[k] = nt
	}
	return out
}

func keyOf(t *nftables.Table) fakeTableKey { return fakeTableKey{t.Family, t.Name} }

func lookupTable(ts map[fakeTableKey]*fakeTable, t *nftables.Table) (*fakeTable, error) {
	ft := ts[keyOf(t)]
	if ft == nil {
		return nil, errno(unix.ENOENT, "table %s", t.Name)
	}
	return ft, nil
}

// AddTable implements Conn; adding an existing table is a no-op.
func (c *FakeConn) AddTable(t *nftables.Table) *nftables.Table {
	k := keyOf(t)
	c.enqueue(func(ts map[fakeTableKey]*fakeTable) error {
		if ts[k] == nil {
			ts[k] = &fakeTable{chains: map[string]*fakeChain{}, sets: map[string]*fakeSet{}}
		}
		return nil
	})
	return t
}

// DelTable implements Conn.
func (c *FakeConn) DelTable(t *nftables.Table) {
	k := keyOf(t)
	c.enqueue(func(ts map[fakeTableKey]*fakeTable) error {
		if ts[k] == nil {
			return errno(unix.ENOENT, "delete table %s", k.name)
		}
		delete(ts, k)
		return nil
	})
}

// AddChain implements Conn; re-adding a chain with the same hook is a
// no-op.
func (c *FakeConn) AddChain(ch *nftables.Chain) *nftables.Chain {
	cp := *ch
	c.enqueue(func(ts map[fakeTableKey]*fakeTable) error {
		ft, err := lookupTable(ts, cp.Table)
		if err != nil {
			return err
		}
		if old := ft.chains[cp.Name]; old != nil {
			if fakeHook(old.chain) != fakeHook(cp) {
				return errno(unix.EEXIST, "chain %s exists with another hook", cp.Name)
			}
			return nil
		}
		ft.chains[cp.Name] = &fakeChain{chain: cp}
		ft.chainOrder = append(ft.chainOrder, cp.Name)
		return nil
	})
	return ch
}

func fakeHook(c nftables.Chain) string {
	if c.Hooknum == nil {
		return ""
	}
	prio := nftables.ChainPriority(0)
	if c.Priority != nil {
		prio = *c.Priority
	}
	return fmt.Sprintf("%s/%d/%d", c.Type, *c.Hooknum, prio)
}

// FlushChain implements Conn.
func (c *FakeConn) FlushChain(ch *nftables.Chain) {
	t, name := ch.Table, ch.Name
	c.enqueue(func(ts map[fakeTableKey]*fakeTable) error {
		ft, err := lookupTable(ts, t)
		if err != nil {
			return err
		}
		fc := ft.chains[name]
		if fc == nil {
			return errno(unix.ENOENT, "flush chain %s", name)
		}
		fc.rules = nil
		return nil
	})
}

// AddRule implements Conn: the chain, the sets the rule looks up and the
// chains it jumps to must exist.
func (c *FakeConn) AddRule(r *nftables.Rule) *nftables.Rule {
	t, chain := r.Table, r.Chain.Name
	var exprs []expr.Any
	for _, e := range r.Exprs {
		exprs = append(exprs, kernelView(e))
	}
	c.enqueue(func(ts map[fakeTableKey]*fakeTable) error {
		ft, err := lookupTable(ts, t)
		if err != nil {
			return err
		}
		fc := ft.chains[chain]
		if fc == nil {
			return errno(unix.ENOENT, "add rule to chain %s", chain)
		}
		for _, e := range exprs {
			switch e := e.(type) {
			case *expr.Lookup:
				if ft.sets[e.SetName] == nil {
					return errno(unix.ENOENT, "rule in %s looks up set %s", chain, e.SetName)
				}
			case *expr.Verdict:
				if (e.Kind == expr.VerdictJump || e.Kind == expr.VerdictGoto) && ft.chains[e.Chain] == nil {
					return errno(unix.ENOENT, "rule in %s jumps to chain %s", chain, e.Chain)
				}
			}
		}
		fc.rules = append(fc.rules, exprs)
		return nil
	})
	return r
}

// kernelView returns e as the kernel reports it back: registers renumbered
// (see canonReg, the other way round) and NAT maximum registers filled in.
func kernelView(e expr.Any) expr.Any {
	dump := func(r uint32) uint32 {
		if r >= unix.NFT_REG32_00 && (r-unix.NFT_REG32_00)%4 == 0 {
			return unix.NFT_REG_1 + (r-unix.NFT_REG32_00)/4
		}
		return r
	}
	switch e := e.(type) {
	case *expr.Meta:
		c := *e
		c.Register = dump(c.Register)
		return &c
	case *expr.Payload:
		c := *e
		c.DestRegister, c.SourceRegister = dump(c.DestRegister), dump(c.SourceRegister)
		return &c
	case *expr.Cmp:
		c := *e
		c.Register = dump(c.Register)
		return &c
	case *expr.Bitwise:
		c := *e
		c.SourceRegister, c.DestRegister = dump(c.SourceRegister), dump(c.DestRegister)
		return &c
	case *expr.Fib:
		c := *e
		c.Register = dump(c.Register)
		return &c
	case *expr.Ct:
		c := *e
		c.Register = dump(c.Register)
		return &c
	case *expr.Lookup:
		c := *e
		c.SourceRegister, c.SetID = dump(c.SourceRegister), 0
		if c.IsDestRegSet {
			c.DestRegister = dump(c.DestRegister)
		}
		return &c
	case *expr.NAT:
		c := *e
		if c.RegAddrMax == 0 {
			c.RegAddrMax = c.RegAddrMin
		}
		if c.RegProtoMax == 0 {
			c.RegProtoMax = c.RegProtoMin
		}
		c.RegAddrMin, c.RegAddrMax = dump(c.RegAddrMin), dump(c.RegAddrMax)
		c.RegProtoMin, c.RegProtoMax = dump(c.RegProtoMin), dump(c.RegProtoMax)
		return &c
	}
	return e
}

// AddSet implements Conn; re-adding a set of the same type is a no-op
// (apart from adding vals).
func (c *FakeConn) AddSet(s *nftables.Set, vals []nftables.SetElement) error {
	cp := *s
	c.enqueue(func(ts map[fakeTableKey]*fakeTable) error {
		ft, err := lookupTable(ts, cp.Table)
		if err != nil {
			return err
		}
		if old := ft.sets[cp.Name]; old != nil {
			if old.set.KeyType.Name != cp.KeyType.Name || old.set.IsMap != cp.IsMap || old.set.DataType.Name != cp.DataType.Name {
				return errno(unix.EEXIST, "set %s exists with another type", cp.Name)
			}
		} else {
			ft.sets[cp.Name] = &fakeSet{set: cp, elems: map[string]string{}}
		}
		return nil
	})
	if len(vals) > 0 {
		return c.SetAddElements(s, vals)
	}
	return nil
}

// SetAddElements implements Conn.
func (c *FakeConn) SetAddElements(s *nftables.Set, vals []nftables.SetElement) error {
	t, name := s.Table, s.Name
	elems := slices.Clone(vals)
	c.enqueue(func(ts map[fakeTableKey]*fakeTable) error {
		fs, err := lookupSet(ts, t, name)
		if err != nil {
			return err
		}
		for _, e := range elems {
			if len(e.Key) != int(fs.set.KeyType.Bytes) {
				return errno(unix.EINVAL, "set %s: key of %d bytes, want %d", name, len(e.Key), fs.set.KeyType.Bytes)
			}
			if fs.set.IsMap && len(e.Val) != int(fs.set.DataType.Bytes) {
				return errno(unix.EINVAL, "map %s: value of %d bytes, want %d", name, len(e.Val), fs.set.DataType.Bytes)
			}
			k, v := string(e.Key), string(e.Val)
			if old, ok := fs.elems[k]; ok && old != v {
				return errno(unix.EEXIST, "set %s: element exists with another value", name)
			}
			fs.elems[k] = v
		}
		return nil
	})
	return nil
}

// SetDeleteElements implements Conn.
func (c *FakeConn) SetDeleteElements(s *nftables.Set, vals []nftables.SetElement) error {
	t, name := s.Table, s.Name
	elems := slices.Clone(vals)
	c.enqueue(func(ts map[fakeTableKey]*fakeTable) error {
		fs, err := lookupSet(ts, t, name)
		if err != nil {
			return err
		}
		for _, e := range elems {
			if _, ok := fs.elems[string(e.Key)]; !ok {
				return errno(unix.ENOENT, "set %s: delete missing element", name)
			}
			delete(fs.elems, string(e.Key))
		}
		return nil
	})
	return nil
}

func lookupSet(ts map[fakeTableKey]*fakeTable, t *nftables.Table, name string) (*fakeSet, error) {
	ft, err := lookupTable(ts, t)
	if err != nil {
		return nil, err
	}
	fs := ft.sets[name]
	if fs == nil {
		return nil, errno(unix.ENOENT, "set %s", name)
	}
	return fs, nil
}

// ListTablesOfFamily implements Conn.
func (c *FakeConn) ListTablesOfFamily(f nftables.TableFamily) ([]*nftables.Table, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*nftables.Table
	for _, k := range slices.SortedFunc(maps.Keys(c.tables), compareTableKeys) {
		if k.family == f {
			out = append(out, &nftables.Table{Name: k.name, Family: k.family})
		}
	}
	return out, nil
}

func compareTableKeys(a, b fakeTableKey) int {
	if a.family != b.family {
		return int(a.family) - int(b.family)
	}
	if a.name < b.name {
		return -1
	}
	if a.name > b.name {
		return 1
	}
	return 0
}

// ListChainsOfTableFamily implements Conn.
func (c *FakeConn) ListChainsOfTableFamily(f nftables.TableFamily) ([]*nftables.Chain, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*nftables.Chain
	for _, k := range slices.SortedFunc(maps.Keys(c.tables), compareTableKeys) {
		if k.family != f {
			continue
		}
		ft := c.tables[k]
		for _, name := range ft.chainOrder {
			ch := ft.chains[name].chain
			ch.Table = &nftables.Table{Name: k.name, Family: k.family}
			out = append(out, &ch)
		}
	}
	return out, nil
}

// GetRules implements Conn.
func (c *FakeConn) GetRules(t *nftables.Table, ch *nftables.Chain) ([]*nftables.Rule, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ft, err := lookupTable(c.tables, t)
	if err != nil {
		return nil, err
	}
	fc := ft.chains[ch.Name]
	if fc == nil {
		return nil, errno(unix.ENOENT, "chain %s", ch.Name)
	}
	var out []*nftables.Rule
	for i, exprs := range fc.rules {
		out = append(out, &nftables.Rule{Table: t, Chain: ch, Handle: uint64(i + 1), Exprs: slices.Clone(exprs)})
	}
	return out, nil
}

// GetSets implements Conn.
func (c *FakeConn) GetSets(t *nftables.Table) ([]*nftables.Set, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ft, err := lookupTable(c.tables, t)
	if err != nil {
		return nil, err
	}
	var out []*nftables.Set
	for _, name := range slices.Sorted(maps.Keys(ft.sets)) {
		s := ft.sets[name].set
		out = append(out, &s)
	}
	return out, nil
}

// GetSetElements implements Conn.
func (c *FakeConn) GetSetElements(s *nftables.Set) ([]nftables.SetElement, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fs, err := lookupSet(c.tables, s.Table, s.Name)
	if err != nil {
		return nil, err
	}
	var out []nftables.SetElement
	for _, k := range slices.Sorted(maps.Keys(fs.elems)) {
		e := nftables.SetElement{Key: []byte(k)}
		if v := fs.elems[k]; v != "" {
			e.Val = []byte(v)
		}
		out = append(out, e)
	}
	return out, nil
}
