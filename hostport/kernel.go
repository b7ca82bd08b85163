package hostport

import (
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// kernelTable is what the kernel has in hostport's table of one family.
type kernelTable struct {
	exists bool
	chains map[string]*kernelChain
	// sets holds the named sets (anonymous ones are bound to rules and
	// go with them).
	sets map[string]*nftables.Set
	// elems holds the elements of the sets hostport defines: set name ->
	// key bytes -> value bytes ("" in sets).
	elems map[string]map[string]string
}

type kernelChain struct {
	chain *nftables.Chain
	rules []*nftables.Rule
	keys  []string // ruleKey of each rule
}

// readTable reads the family's table back: chains with their rules, sets,
// and the elements of hostport's sets. A missing table is not an error.
func readTable(conn Conn, f *family) (*kernelTable, error) {
	kt := &kernelTable{chains: map[string]*kernelChain{}, sets: map[string]*nftables.Set{}, elems: map[string]map[string]string{}}
	exists, err := tableExists(conn, f)
	if err != nil || !exists {
		return kt, err
	}
	kt.exists = true
	t := f.tableRef()
	chains, err := conn.ListChainsOfTableFamily(f.table)
	if err != nil {
		return nil, fmt.Errorf("list %s chains: %w", f.name, err)
	}
	for _, c := range chains {
		if c.Table == nil || c.Table.Name != TableName {
			continue
		}
		rules, err := conn.GetRules(t, c)
		if err != nil {
			return nil, fmt.Errorf("list rules of %s chain %s: %w", f.name, c.Name, err)
		}
		kc := &kernelChain{chain: c, rules: rules}
		for _, r := range rules {
			kc.keys = append(kc.keys, ruleKey(f, r.Exprs))
		}
		kt.chains[c.Name] = kc
	}
	sets, err := conn.GetSets(t)
	if err != nil {
		return nil, fmt.Errorf("list %s sets: %w", f.name, err)
	}
	specs := setSpecs(f)
	for _, s := range sets {
		if s.Anonymous || strings.HasPrefix(s.Name, "__") {
			continue
		}
		kt.sets[s.Name] = s
		if !slices.ContainsFunc(specs, func(sp setSpec) bool { return sp.name == s.Name }) {
			continue
		}
		elems, err := conn.GetSetElements(s)
		if err != nil {
			return nil, fmt.Errorf("list elements of %s set %s: %w", f.name, s.Name, err)
		}
		m := make(map[string]string, len(elems))
		for _, e := range elems {
			m[string(e.Key)] = string(e.Val)
		}
		kt.elems[s.Name] = m
	}
	return kt, nil
}

// tableExists reports whether the family has hostport's table.
func tableExists(conn Conn, f *family) (bool, error) {
	tables, err := conn.ListTablesOfFamily(f.table)
	if err != nil {
		return false, fmt.Errorf("list %s tables: %w", f.name, err)
	}
	return slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == TableName }), nil
}

// ruleKey is a rule's expressions in a form that compares equal for the
// rule hostport wrote and the rule the kernel reports back: each expression
// normalized (see normalize) and marshalled as the library would send it.
func ruleKey(f *family, exprs []expr.Any) string {
	var b strings.Builder
	for _, e := range exprs {
		data, err := expr.Marshal(byte(f.table), normalize(e))
		if err != nil {
			// Never equal to anything hostport wants: the rule is
			// rewritten.
			fmt.Fprintf(&b, "%T:error:%v;", e, err)
			continue
		}
		fmt.Fprintf(&b, "%T:%s;", e, hex.EncodeToString(data))
	}
	return b.String()
}

// canonReg names a register the way hostport writes it: the kernel reports
// a 32-bit register at the start of a 128-bit one (NFT_REG32_00, 04, 08,
// 12) as that 128-bit register (NFT_REG_1..4).
func canonReg(r uint32) uint32 {
	if r >= unix.NFT_REG_1 && r <= unix.NFT_REG_4 {
		return unix.NFT_REG32_00 + (r-unix.NFT_REG_1)*4
	}
	return r
}

// normalize returns a copy of e with the differences between what is
// written and what the kernel reports removed: register numbering, the
// transaction-local set ID of lookups, and NAT's maximum registers (the
// kernel reports min as max when no range was given).
func normalize(e expr.Any) expr.Any {
	switch e := e.(type) {
	case *expr.Meta:
		c := *e
		c.Register = canonReg(c.Register)
		return &c
	case *expr.Payload:
		c := *e
		c.DestRegister, c.SourceRegister = canonReg(c.DestRegister), canonReg(c.SourceRegister)
		return &c
	case *expr.Cmp:
		c := *e
		c.Register = canonReg(c.Register)
		return &c
	case *expr.Bitwise:
		c := *e
		c.SourceRegister, c.DestRegister = canonReg(c.SourceRegister), canonReg(c.DestRegister)
		return &c
	case *expr.Fib:
		c := *e
		c.Register = canonReg(c.Register)
		return &c
	case *expr.Ct:
		c := *e
		c.Register = canonReg(c.Register)
		return &c
	case *expr.Lookup:
		c := *e
		c.SourceRegister, c.SetID = canonReg(c.SourceRegister), 0
		if c.IsDestRegSet {
			c.DestRegister = canonReg(c.DestRegister)
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
		c.RegAddrMin, c.RegAddrMax = canonReg(c.RegAddrMin), canonReg(c.RegAddrMax)
		c.RegProtoMin, c.RegProtoMax = canonReg(c.RegProtoMin), canonReg(c.RegProtoMax)
		return &c
	}
	return e
}

// setMatches compares a set read back with its spec.
func setMatches(s *nftables.Set, spec setSpec) bool {
	if s.IsMap != spec.isMap || s.Interval || s.Anonymous || s.Constant || s.HasTimeout {
		return false
	}
	if s.KeyType.Name != spec.keyType.Name || s.KeyType.Bytes != spec.keyType.Bytes {
		return false
	}
	return !spec.isMap || (s.DataType.Name == spec.dataType.Name && s.DataType.Bytes == spec.dataType.Bytes)
}

// hookMatches compares a chain read back with its spec's hook.
func hookMatches(c *nftables.Chain, h *baseHook) bool {
	if h == nil {
		return c.Hooknum == nil
	}
	return c.Hooknum != nil && *c.Hooknum == h.hook && c.Priority != nil && *c.Priority == h.priority &&
		c.Type == nftables.ChainTypeNAT && (c.Policy == nil || *c.Policy == nftables.ChainPolicyAccept)
}
