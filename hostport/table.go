package hostport

import (
	"encoding/binary"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/switchyard/switchyard/dataplane"
)

// The table of each family (the same layout in ip and ip6):
//
//	table ip switchyard-hostport {
//		map hostip-ports   { ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service }
//		map wildcard-ports { inet_proto . inet_service : ipv4_addr . inet_service }
//		set hairpin        { ipv4_addr . ipv4_addr . inet_proto . inet_service }
//		chain prerouting  { type nat hook prerouting priority -110; fib daddr type local jump hostports }
//		chain output      { type nat hook output priority -110; fib daddr type local jump hostports }
//		chain hostports {
//			dnat ip to ip daddr . meta l4proto . th dport map @hostip-ports
//			ip daddr != 127.0.0.0/8 dnat ip to meta l4proto . th dport map @wildcard-ports
//		}
//		chain postrouting { type nat hook postrouting priority 100;
//			ct status dnat ip saddr . ip daddr . meta l4proto . th dport @hairpin masquerade }
//	}
//
// Only the map and set elements depend on the Pods.
const (
	chainPrerouting  = "prerouting"
	chainOutput      = "output"
	chainPostrouting = "postrouting"
	chainHostPorts   = "hostports"

	// mapHostIP: hostPorts with a hostIP.
	mapHostIP = "hostip-ports"
	// mapWildcard: hostPorts on every local address of the family.
	mapWildcard = "wildcard-ports"
	// setHairpin: podIP . podIP . protocol . containerPort of every
	// mapping: after DNAT, a packet with these addresses is a Pod reaching
	// its own hostPort.
	setHairpin = "hairpin"
)

// Priorities. The DNAT chains run before the standard dstnat priority
// (-100), where the nftables dataplane's Service chains are: a hostPort
// wins over a NodePort on the same port, as CNI portmap's chain wins over
// kube-proxy's. Once DNATed to a Pod, a packet is no longer for a local
// address, so neither a NodePort rule (fib daddr type local) nor IPVS (at
// LOCAL_IN) sees it. The masquerade chain uses the standard srcnat
// priority.
const (
	priorityDNAT = nftables.ChainPriority(-110)
	prioritySNAT = nftables.ChainPriority(100)
)

// Registers: single values use NFT_REG_1; concatenations consecutive 32-bit
// registers from NFT_REG32_00, the same storage. Every load zeroes the rest
// of its last 32-bit register, so a 1-byte protocol or a 2-byte port
// matches a key field padded with zeros to 4 bytes.
const (
	reg1    = unix.NFT_REG_1
	reg32_0 = unix.NFT_REG32_00
)

// ctStatusDNAT is IPS_DST_NAT of the conntrack entry's status.
const ctStatusDNAT = 1 << 5

// setSpec defines one named set or map.
type setSpec struct {
	name     string
	keyType  nftables.SetDatatype
	dataType nftables.SetDatatype // maps only
	isMap    bool
	comment  string
}

func (s setSpec) set(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: s.name, KeyType: s.keyType, DataType: s.dataType, IsMap: s.isMap, Comment: s.comment}
}

func setSpecs(f *family) []setSpec {
	target := nftables.MustConcatSetType(f.addrType, nftables.TypeInetService)
	return []setSpec{
		{name: mapHostIP, keyType: nftables.MustConcatSetType(f.addrType, nftables.TypeInetProto, nftables.TypeInetService),
			dataType: target, isMap: true, comment: "hostIP . protocol . hostPort : podIP . containerPort"},
		{name: mapWildcard, keyType: nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService),
			dataType: target, isMap: true, comment: "protocol . hostPort : podIP . containerPort, on every local address"},
		{name: setHairpin, keyType: nftables.MustConcatSetType(f.addrType, f.addrType, nftables.TypeInetProto, nftables.TypeInetService),
			comment: "podIP . podIP . protocol . containerPort: a Pod reaching its own hostPort"},
	}
}

// baseHook attaches a chain to a netfilter hook.
type baseHook struct {
	hook     nftables.ChainHook
	priority nftables.ChainPriority
}

// chainSpec is a chain and its rules.
type chainSpec struct {
	name  string
	hook  *baseHook // nil for the regular chain
	rules []ruleSpec
}

