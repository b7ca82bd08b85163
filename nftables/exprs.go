package nftables

import (
	"net/netip"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Expression builders. Each returns the expressions nft itself generates
// for the statement in its comment, so `nft list ruleset` shows them the
// usual way and the renderer (render.go) reads them back.
//
// Registers: single values use NFT_REG_1; concatenations use consecutive
// 32-bit registers from NFT_REG32_00, which is the same storage as
// NFT_REG_1. Every load zeroes the rest of its last 32-bit register, so a
// 1-byte protocol or 2-byte port matches a key padded with zeros to 4 bytes.
const (
	reg1    = unix.NFT_REG_1
	reg32_0 = unix.NFT_REG32_00
)

// Host-order and network-order encodings: meta mark, ct state/status, fib
// results and numgen values are host order in registers; addresses and
// ports are network order.
func native32(v uint32) []byte { return binaryutil.NativeEndian.PutUint32(v) }
func be16(v uint16) []byte     { return binaryutil.BigEndian.PutUint16(v) }

func loadAddr(f *family, offset, reg uint32) *expr.Payload {
	return &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg,
		Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: f.addrLen}
}

// loadTHDport loads the destination port of TCP, UDP and SCTP alike (all
// three keep it at offset 2).
func loadTHDport(reg uint32) *expr.Payload {
	return &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg,
		Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}
}

func loadL4Proto(reg uint32) *expr.Meta { return &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg} }

func cmp(op expr.CmpOp, data []byte) *expr.Cmp { return &expr.Cmp{Op: op, Register: reg1, Data: data} }

// matchAddr: "ip saddr|daddr [!=] a".
func matchAddr(f *family, offset uint32, op expr.CmpOp, a netip.Addr) []expr.Any {
	return []expr.Any{loadAddr(f, offset, reg1), cmp(op, a.AsSlice())}
}

// matchPrefix: "ip saddr|daddr [!=] p".
func matchPrefix(f *family, offset uint32, op expr.CmpOp, p netip.Prefix) []expr.Any {
	if p.Bits() == int(f.addrLen*8) {
		return matchAddr(f, offset, op, p.Addr())
	}
	return []expr.Any{
		loadAddr(f, offset, reg1),
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: f.addrLen,
			Mask: prefixMask(f, p.Bits()), Xor: make([]byte, f.addrLen)},
		cmp(op, p.Masked().Addr().AsSlice()),
	}
}

// prefixMask is the netmask of a prefix length, network order.
func prefixMask(f *family, bits int) []byte {
	b := make([]byte, f.addrLen)
	for i := 0; i < bits; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	return b
}

// matchFibDaddrLocal: "fib daddr type local" (the destination is an
// address of this node, in this network namespace).
func matchFibDaddrLocal() []expr.Any {
	return []expr.Any{
		&expr.Fib{Register: reg1, FlagDADDR: true, ResultADDRTYPE: true},
		cmp(expr.CmpOpEq, native32(unix.RTN_LOCAL)),
	}
}

// matchCt: "ct state|status FLAGS" (any of the bits set).
func matchCt(key expr.CtKey, bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: reg1, Key: key},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: native32(bits), Xor: native32(0)},
		cmp(expr.CmpOpNeq, native32(0)),
	}
}

// Conntrack bits: ct state uses NF_CT_STATE_* bits (the library's
// CtStateBit*), ct status the IPS_* bits of the conntrack entry.
const ctStatusDNAT = 1 << 5 // IPS_DST_NAT

// matchMarkClear: "meta mark & BIT == 0".
func matchMarkClear(bit uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: native32(bit), Xor: native32(0)},
		cmp(expr.CmpOpEq, native32(0)),
	}
}

// setMark: "meta mark set meta mark | BIT" (set) or "& ~BIT" (clear); nft
// expresses both as (mark & mask) ^ xor.
func setMark(bit uint32, set bool) []expr.Any {
	xor := uint32(0)
	if set {
		xor = bit
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: native32(^bit), Xor: native32(xor)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg1},
	}
}

func matchL4Proto(p uint8) []expr.Any {
	return []expr.Any{loadL4Proto(reg1), cmp(expr.CmpOpEq, []byte{p})}
}

// loadDaddrProtoPort: "ip daddr . meta l4proto . th dport".
func loadDaddrProtoPort(f *family) []expr.Any {
	slots := (f.addrLen + 3) / 4
	return []expr.Any{
		loadAddr(f, f.daddrOffset, reg32_0),
		loadL4Proto(reg32_0 + slots),
		loadTHDport(reg32_0 + slots + 1),
	}
}

