package nftdp

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/switchyard/switchyard/test/netnstest"
)

// The test's own reading of a namespace's nftables ruleset, straight from
// the kernel with github.com/google/nftables (no `nft` binary needed, and
// none of the code under test): every table of every family, its sets with
// their elements (sorted: the kernel lists them in hash order), its chains
// with their rules in order, without handles or counters, so two readings
// of an unchanged ruleset are equal and a rewritten-but-equal object still
// compares equal after drift repair.

// ourTable is the table the agent owns (`nft list table ip switchyard`).
const ourTable = "switchyard"

// nftConn opens a connection to nftables in ns.
func nftConn(t *testing.T, ns *netnstest.NS) *nftables.Conn {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns.NsHandle())))
	if err != nil {
		t.Fatalf("nftables connection in %s: %v", ns.Name(), err)
	}
	return c
}

var familyNames = map[nftables.TableFamily]string{
	nftables.TableFamilyINet: "inet", nftables.TableFamilyIPv4: "ip", nftables.TableFamilyIPv6: "ip6",
	nftables.TableFamilyARP: "arp", nftables.TableFamilyNetdev: "netdev", nftables.TableFamilyBridge: "bridge",
}

func familyName(f nftables.TableFamily) string {
	if n, ok := familyNames[f]; ok {
		return n
	}
	return fmt.Sprintf("family-%d", f)
}