func (c chainSpec) chain(t *nftables.Table) *nftables.Chain {
	ch := &nftables.Chain{Table: t, Name: c.name}
	if c.hook != nil {
		hook, prio, policy := c.hook.hook, c.hook.priority, nftables.ChainPolicyAccept
		ch.Type, ch.Hooknum, ch.Priority, ch.Policy = nftables.ChainTypeNAT, &hook, &prio, &policy
	}
	return ch
}

// ruleSpec is one rule; text is its nft syntax, for dumps.
type ruleSpec struct {
	exprs []expr.Any
	text  string
	key   string // ruleKey(exprs), for comparisons
}

func newRule(f *family, text string, exprs ...expr.Any) ruleSpec {
	return ruleSpec{exprs: exprs, text: text, key: ruleKey(f, exprs)}
}

// skeleton returns the family's chains, the regular chain first (base
// chains jump to it), then the base chains by name.
func skeleton(f *family) []chainSpec {
	slots := f.slots()
	jumpIfLocal := func() ruleSpec {
		return newRule(f, "fib daddr type local jump "+chainHostPorts,
			&expr.Fib{Register: reg1, FlagDADDR: true, ResultADDRTYPE: true},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binary.NativeEndian.AppendUint32(nil, unix.RTN_LOCAL)},
			&expr.Verdict{Kind: expr.VerdictJump, Chain: chainHostPorts})
	}
	loadProtoPort := func(reg uint32) []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg},
			// TCP, UDP and SCTP all keep the destination port at offset 2.
			&expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		}
	}
	loadAddr := func(offset, reg uint32) *expr.Payload {
		return &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: f.addrLen}
	}
	// The map yields address . port: the address from NFT_REG_1, the
	// port from the 32-bit register after the address.
	dnat := func(set string) []expr.Any {
		return []expr.Any{
			&expr.Lookup{SourceRegister: reg32_0, DestRegister: reg1, IsDestRegSet: true, SetName: set},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: f.natFamily, RegAddrMin: reg1, RegProtoMin: reg32_0 + slots, Specified: true},
		}
	}
	notLoopback := []expr.Any{loadAddr(f.daddrOffset, reg1)}
	if bits := f.loopback.Bits(); bits < int(f.addrLen*8) {
		mask := make([]byte, f.addrLen)
		for i := range bits {
			mask[i/8] |= 0x80 >> (i % 8)
		}
		notLoopback = append(notLoopback, &expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: f.addrLen, Mask: mask, Xor: make([]byte, f.addrLen)})
	}
	notLoopback = append(notLoopback, &expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: f.loopback.Addr().AsSlice()})

	byAddr := append(append([]expr.Any{loadAddr(f.daddrOffset, reg32_0)}, loadProtoPort(reg32_0+slots)...), dnat(mapHostIP)...)
	wildcard := append(append(notLoopback, loadProtoPort(reg32_0)...), dnat(mapWildcard)...)
	hairpin := append([]expr.Any{
		&expr.Ct{Register: reg1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: binary.NativeEndian.AppendUint32(nil, ctStatusDNAT), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: make([]byte, 4)},
		loadAddr(f.saddrOffset, reg32_0),
		loadAddr(f.daddrOffset, reg32_0+slots),
	}, loadProtoPort(reg32_0+2*slots)...)
	hairpin = append(hairpin,
		&expr.Lookup{SourceRegister: reg32_0, SetName: setHairpin},
		&expr.Masq{})

	fam := f.name
	return []chainSpec{
		{name: chainHostPorts, rules: []ruleSpec{
			newRule(f, "dnat "+fam+" to "+fam+" daddr . meta l4proto . th dport map @"+mapHostIP, byAddr...),
			newRule(f, fam+" daddr != "+f.loopback.String()+" dnat "+fam+" to meta l4proto . th dport map @"+mapWildcard, wildcard...),
		}},
		{name: chainOutput, hook: &baseHook{*nftables.ChainHookOutput, priorityDNAT}, rules: []ruleSpec{jumpIfLocal()}},
		{name: chainPostrouting, hook: &baseHook{*nftables.ChainHookPostrouting, prioritySNAT}, rules: []ruleSpec{
			newRule(f, "ct status dnat "+fam+" saddr . "+fam+" daddr . meta l4proto . th dport @"+setHairpin+" masquerade", hairpin...),
		}},
		{name: chainPrerouting, hook: &baseHook{*nftables.ChainHookPrerouting, priorityDNAT}, rules: []ruleSpec{jumpIfLocal()}},
	}
}