// loadProtoPort: "meta l4proto . th dport".
func loadProtoPort() []expr.Any {
	return []expr.Any{loadL4Proto(reg32_0), loadTHDport(reg32_0 + 1)}
}

// loadSaddrDaddr: "ip saddr . ip daddr".
func loadSaddrDaddr(f *family) []expr.Any {
	slots := (f.addrLen + 3) / 4
	return []expr.Any{loadAddr(f, f.saddrOffset, reg32_0), loadAddr(f, f.daddrOffset, reg32_0+slots)}
}

// inSet: "KEY @set" for the key loaded from NFT_REG32_00.
func inSet(set string) *expr.Lookup { return &expr.Lookup{SourceRegister: reg32_0, SetName: set} }

// vmap: "KEY vmap @set".
func vmap(set string) *expr.Lookup {
	return &expr.Lookup{SourceRegister: reg32_0, DestRegister: unix.NFT_REG_VERDICT, IsDestRegSet: true, SetName: set}
}

func jump(chain string) *expr.Verdict          { return &expr.Verdict{Kind: expr.VerdictJump, Chain: chain} }
func goTo(chain string) *expr.Verdict          { return &expr.Verdict{Kind: expr.VerdictGoto, Chain: chain} }
func verdict(k expr.VerdictKind) *expr.Verdict { return &expr.Verdict{Kind: k} }

func masquerade() *expr.Masq { return &expr.Masq{FullyRandom: true} }

func rejectTCPReset() *expr.Reject { return &expr.Reject{Type: unix.NFT_REJECT_TCP_RST} }

// rejectICMPPortUnreachable: "reject with icmp port-unreachable" (ip) or
// "reject with icmpv6 port-unreachable" (ip6): the family's ICMP type and
// its code for it.
func rejectICMPPortUnreachable(f *family) *expr.Reject {
	return &expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: f.icmpPortUnreachable}
}

// dnatNumgenMap: "dnat to numgen random mod N map @anon" where the map
// yields address . port; nat takes the address from the first register
// and the port from the one after it.
//
// With a connection limit the chosen endpoint's count is checked between
// the lookup and the nat (countWithin): over the limit, the rule stops
// before translating and the chain's next rule rejects. The count happens
// in the rule that translates, on the endpoint it translates to, so a
// connection is only ever counted where it goes.
func dnatNumgenMap(f *family, n uint32, anon string, limit connLimit) []expr.Any {
	slots := (f.addrLen + 3) / 4
	return concat(
		one(&expr.Numgen{Register: reg1, Modulus: n, Type: unix.NFT_NG_RANDOM},
			&expr.Lookup{SourceRegister: reg1, DestRegister: reg1, IsDestRegSet: true, SetName: anon}),
		limit.within(reg1),
		one(&expr.NAT{Type: expr.NATTypeDestNAT, Family: f.natFamily, RegAddrMin: reg1,
			RegProtoMin: reg32_0 + slots, Specified: true}))
}

// nftConnlimitFInv is NFT_CONNLIMIT_F_INV ("ct count over N"), which x/sys
// does not name.
const nftConnlimitFInv = 1

// countWithin: "add @SET { KEY ct count N }" with the key (backend address
// . port) in reg. The element's connection list gets this connection (its
// original tuple; entries of closed or vanished connections are dropped as
// the list is walked), and the rule goes on only while the count,
// this one included, is at most limit. The kernel copies the expression
// into each element it creates, so the limit is fixed per set (limitSet).
func countWithin(set string, reg uint32, limit int) *expr.Dynset {
	return &expr.Dynset{Operation: unix.NFT_DYNSET_OP_ADD, SetName: set, SrcRegKey: reg,
		Exprs: []expr.Any{&expr.Connlimit{Count: uint32(limit)}}}
}

// connLimit says which connection-count set, and which limit, an endpoint
// chain checks before its DNAT; the zero value checks nothing.
type connLimit struct {
	set   string
	limit int
}

func (l connLimit) on() bool { return l.set != "" }

// within returns countWithin for the key in reg, or nothing without a
// limit.
func (l connLimit) within(reg uint32) []expr.Any {
	if !l.on() {
		return nil
	}
	return []expr.Any{countWithin(l.set, reg, l.limit)}
}