// tables lists the tables whose name passes keep, sorted by family and name.
func tables(t *testing.T, c *nftables.Conn, keep func(*nftables.Table) bool) []*nftables.Table {
	t.Helper()
	all, err := c.ListTablesOfFamily(nftables.TableFamilyUnspecified)
	if err != nil {
		t.Fatalf("list nftables tables: %v", err)
	}
	var out []*nftables.Table
	for _, tb := range all {
		if keep == nil || keep(tb) {
			out = append(out, tb)
		}
	}
	slices.SortFunc(out, func(a, b *nftables.Table) int {
		if a.Family != b.Family {
			return int(a.Family) - int(b.Family)
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out
}

// renderTables renders the tables keep selects (nil: all).
func renderTables(t *testing.T, ns *netnstest.NS, keep func(*nftables.Table) bool) string {
	t.Helper()
	c := nftConn(t, ns)
	var b strings.Builder
	for _, tb := range tables(t, c, keep) {
		renderTable(t, c, &b, tb)
	}
	return b.String()
}

func renderTable(t *testing.T, c *nftables.Conn, b *strings.Builder, tb *nftables.Table) {
	t.Helper()
	fmt.Fprintf(b, "table %s %s flags=%#x\n", familyName(tb.Family), tb.Name, tb.Flags)
	sets, err := c.GetSets(tb)
	if err != nil {
		t.Fatalf("sets of %s: %v", tb.Name, err)
	}
	slices.SortFunc(sets, func(x, y *nftables.Set) int { return strings.Compare(x.Name, y.Name) })
	for _, s := range sets {
		fmt.Fprintf(b, "  set %s key=%q/%d data=%q/%d%s comment=%q\n", s.Name, s.KeyType.Name, s.KeyType.Bytes,
			s.DataType.Name, s.DataType.Bytes, setFlags(s), s.Comment)
		elems, err := c.GetSetElements(s)
		if err != nil {
			t.Fatalf("elements of %s: %v", s.Name, err)
		}
		lines := make([]string, len(elems))
		for i, e := range elems {
			lines[i] = "    " + renderElement(e)
		}
		slices.Sort(lines)
		for _, l := range lines {
			b.WriteString(l + "\n")
		}
	}
	for _, ch := range chains(t, c, tb) {
		fmt.Fprintf(b, "  chain %s%s\n", ch.Name, hookText(ch))
		rules, err := c.GetRules(tb, ch)
		if err != nil {
			t.Fatalf("rules of %s: %v", ch.Name, err)
		}
		for _, r := range rules {
			b.WriteString("    " + renderRule(r) + "\n")
		}
	}
}

// chains lists a table's chains sorted by name.
func chains(t *testing.T, c *nftables.Conn, tb *nftables.Table) []*nftables.Chain {
	t.Helper()
	all, err := c.ListChainsOfTableFamily(tb.Family)
	if err != nil {
		t.Fatalf("list chains: %v", err)
	}
	var out []*nftables.Chain
	for _, ch := range all {
		if ch.Table != nil && ch.Table.Name == tb.Name {
			out = append(out, ch)
		}
	}
	slices.SortFunc(out, func(x, y *nftables.Chain) int { return strings.Compare(x.Name, y.Name) })
	return out
}

func setFlags(s *nftables.Set) string {
	var f []string
	for _, x := range []struct {
		on   bool
		name string
	}{{s.Anonymous, "anonymous"}, {s.Constant, "constant"}, {s.Interval, "interval"}, {s.IsMap, "map"},
		{s.HasTimeout, "timeout"}, {s.Dynamic, "dynamic"}, {s.Concatenation, "concat"}, {s.Counter, "counter"}} {
		if x.on {
			f = append(f, x.name)
		}
	}
	if len(f) == 0 {
		return ""
	}
	return " flags=" + strings.Join(f, ",")
}

func hookText(ch *nftables.Chain) string {
	if ch.Hooknum == nil {
		return ""
	}
	prio, policy := 0, "accept"
	if ch.Priority != nil {
		prio = int(*ch.Priority)
	}
	if ch.Policy != nil && *ch.Policy == nftables.ChainPolicyDrop {
		policy = "drop"
	}
	return fmt.Sprintf(" type=%s hook=%d priority=%d policy=%s device=%q", ch.Type, *ch.Hooknum, prio, policy, ch.Device)
}

func renderElement(e nftables.SetElement) string {
	s := "key=" + hex.EncodeToString(e.Key)
	if len(e.KeyEnd) > 0 {
		s += " keyend=" + hex.EncodeToString(e.KeyEnd)
	}
	if e.IntervalEnd {
		s += " interval-end"
	}
	if v := elemVerdict(e); v != nil {
		s += " verdict=" + verdictText(v)
	} else if len(e.Val) > 0 {
		s += " val=" + hex.EncodeToString(e.Val)
	}
	if e.Timeout != 0 {
		s += fmt.Sprintf(" timeout=%v", e.Timeout)
	}
	if e.Comment != "" {
		s += fmt.Sprintf(" comment=%q", e.Comment)
	}
	return s
}

// elemVerdict is the verdict of a verdict map's element.
// github.com/google/nftables v0.3.0 does not decode it on reading
// (VerdictData stays nil): Val holds the netlink attributes
// NFTA_VERDICT_CODE (big-endian int32) and NFTA_VERDICT_CHAIN (string).
func elemVerdict(e nftables.SetElement) *expr.Verdict {
	if e.VerdictData != nil {
		return e.VerdictData
	}
	var v expr.Verdict
	found := false
	for b := e.Val; len(b) >= 4; {
		n, typ := int(binaryutil.NativeEndian.Uint16(b[0:2])), binaryutil.NativeEndian.Uint16(b[2:4])&0x3fff
		if n < 4 || n > len(b) {
			return nil
		}
		data := b[4:n]
		switch {
		case typ == unix.NFTA_VERDICT_CODE && len(data) == 4:
			v.Kind, found = expr.VerdictKind(int32(binaryutil.BigEndian.Uint32(data))), true
		case typ == unix.NFTA_VERDICT_CHAIN:
			v.Chain = strings.TrimRight(string(data), "\x00")
		}
		b = b[min((n+3)&^3, len(b)):]
	}
	if !found {
		return nil
	}
	return &v
}

func verdictText(v *expr.Verdict) string {
	names := map[expr.VerdictKind]string{expr.VerdictAccept: "accept", expr.VerdictDrop: "drop", expr.VerdictReturn: "return",
		expr.VerdictJump: "jump", expr.VerdictGoto: "goto", expr.VerdictContinue: "continue", expr.VerdictBreak: "break"}
	n, ok := names[v.Kind]
	if !ok {
		n = fmt.Sprintf("verdict(%d)", v.Kind)
	}
	if v.Chain != "" {
		n += " " + v.Chain
	}
	return n
}

// renderRule renders a rule's expressions field by field (byte slices in
// hex, zero fields left out, counters without their values) and its
// comment.
func renderRule(r *nftables.Rule) string {
	parts := make([]string, 0, len(r.Exprs)+1)
	for _, e := range r.Exprs {
		parts = append(parts, renderExpr(e))
	}
	if c, ok := userdata.GetString(r.UserData, userdata.TypeComment); ok {
		parts = append(parts, fmt.Sprintf("comment=%q", c))
	} else if len(r.UserData) > 0 {
		parts = append(parts, "userdata="+hex.EncodeToString(r.UserData))
	}
	return strings.Join(parts, " ")
}

func renderExpr(e expr.Any) string {
	switch e := e.(type) {
	case *expr.Counter:
		return "counter"
	case *expr.Verdict:
		return verdictText(e)
	}
	v := reflect.Indirect(reflect.ValueOf(e))
	name := strings.ToLower(v.Type().Name())
	if v.Kind() != reflect.Struct {
		return fmt.Sprintf("%s(%v)", name, v.Interface())
	}
	var fields []string
	for i := range v.NumField() {
		f, ft := v.Field(i), v.Type().Field(i)
		if !ft.IsExported() || f.IsZero() {
			continue
		}
		var val string
		switch {
		case f.Kind() == reflect.Slice && f.Type().Elem().Kind() == reflect.Uint8:
			val = hex.EncodeToString(f.Bytes())
		case f.Kind() == reflect.Slice && f.Type().Elem() == reflect.TypeFor[expr.Any]():
			var sub []string
			for j := range f.Len() {
				sub = append(sub, renderExpr(f.Index(j).Interface().(expr.Any)))
			}
			val = "[" + strings.Join(sub, "; ") + "]"
		default:
			// Through interfaces and pointers (xt match info, say): the
			// value, never an address.
			for f.Kind() == reflect.Interface || f.Kind() == reflect.Pointer {
				f = f.Elem()
			}
			val = fmt.Sprintf("%+v", f.Interface())
		}
		fields = append(fields, ft.Name+"="+val)
	}
	return name + "{" + strings.Join(fields, ",") + "}"
}

// frontendKey encodes a Service frontend as the agent's maps key it: each
// field of a concatenation padded to 4 bytes (address . protocol . port,
// or protocol . port for a NodePort).
func frontendKey(addr netip.Addr, proto string, port uint16, nodePort bool) []byte {
	var k []byte
	if !nodePort {
		k = append(k, addr.AsSlice()...)
	}
	p := byte(6)
	if strings.EqualFold(proto, "UDP") {
		p = 17
	}
	k = append(k, p, 0, 0, 0)
	k = append(k, binaryutil.BigEndian.PutUint16(port)...)
	return append(k, 0, 0)
}

// ourObjects is the agent's table read back, for the checks.
type ourObjects struct {
	exists bool
	table  *nftables.Table
	sets   map[string]*nftables.Set
	elems  map[string][]nftables.SetElement // by set name
	rules  map[string][]*nftables.Rule      // by chain name
}

// readOurs reads the agent's table (ip switchyard) in ns. The agent may
// commit a transaction between two of the dump requests (an anonymous map
// listed by GetSets is gone by GetSetElements: ENOENT), so such a torn read
// is retried, bounded; any other error fails the test.
func readOurs(t *testing.T, ns *netnstest.NS) *ourObjects {
	t.Helper()
	var err error
	for attempt := 0; attempt < 50; attempt++ {
		var o *ourObjects
		if o, err = readOursOnce(t, ns); err == nil {
			return o
		}
		if !errors.Is(err, unix.ENOENT) && !strings.Contains(err.Error(), "no such file or directory") {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("read %s: %v", ourTable, err)
	return nil
}

func readOursOnce(t *testing.T, ns *netnstest.NS) (*ourObjects, error) {
	t.Helper()
	c := nftConn(t, ns)
	o := &ourObjects{sets: map[string]*nftables.Set{}, elems: map[string][]nftables.SetElement{}, rules: map[string][]*nftables.Rule{}}
	ts := tables(t, c, func(tb *nftables.Table) bool { return tb.Family == nftables.TableFamilyIPv4 && tb.Name == ourTable })
	if len(ts) == 0 {
		return o, nil
	}
	o.exists, o.table = true, ts[0]
	sets, err := c.GetSets(o.table)
	if err != nil {
		return nil, fmt.Errorf("sets of %s: %w", ourTable, err)
	}
	for _, s := range sets {
		o.sets[s.Name] = s
		if o.elems[s.Name], err = c.GetSetElements(s); err != nil {
			return nil, fmt.Errorf("elements of %s: %w", s.Name, err)
		}
	}
	for _, ch := range chains(t, c, o.table) {
		if o.rules[ch.Name], err = c.GetRules(o.table, ch); err != nil {
			return nil, fmt.Errorf("rules of %s: %w", ch.Name, err)
		}
	}
	return o, nil
}

// firewallMap is the agent's verdict map sending load-balancer frontends
// with loadBalancerSourceRanges to their firewall chain: a filter before
// the dispatch, not a dispatch itself.
const firewallMap = "firewall-ips"

// verdictMaps are the named maps with verdicts that dispatch Services (all
// but firewallMap). github.com/google/nftables v0.3.0 reads a verdict
// map's data type into KeyType (set.go, NFTA_SET_DATA_TYPE 0xffffff00), so
// both are looked at.
func (o *ourObjects) verdictMaps() []string {
	var out []string
	for name, s := range o.sets {
		verdicts := s.DataType.Name == nftables.TypeVerdict.Name || s.KeyType.Name == nftables.TypeVerdict.Name
		if s.IsMap && !s.Anonymous && !strings.HasPrefix(name, "__") && verdicts && name != firewallMap {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// plainSets are the named sets that are not maps.
func (o *ourObjects) plainSets() []string {
	var out []string
	for name, s := range o.sets {
		if !s.IsMap && !s.Anonymous && !strings.HasPrefix(name, "__") {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// dispatch finds key in the verdict maps: the map and the chain the
// element sends to.
func (o *ourObjects) dispatch(key []byte) (set, chain string, ok bool) {
	for _, name := range o.verdictMaps() {
		for _, e := range o.elems[name] {
			if v := elemVerdict(e); v != nil && slices.Equal(e.Key, key) {
				return name, v.Chain, true
			}
		}
	}
	return "", "", false
}

// firewall finds key in firewallMap: the chain its element sends to.
func (o *ourObjects) firewall(key []byte) (chain string, ok bool) {
	for _, e := range o.elems[firewallMap] {
		if v := elemVerdict(e); v != nil && slices.Equal(e.Key, key) {
			return v.Chain, true
		}
	}
	return "", false
}

// firewallPasses reads an IPv4 firewall chain back: the source prefixes
// its rules return for, in order, and whether it ends in an
// unconditional drop. A rule of another shape is an error.
func (o *ourObjects) firewallPasses(chain string) (passes []netip.Prefix, drops bool, err error) {
	rules := o.rules[chain]
	for i, r := range rules {
		var (
			loaded bool
			mask   []byte
			addr   []byte
			v      *expr.Verdict
		)
		for _, e := range r.Exprs {
			switch e := e.(type) {
			case *expr.Payload:
				// ip saddr: network header, offset 12, 4 bytes.
				loaded = e.Base == expr.PayloadBaseNetworkHeader && e.Offset == 12 && e.Len == 4
			case *expr.Bitwise:
				mask = e.Mask
			case *expr.Cmp:
				if e.Op == expr.CmpOpEq {
					addr = e.Data
				}
			case *expr.Verdict:
				v = e
			case *expr.Counter:
			default:
				return nil, false, fmt.Errorf("%s rule %d: unexpected %s", chain, i, renderRule(r))
			}
		}
		switch {
		case v == nil:
			return nil, false, fmt.Errorf("%s rule %d without verdict: %s", chain, i, renderRule(r))
		case v.Kind == expr.VerdictDrop && !loaded && addr == nil && i == len(rules)-1:
			drops = true
		case v.Kind == expr.VerdictReturn && loaded && len(addr) == 4:
			a, _ := netip.AddrFromSlice(addr)
			bits := 32
			if mask != nil {
				bits = 0
				for _, m := range mask {
					for ; m != 0; m <<= 1 {
						bits++
					}
				}
			}
			passes = append(passes, netip.PrefixFrom(a, bits))
		default:
			return nil, false, fmt.Errorf("%s rule %d: unexpected %s", chain, i, renderRule(r))
		}
	}
	return passes, drops, nil
}

// inPlainSet reports the plain sets that hold key.
func (o *ourObjects) inPlainSet(key []byte) []string {
	var in []string
	for _, name := range o.plainSets() {
		for _, e := range o.elems[name] {
			if slices.Equal(e.Key, key) {
				in = append(in, name)
			}
		}
	}
	return in
}

// endpoints are the DNAT targets of a Service chain: the values (address .
// port) of the anonymous maps its rules look up.
func (o *ourObjects) endpoints(chain string) []netip.AddrPort {
	var out []netip.AddrPort
	for _, r := range o.rules[chain] {
		for _, e := range r.Exprs {
			l, ok := e.(*expr.Lookup)
			if !ok || !l.IsDestRegSet {
				continue
			}
			s := o.sets[l.SetName]
			if s == nil || !(s.Anonymous || strings.HasPrefix(s.Name, "__")) {
				continue
			}
			for _, el := range o.elems[l.SetName] {
				if len(el.Val) < 6 {
					continue
				}
				a, _ := netip.AddrFromSlice(el.Val[:4])
				out = append(out, netip.AddrPortFrom(a, binaryutil.BigEndian.Uint16(el.Val[4:6])))
			}
		}
	}
	slices.SortFunc(out, netip.AddrPort.Compare)
	return slices.Compact(out)
}
