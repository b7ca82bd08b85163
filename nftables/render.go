package nftables

import (
	"encoding/hex"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The renderer turns rule expressions into one line of nft-like text. It is
// used both ways: on the expressions switchyard builds and on the ones the
// kernel returns, so comparing the two texts tells whether a rule in the
// kernel is the one wanted (the kernel echoes some attributes differently,
// e.g. max registers equal to min ones; the text only keeps what matters).
// It also makes the dumps tests compare with golden files.
//
// It tracks what each 32-bit register holds ("ip daddr", "numgen random mod
// 2", ...) and prints a statement when a consumer (cmp, lookup, nat, meta
// set, verdict, ...) uses it, much like nft's own listing. Expressions it
// does not know print as [name], so a foreign edit still shows up as a
// difference.

// valueKind says how to print a value held in a register.
type valueKind int

const (
	kindHex valueKind = iota
	kindAddr
	kindProto
	kindPort
	kindMark // host-order u32, printed in hex
	kindInt  // host-order u32, printed in decimal
	kindFibType
	kindCtState
	kindCtStatus
	kindTCPFlags
	kindMapData // the result of a map lookup
)

// regVal is what one 32-bit register holds.
type regVal struct {
	text       string
	kind       valueKind
	width      int  // bytes of the whole value (may span registers)
	masked     bool // a bitwise mask was applied (text includes it)
	isPrefix   bool // an address masked to a prefix of prefixBits
	prefixBits int
	origin     int // values spanning registers share an origin
	part       int // index of this register within the value
	consumed   bool
}

// anonResolver renders the elements of an anonymous set, or reports false
// when they are not known (comparisons then rely on the rule's comment).
type anonResolver func(set string) (string, bool)

type ruleRenderer struct {
	f      *family
	anon   anonResolver
	keyLen func(set string) int // key bytes of a named set, 0 if unknown
	regs   map[int]*regVal
	origin int
	out    []string
}

// slot maps a register number to its 32-bit slot: NFT_REG_1..4 are 16 bytes
// each, NFT_REG32_00.. are 4 bytes, and NFT_REG_1 == NFT_REG32_00.
func slot(reg uint32) int {
	if reg <= unix.NFT_REG_4 {
		return int(reg) * 4
	}
	return int(reg) - unix.NFT_REG32_00 + 4
}

func slotsFor(width int) int { return (width + 3) / 4 }

// renderRule renders one rule, with its comment.
func renderRule(f *family, exprs []expr.Any, comment string, anon anonResolver, keyLen func(string) int) string {
	r := &ruleRenderer{f: f, anon: anon, keyLen: keyLen, regs: map[int]*regVal{}}
	for _, e := range exprs {
		r.expr(e)
	}
	if comment != "" {
		r.out = append(r.out, "comment "+strconv.Quote(comment))
	}
	return strings.Join(r.out, " ")
}

// store puts a value into the registers starting at reg.
func (r *ruleRenderer) store(reg uint32, v regVal) {
	r.origin++
	s := slot(reg)
	for i := 0; i < max(slotsFor(v.width), 1); i++ {
		c := v
		c.origin, c.part = r.origin, i
		r.regs[s+i] = &c
	}
}

func (r *ruleRenderer) load(reg uint32) *regVal {
	v := r.regs[slot(reg)]
	if v == nil {
		return &regVal{text: fmt.Sprintf("reg%d", reg), kind: kindHex, width: 4}
	}
	v.consumed = true
	return v
}

// gather returns the texts of a key starting at reg: length bytes if
// known, otherwise the first value and every consecutive unconsumed one
// after it (a concatenation).
func (r *ruleRenderer) gather(reg uint32, length int) []string {
	var texts []string
	s, covered := slot(reg), 0
	for {
		v := r.regs[s]
		if v == nil || v.part != 0 || (length == 0 && len(texts) > 0 && v.consumed) {
			break
		}
		texts = append(texts, v.text)
		v.consumed = true
		n := max(slotsFor(v.width), 1)
		s += n
		covered += n * 4
		if length > 0 && covered >= length {
			break
		}
	}
	if len(texts) == 0 {
		texts = []string{fmt.Sprintf("reg%d", reg)}
	}
	return texts
}

func (r *ruleRenderer) emit(s string) { r.out = append(r.out, s) }

func (r *ruleRenderer) expr(e expr.Any) {
	switch e := e.(type) {
	case *expr.Payload:
		r.payload(e)
	case *expr.Meta:
		r.meta(e)
	case *expr.Ct:
		r.ct(e)
	case *expr.Fib:
		r.fib(e)
	case *expr.Numgen:
		kind := "random"
		if e.Type == unix.NFT_NG_INCREMENTAL {
			kind = "inc"
		}
		text := fmt.Sprintf("numgen %s mod %d", kind, e.Modulus)
		if e.Offset != 0 {
			text += fmt.Sprintf(" offset %d", e.Offset)
		}
		r.store(e.Register, regVal{text: text, kind: kindInt, width: 4})
	case *expr.Immediate:
		r.store(e.Register, regVal{text: "0x" + hex.EncodeToString(e.Data), kind: kindHex, width: len(e.Data)})
	case *expr.Bitwise:
		r.bitwise(e)
	case *expr.Cmp:
		r.cmp(e)
	case *expr.Lookup:
		r.lookup(e)
	case *expr.NAT:
		r.nat(e)
	case *expr.Masq:
		r.emit("masquerade" + natFlags(e.Random, e.FullyRandom, e.Persistent))
	case *expr.Reject:
		r.emit(rejectText(r.f, e))
	case *expr.Verdict:
		r.emit(verdictText(e.Kind, e.Chain))
	case *expr.Counter:
		r.emit("counter")
	case *expr.Dynset:
		r.dynset(e)
	default:
		name := fmt.Sprintf("%T", e)
		r.emit("[" + strings.TrimPrefix(name, "*expr.") + "]")
	}
}

func (r *ruleRenderer) payload(e *expr.Payload) {
	name, kind := r.payloadField(e)
	if e.OperationType != expr.PayloadLoad {
		s := name + " set " + r.load(e.SourceRegister).text
		// nft leaves the checksum update implicit; a different one must
		// still compare unequal.
		switch {
		case e.CsumType == expr.CsumTypeInet:
			s += fmt.Sprintf(" [checksum offset %d]", e.CsumOffset)
		case e.CsumType != expr.CsumTypeNone:
			s += fmt.Sprintf(" [checksum type %d offset %d]", e.CsumType, e.CsumOffset)
		}
		if e.CsumFlags != 0 {
			s += fmt.Sprintf(" [checksum flags %#x]", e.CsumFlags)
		}
		r.emit(s)
		return
	}
	r.store(e.DestRegister, regVal{text: name, kind: kind, width: int(e.Len)})
}

// payloadField names a header field the way nft does: by name when known,
// else nft's raw "@nh,OFFSET,LENGTH" / "@th,..." in bits.
func (r *ruleRenderer) payloadField(e *expr.Payload) (string, valueKind) {
	nh, th := e.Base == expr.PayloadBaseNetworkHeader, e.Base == expr.PayloadBaseTransportHeader
	switch {
	case nh && e.Offset == r.f.saddrOffset && e.Len == r.f.addrLen:
		return r.f.name + " saddr", kindAddr
	case nh && e.Offset == r.f.daddrOffset && e.Len == r.f.addrLen:
		return r.f.name + " daddr", kindAddr
	case nh && e.Offset == r.f.lengthOffset && e.Len == 2:
		return r.f.name + " length", kindPort // a big-endian 16-bit number, like a port
	case th && e.Offset == 0 && e.Len == 2:
		return "th sport", kindPort
	case th && e.Offset == 2 && e.Len == 2:
		return "th dport", kindPort
	case th && e.Offset == tcpFlagsOffset && e.Len == 1:
		return "tcp flags", kindTCPFlags
	}
	base := map[expr.PayloadBase]string{expr.PayloadBaseLLHeader: "@ll", expr.PayloadBaseNetworkHeader: "@nh",
		expr.PayloadBaseTransportHeader: "@th"}[e.Base]
	if base == "" {
		base = "@base" + strconv.Itoa(int(e.Base))
	}
	return fmt.Sprintf("%s,%d,%d", base, e.Offset*8, e.Len*8), kindHex
}

func (r *ruleRenderer) meta(e *expr.Meta) {
	name, kind, width := "meta key-"+strconv.Itoa(int(e.Key)), kindHex, 4
	switch e.Key {
	case expr.MetaKeyMARK:
		name, kind = "meta mark", kindMark
	case expr.MetaKeyL4PROTO:
		name, kind, width = "meta l4proto", kindProto, 1
	case expr.MetaKeyNFPROTO:
		name, kind, width = "meta nfproto", kindInt, 1
	}
	if e.SourceRegister {
		r.emit(name + " set " + r.load(e.Register).text)
		return
	}
	r.store(e.Register, regVal{text: name, kind: kind, width: width})
}

func (r *ruleRenderer) ct(e *expr.Ct) {
	name, kind := "ct key-"+strconv.Itoa(int(e.Key)), kindHex
	switch e.Key {
	case expr.CtKeySTATE:
		name, kind = "ct state", kindCtState
	case expr.CtKeySTATUS:
		name, kind = "ct status", kindCtStatus
	case expr.CtKeyMARK:
		name, kind = "ct mark", kindMark
	}
	switch {
	case e.SourceRegister:
		r.emit(name + " set " + r.load(e.Register).text)
		return
	case e.Register == 0:
		// google/nftables v0.3.0 does not decode NFTA_CT_SREG, so a "ct
		// ... set" read back has neither flag nor register (a load can
		// never target register 0, the verdict). The rules set from
		// NFT_REG_1 only, so that is where the value is read.
		r.emit(name + " set " + r.load(reg1).text)
		return
	}
	r.store(e.Register, regVal{text: name, kind: kind, width: 4})
}

func (r *ruleRenderer) fib(e *expr.Fib) {
	var parts []string
	for _, f := range []struct {
		on   bool
		name string
	}{{e.FlagSADDR, "saddr"}, {e.FlagDADDR, "daddr"}, {e.FlagMARK, "mark"}, {e.FlagIIF, "iif"}, {e.FlagOIF, "oif"}} {
		if f.on {
			parts = append(parts, f.name)
		}
	}
	kind := kindHex
	switch {
	case e.ResultADDRTYPE:
		parts, kind = append(parts, "type"), kindFibType
	case e.ResultOIF:
		parts = append(parts, "oif")
	case e.ResultOIFNAME:
		parts = append(parts, "oifname")
	}
	if e.FlagPRESENT {
		parts = append(parts, "exists")
	}
	r.store(e.Register, regVal{text: "fib " + strings.Join(parts, " "), kind: kind, width: 4})
}

func (r *ruleRenderer) bitwise(e *expr.Bitwise) {
	src := *r.load(e.SourceRegister)
	v := regVal{kind: src.kind, width: int(e.Len), text: src.text}
	switch zeroXor := allBytes(e.Xor, 0); {
	case zeroXor && src.kind == kindAddr && prefixLen(e.Mask) >= 0:
		v.isPrefix, v.prefixBits = true, prefixLen(e.Mask)
	case zeroXor && oneBitClear(e.Mask):
		// Clearing one bit, as when the masquerade mark is removed.
		v.text = src.text + " & ~" + formatValue(src.kind, invertBytes(e.Mask))
	case zeroXor:
		v.text, v.masked = src.text+" & "+formatValue(src.kind, e.Mask), true
	case allBytes(orBytes(e.Mask, e.Xor), 0xff) && allBytes(andBytes(e.Mask, e.Xor), 0):
		v.text = src.text + " | " + formatValue(src.kind, e.Xor)
	case allBytes(e.Mask, 0xff):
		v.text = src.text + " ^ " + formatValue(src.kind, e.Xor)
	default:
		v.text = "(" + src.text + " & " + formatValue(src.kind, e.Mask) + ") ^ " + formatValue(src.kind, e.Xor)
	}
	r.store(e.DestRegister, v)
}

func (r *ruleRenderer) cmp(e *expr.Cmp) {
	v := r.load(e.Register)
	op := map[expr.CmpOp]string{expr.CmpOpEq: "", expr.CmpOpNeq: "!= ", expr.CmpOpLt: "< ",
		expr.CmpOpLte: "<= ", expr.CmpOpGt: "> ", expr.CmpOpGte: ">= "}[e.Op]
	switch {
	case (v.kind == kindCtState || v.kind == kindCtStatus) && v.masked && allBytes(e.Data, 0) &&
		(e.Op == expr.CmpOpNeq || e.Op == expr.CmpOpEq):
		// "ct state new" is nft's way of saying "(state & NEW) != 0".
		base, mask, _ := strings.Cut(v.text, " & ")
		if e.Op == expr.CmpOpNeq {
			r.emit(base + " " + mask)
		} else {
			r.emit(base + " & " + mask + " == 0")
		}
	case v.isPrefix:
		a, _ := netip.AddrFromSlice(e.Data)
		r.emit(v.text + " " + op + netip.PrefixFrom(a, v.prefixBits).String())
	case v.masked && e.Op == expr.CmpOpEq:
		r.emit(v.text + " == " + formatValue(v.kind, e.Data))
	default:
		r.emit(v.text + " " + op + formatValue(v.kind, e.Data))
	}
}

func (r *ruleRenderer) setRef(name string) string {
	if !isAnonymousSetName(name) {
		return "@" + name
	}
	if r.anon != nil {
		if s, ok := r.anon(name); ok {
			return s
		}
	}
	return "{ anonymous }"
}

func (r *ruleRenderer) lookup(e *expr.Lookup) {
	length := 0
	if r.keyLen != nil && !isAnonymousSetName(e.SetName) {
		length = r.keyLen(e.SetName)
	}
	texts := r.gather(e.SourceRegister, length)
	key := strings.Join(texts, " . ")
	ref := r.setRef(e.SetName)
	switch {
	case e.IsDestRegSet && e.DestRegister == unix.NFT_REG_VERDICT:
		r.emit(key + " vmap " + ref)
	case e.IsDestRegSet:
		// Our only maps yield address . port.
		r.store(e.DestRegister, regVal{text: key + " map " + ref, kind: kindMapData, width: int(r.f.addrLen) + 4})
	case e.Invert:
		r.emit(key + " != " + ref)
	default:
		r.emit(key + " " + ref)
	}
}

// dynset: "update @set { key [: data] } [timeout T]", as nft writes it.
func (r *ruleRenderer) dynset(e *expr.Dynset) {
	op := map[uint32]string{unix.NFT_DYNSET_OP_ADD: "add", unix.NFT_DYNSET_OP_UPDATE: "update", nftDynsetOpDelete: "delete"}[e.Operation]
	if op == "" {
		op = "dynset-op-" + strconv.Itoa(int(e.Operation))
	}
	elem := r.load(e.SrcRegKey).text
	if e.SrcRegData != 0 && e.Operation != nftDynsetOpDelete {
		elem += " : " + r.load(e.SrcRegData).text
	}
	s := op + " " + r.setRef(e.SetName) + " { " + elem
	if e.Timeout != 0 {
		s += " timeout " + e.Timeout.String()
	}
	// Expressions the element carries (nft prints them inside the
	// braces): "ct count [over] N"; others by name.
	for _, x := range e.Exprs {
		if c, ok := x.(*expr.Connlimit); ok {
			s += " ct count "
			if c.Flags&nftConnlimitFInv != 0 {
				s += "over "
			}
			s += strconv.FormatUint(uint64(c.Count), 10)
			if c.Flags&^nftConnlimitFInv != 0 {
				s += fmt.Sprintf(" [flags %#x]", c.Flags)
			}
			continue
		}
		s += " [" + strings.TrimPrefix(fmt.Sprintf("%T", x), "*expr.") + "]"
	}
	s += " }"
	if e.Invert {
		s += " [inverted]"
	}
	r.emit(s)
}

func (r *ruleRenderer) nat(e *expr.NAT) {
	kind := map[expr.NATType]string{expr.NATTypeDestNAT: "dnat", expr.NATTypeSourceNAT: "snat"}[e.Type]
	if kind == "" {
		kind = "nat-" + strconv.Itoa(int(e.Type))
	}
	to := ""
	if e.RegAddrMin != 0 {
		addr := r.load(e.RegAddrMin)
		to = " to " + addr.text
		if e.RegProtoMin != 0 {
			proto := r.load(e.RegProtoMin)
			if proto.origin != addr.origin {
				to += " : " + proto.text
			}
		}
	}
	r.emit(kind + to + natFlags(e.Random, e.FullyRandom, e.Persistent))
}

func natFlags(random, fullyRandom, persistent bool) string {
	s := ""
	if random {
		s += " random"
	}
	if fullyRandom {
		s += " fully-random"
	}
	if persistent {
		s += " persistent"
	}
	return s
}

func rejectText(f *family, e *expr.Reject) string {
	switch e.Type {
	case unix.NFT_REJECT_TCP_RST:
		return "reject with tcp reset"
	case unix.NFT_REJECT_ICMP_UNREACH:
		if f.addrLen == 16 {
			names := map[uint8]string{0: "no-route", 1: "admin-prohibited", 3: "addr-unreachable", 4: "port-unreachable",
				5: "policy-fail", 6: "reject-route"}
			if n, ok := names[e.Code]; ok {
				return "reject with icmpv6 " + n
			}
			return "reject with icmpv6 code " + strconv.Itoa(int(e.Code))
		}
		names := map[uint8]string{0: "net-unreachable", 1: "host-unreachable", 3: "port-unreachable", 13: "admin-prohibited"}
		if n, ok := names[e.Code]; ok {
			return "reject with icmp " + n
		}
		return "reject with icmp code " + strconv.Itoa(int(e.Code))
	case unix.NFT_REJECT_ICMPX_UNREACH:
		names := map[uint8]string{0: "no-route", 1: "port-unreachable", 2: "host-unreachable", 3: "admin-prohibited"}
		if n, ok := names[e.Code]; ok {
			return "reject with icmpx " + n
		}
		return "reject with icmpx code " + strconv.Itoa(int(e.Code))
	}
	return fmt.Sprintf("reject type %d code %d", e.Type, e.Code)
}

func verdictText(k expr.VerdictKind, chain string) string {
	switch k {
	case expr.VerdictAccept:
		return "accept"
	case expr.VerdictDrop:
		return "drop"
	case expr.VerdictReturn:
		return "return"
	case expr.VerdictContinue:
		return "continue"
	case expr.VerdictBreak:
		return "break"
	case expr.VerdictJump:
		return "jump " + chain
	case expr.VerdictGoto:
		return "goto " + chain
	}
	return "verdict " + strconv.Itoa(int(k))
}

// formatValue prints register data of a kind.
func formatValue(kind valueKind, b []byte) string {
	switch kind {
	case kindAddr:
		if a, ok := netip.AddrFromSlice(b); ok {
			return a.String()
		}
	case kindProto:
		if len(b) >= 1 {
			return protoName(b[0])
		}
	case kindPort:
		if len(b) >= 2 {
			return strconv.Itoa(int(binaryutil.BigEndian.Uint16(b[:2])))
		}
	case kindMark:
		if len(b) == 4 {
			return fmt.Sprintf("%#x", binaryutil.NativeEndian.Uint32(b))
		}
	case kindInt:
		if len(b) == 4 {
			return strconv.FormatUint(uint64(binaryutil.NativeEndian.Uint32(b)), 10)
		}
	case kindFibType:
		if len(b) == 4 {
			return fibTypeName(binaryutil.NativeEndian.Uint32(b))
		}
	case kindCtState:
		if len(b) == 4 {
			return flagNames(binaryutil.NativeEndian.Uint32(b), ctStateNames)
		}
	case kindCtStatus:
		if len(b) == 4 {
			return flagNames(binaryutil.NativeEndian.Uint32(b), ctStatusNames)
		}
	case kindTCPFlags:
		if len(b) == 1 {
			return tcpFlagsText(b[0])
		}
	}
	return "0x" + hex.EncodeToString(b)
}

func fibTypeName(t uint32) string {
	names := map[uint32]string{unix.RTN_UNICAST: "unicast", unix.RTN_LOCAL: "local", unix.RTN_BROADCAST: "broadcast",
		unix.RTN_ANYCAST: "anycast", unix.RTN_MULTICAST: "multicast", unix.RTN_BLACKHOLE: "blackhole",
		unix.RTN_UNREACHABLE: "unreachable", unix.RTN_PROHIBIT: "prohibit"}
	if n, ok := names[t]; ok {
		return n
	}
	return "type-" + strconv.Itoa(int(t))
}

var (
	ctStateNames  = []string{0: "invalid", 1: "established", 2: "related", 3: "new", 6: "untracked"}
	ctStatusNames = []string{0: "expected", 1: "seen-reply", 2: "assured", 3: "confirmed", 4: "snat", 5: "dnat", 9: "dying"}
)

var tcpFlagNames = []string{"fin", "syn", "rst", "psh", "ack", "urg", "ecn", "cwr"}

// tcpFlagsText prints TCP flags as nft does: "syn", "(syn | rst)", "0".
func tcpFlagsText(v byte) string {
	var parts []string
	for i, n := range tcpFlagNames {
		if v&(1<<i) != 0 {
			parts = append(parts, n)
		}
	}
	switch len(parts) {
	case 0:
		return "0"
	case 1:
		return parts[0]
	}
	return "(" + strings.Join(parts, " | ") + ")"
}

func flagNames(v uint32, names []string) string {
	var parts []string
	for i := 0; i < 32; i++ {
		if v&(1<<i) == 0 {
			continue
		}
		if i < len(names) && names[i] != "" {
			parts = append(parts, names[i])
		} else {
			parts = append(parts, fmt.Sprintf("%#x", uint32(1)<<i))
		}
	}
	if len(parts) == 0 {
		return "0x0"
	}
	return strings.Join(parts, ",")
}

func allBytes(b []byte, v byte) bool {
	for _, c := range b {
		if c != v {
			return false
		}
	}
	return true
}

func orBytes(a, b []byte) []byte {
	out := make([]byte, min(len(a), len(b)))
	for i := range out {
		out[i] = a[i] | b[i]
	}
	return out
}

func andBytes(a, b []byte) []byte {
	out := make([]byte, min(len(a), len(b)))
	for i := range out {
		out[i] = a[i] & b[i]
	}
	return out
}

func invertBytes(a []byte) []byte {
	out := make([]byte, len(a))
	for i := range a {
		out[i] = ^a[i]
	}
	return out
}

// oneBitClear reports whether mask has exactly one zero bit.
func oneBitClear(mask []byte) bool {
	zeros := 0
	for _, c := range mask {
		for i := 0; i < 8; i++ {
			if c&(1<<i) == 0 {
				zeros++
			}
		}
	}
	return zeros == 1
}

// prefixLen returns the prefix length of a network-order netmask, or -1.
func prefixLen(mask []byte) int {
	bits, done := 0, false
	for _, c := range mask {
		for i := 7; i >= 0; i-- {
			set := c&(1<<i) != 0
			switch {
			case set && done:
				return -1
			case set:
				bits++
			default:
				done = true
			}
		}
	}
	return bits
}