func concat(parts ...[]expr.Any) []expr.Any {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	out := make([]expr.Any, 0, n)
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func one(e ...expr.Any) []expr.Any { return e }

// matchFibSaddrLocal: "fib saddr type local" (the source is an address of
// this node: traffic the node itself sends).
func matchFibSaddrLocal() []expr.Any {
	return []expr.Any{
		&expr.Fib{Register: reg1, FlagSADDR: true, ResultADDRTYPE: true},
		cmp(expr.CmpOpEq, native32(unix.RTN_LOCAL)),
	}
}

// nftDynsetOpDelete is NFT_DYNSET_OP_DELETE (Linux 5.18+), which x/sys
// does not name.
const nftDynsetOpDelete = 2

// The session affinity rules keep the client address in the family's
// regAffinityKey, clear of the endpoint (address . port) they build from
// NFT_REG32_00.

// affinityHit: "dnat to ip saddr map @aff if the result is in { current
// endpoints }, refreshing the client's entry". The endpoint check keeps a
// client whose endpoint went away from being sent there until its entry
// expires. The anonymous endpoint set is the lookup at index 3.
//
// With a connection limit the endpoint's count is checked before the
// entry is refreshed: over the limit the rule stops, and affinityFull
// rejects the connection (another endpoint would break the affinity, and
// the count already holds this connection for this endpoint).
func affinityHit(f *family, set, anonSet string, timeout time.Duration, limit connLimit) []expr.Any {
	slots := (f.addrLen + 3) / 4
	return concat(
		one(loadAddr(f, f.saddrOffset, f.regAffinityKey),
			&expr.Lookup{SourceRegister: f.regAffinityKey, DestRegister: reg32_0, IsDestRegSet: true, SetName: set},
			// The endpoint is still one of the chain's.
			&expr.Lookup{SourceRegister: reg32_0, SetName: anonSet}),
		limit.within(reg32_0),
		one(&expr.Dynset{Operation: unix.NFT_DYNSET_OP_UPDATE, SetName: set, SrcRegKey: f.regAffinityKey, SrcRegData: reg32_0, Timeout: timeout},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: f.natFamily, RegAddrMin: reg32_0,
				RegProtoMin: reg32_0 + slots, Specified: true}))
}

// affinityFull: "ip saddr map @aff @anon reject with tcp reset": a client
// whose live entry points to an endpoint still in the chain, yet was not
// translated by affinityHit, found that endpoint at its connection limit.
// The anonymous set (the chain's endpoints, as in affinityHit) is the
// lookup at affinityHitAnonIdx.
func affinityFull(f *family, set, anonSet string) []expr.Any {
	return []expr.Any{
		loadAddr(f, f.saddrOffset, f.regAffinityKey),
		&expr.Lookup{SourceRegister: f.regAffinityKey, DestRegister: reg32_0, IsDestRegSet: true, SetName: set},
		&expr.Lookup{SourceRegister: reg32_0, SetName: anonSet},
		rejectTCPReset(),
	}
}

// affinityHitAnonIdx is the index of the anonymous set lookup in
// affinityHit's expressions.
const affinityHitAnonIdx = 2

// affinityPick: "dnat to numgen random mod N map @anon", recording the
// choice for the client: any entry the client has (one pointing to an
// endpoint that went away) is deleted, then the new one added with the
// timeout. The anonymous map is the lookup at index 2.
// With a connection limit the new endpoint's count is checked before the
// client's entry changes: over the limit the rule stops (the client keeps
// no entry for an endpoint it never reached) and the chain's last rule
// rejects.
func affinityPick(f *family, n uint32, anon, set string, timeout time.Duration, limit connLimit) []expr.Any {
	slots := (f.addrLen + 3) / 4
	return concat(
		one(loadAddr(f, f.saddrOffset, f.regAffinityKey),
			&expr.Numgen{Register: reg1, Modulus: n, Type: unix.NFT_NG_RANDOM},
			&expr.Lookup{SourceRegister: reg1, DestRegister: reg1, IsDestRegSet: true, SetName: anon}),
		limit.within(reg1),
		// The kernel wants data registers for any operation on a map;
		// delete ignores them.
		one(&expr.Dynset{Operation: nftDynsetOpDelete, SetName: set, SrcRegKey: f.regAffinityKey, SrcRegData: reg32_0},
			&expr.Dynset{Operation: unix.NFT_DYNSET_OP_UPDATE, SetName: set, SrcRegKey: f.regAffinityKey, SrcRegData: reg32_0, Timeout: timeout},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: f.natFamily, RegAddrMin: reg1,
				RegProtoMin: reg32_0 + slots, Specified: true}))
}