// entryKey is what a DNAT map element matches: a protocol and port on one
// address, or on every local address (hostIP zero).
type entryKey struct {
	hostIP netip.Addr
	proto  dataplane.Protocol
	port   uint16
}

// entries are the DNAT map elements of one family: claim -> Pod address
// and port.
type entries map[entryKey]netip.AddrPort

// entriesOf returns the family's entries of the mappings (which Desired made
// free of overlaps).
func entriesOf(f *family, ms []Mapping) entries {
	out := entries{}
	for _, m := range ms {
		if m.IPv6() != f.ipv6 {
			continue
		}
		out[entryKey{hostIP: m.HostIP, proto: m.Protocol, port: m.HostPort}] = m.Target()
	}
	return out
}

// elements renders entries as the elements of the family's sets and maps:
// set name -> key bytes -> value bytes ("" in sets).
func (es entries) elements() map[string]map[string]string {
	out := map[string]map[string]string{mapHostIP: {}, mapWildcard: {}, setHairpin: {}}
	for k, v := range es {
		val := string(v.Addr().AsSlice()) + string(port4(v.Port()))
		if k.hostIP.IsValid() {
			out[mapHostIP][string(k.hostIP.AsSlice())+string(proto4(k.proto))+string(port4(k.port))] = val
		} else {
			out[mapWildcard][string(proto4(k.proto))+string(port4(k.port))] = val
		}
		pod := string(v.Addr().AsSlice())
		out[setHairpin][pod+pod+string(proto4(k.proto))+string(port4(v.Port()))] = ""
	}
	return out
}

// decodeEntries reads entries back from the DNAT maps' elements; elements
// that do not decode (not written by hostport) are skipped.
func decodeEntries(f *family, elems map[string]map[string]string) entries {
	out := entries{}
	n := int(f.addrLen)
	for k, v := range elems[mapHostIP] {
		if len(k) != n+8 || len(v) != n+4 {
			continue
		}
		ip, _ := netip.AddrFromSlice([]byte(k[:n]))
		proto, port := decodeProto(k[n:n+4]), decodePort(k[n+4:])
		if proto != "" {
			out[entryKey{hostIP: ip, proto: proto, port: port}] = decodeTarget(v, n)
		}
	}
	for k, v := range elems[mapWildcard] {
		if len(k) != 8 || len(v) != n+4 {
			continue
		}
		if proto := decodeProto(k[:4]); proto != "" {
			out[entryKey{proto: proto, port: decodePort(k[4:])}] = decodeTarget(v, n)
		}
	}
	return out
}

func decodeTarget(v string, n int) netip.AddrPort {
	ip, _ := netip.AddrFromSlice([]byte(v[:n]))
	return netip.AddrPortFrom(ip, decodePort(v[n:]))
}

// proto4 is the protocol number padded to a 32-bit register.
func proto4(p dataplane.Protocol) []byte { return []byte{protoNumber(p), 0, 0, 0} }

// port4 is the port in network order padded to a 32-bit register.
func port4(p uint16) []byte { return []byte{byte(p >> 8), byte(p), 0, 0} }

func decodePort(b string) uint16 { return uint16(b[0])<<8 | uint16(b[1]) }

func decodeProto(b string) dataplane.Protocol {
	if b[1] != 0 || b[2] != 0 || b[3] != 0 {
		return ""
	}
	return protoName(b[0])
}

// sortedKeys returns a map's keys in order, for deterministic batches.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func protoNumber(p dataplane.Protocol) uint8 {
	n, _ := p.Number()
	return n
}

// protoName is "" for a protocol the model does not have.
func protoName(n uint8) dataplane.Protocol {
	p, _ := dataplane.ProtocolFromNumber(n)
	return p
}