const affinityPickAnonIdx = 2

// TCP header fields the reset rules use: the byte whose high nibble is
// the data offset (header length in 32-bit words), the flags byte after
// it, and the checksum.
const (
	tcpDoffOffset  = 12
	tcpFlagsOffset = 13
	tcpCsumOffset  = 16

	tcpFlagSYN = 0x02
	tcpFlagRST = 0x04
	tcpFlagACK = 0x10
)

// matchTCPFlagsAny: "tcp flags & (FLAGS) != 0".
func matchTCPFlagsAny(flags byte) []expr.Any {
	return []expr.Any{
		&expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg1,
			Base: expr.PayloadBaseTransportHeader, Offset: tcpFlagsOffset, Len: 1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 1, Mask: []byte{flags}, Xor: []byte{0}},
		cmp(expr.CmpOpNeq, []byte{0}),
	}
}

// clearCtMark: "ct mark set ct mark & ~BIT".
func clearCtMark(bit uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: reg1, Key: expr.CtKeyMARK},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: native32(^bit), Xor: native32(0)},
		&expr.Ct{Register: reg1, Key: expr.CtKeyMARK, SourceRegister: true},
	}
}

// matchNoTCPPayload: "ip length . @th,96,8 & 0xf0 @anon" (ip6: "ip6
// length"), true when the segment carries no payload: the length field
// counts exactly the headers. The anonymous set (noTCPPayloadSet) lists
// the length each data offset (5..15 words) gives; the lookup is at index
// noTCPPayloadAnonIdx. IPv4 options or IPv6 extension headers make the
// length larger, so such a segment counts as carrying payload.
func matchNoTCPPayload(f *family, anon string) []expr.Any {
	return []expr.Any{
		&expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg32_0,
			Base: expr.PayloadBaseNetworkHeader, Offset: f.lengthOffset, Len: 2},
		&expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg32_0 + 1,
			Base: expr.PayloadBaseTransportHeader, Offset: tcpDoffOffset, Len: 1},
		&expr.Bitwise{SourceRegister: reg32_0 + 1, DestRegister: reg32_0 + 1, Len: 1, Mask: []byte{0xf0}, Xor: []byte{0}},
		&expr.Lookup{SourceRegister: reg32_0, SetName: anon},
	}
}

const noTCPPayloadAnonIdx = 3

// noTCPPayloadSet is the anonymous set of matchNoTCPPayload: length .
// data offset byte (padded to 4 bytes each, as the registers hold them).
func noTCPPayloadSet(f *family, name string) *anonMap {
	s := &anonMap{name: name, keyType: nftables.MustConcatSetType(nftables.TypeInetService, nftables.TypeMark),
		idx: noTCPPayloadAnonIdx}
	for words := uint32(5); words <= 15; words++ {
		key := append(be16(uint16(f.lengthOverhead+4*words)), 0, 0, byte(words<<4), 0, 0, 0)
		s.elems = append(s.elems, nftables.SetElement{Key: key})
	}
	return s
}

// setTCPFlagsRSTACK: "@th,96,16 set (@th,96,16 & 0xff00) ^ 0x0014", i.e.
// tcp flags set rst|ack, data offset kept. The write is 16 bits wide and
// aligned because the kernel adjusts the checksum (at tcpCsumOffset) by
// the difference of the written bytes as a 16-bit word; nft widens its
// flag writes the same way. A packet with CHECKSUM_PARTIAL (its checksum
// still to be computed, e.g. from a local socket) is left to the stack.
func setTCPFlagsRSTACK() []expr.Any {
	return []expr.Any{
		&expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg1,
			Base: expr.PayloadBaseTransportHeader, Offset: tcpDoffOffset, Len: 2},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 2, Mask: []byte{0xff, 0x00}, Xor: []byte{0x00, tcpFlagRST | tcpFlagACK}},
		&expr.Payload{OperationType: expr.PayloadWrite, SourceRegister: reg1,
			Base: expr.PayloadBaseTransportHeader, Offset: tcpDoffOffset, Len: 2,
			CsumType: expr.CsumTypeInet, CsumOffset: tcpCsumOffset},
	}
}
