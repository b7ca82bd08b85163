package iptables

import (
	"cmp"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/switchyard/switchyard/dataplane"
)

// IPSet is the part of the kernel's ipset API this package uses. All
// methods act on one network namespace. Errors wrap ErrNotFound, ErrExists
// or ErrInUse where that is what the kernel said.
type IPSet interface {
	// ListNames returns the names of every set in the namespace.
	ListNames() ([]string, error)
	// Get returns a set's header and members; ErrNotFound if it is absent.
	Get(name string) (*Set, error)
	// Create creates an empty set; ErrExists if the name is taken.
	Create(spec SetSpec) error
	// Add adds a member; ErrExists if it is already in the set, ErrNotFound
	// if the set is absent.
	Add(set string, m Member) error
	// Del removes a member; ErrNotFound if the member or the set is absent.
	Del(set string, m Member) error
	// Test reports whether m is in the set; ErrNotFound if the set is
	// absent. As in the kernel, a host address in a network field (of
	// hash:net,port or hash:ip,port,net) matches any member network holding
	// it. It is the cheap way to check that a set exists: Get transfers
	// every member.
	Test(set string, m Member) (bool, error)
	// Swap exchanges the contents (and sizes) of two sets of the same type
	// and family. Rules referencing either name see the other's members
	// from then on: the kernel swaps the sets behind the names atomically.
	Swap(a, b string) error
	// Destroy removes a set; ErrInUse if a rule still references it.
	// Destroying an absent set succeeds: the netlink library sends destroy
	// without NLM_F_EXCL, which the kernel treats like `ipset -exist`.
	Destroy(name string) error
}

// SetType is an ipset type name.
type SetType string

// Only hash types are used. bitmap:port (kube-proxy's NodePort sets) cannot
// be filled through vishvananda/netlink v1.3.1: its add request always
// carries a protocol attribute, which the kernel's bitmap:port refuses
// ("invalid protocol", measured on 6.18).
const (
	HashIPPort    SetType = "hash:ip,port"
	HashIPPortIP  SetType = "hash:ip,port,ip"
	HashIPPortNet SetType = "hash:ip,port,net"
	HashNetPort   SetType = "hash:net,port"
)

// Family is an ipset address family.
type Family string

const (
	FamilyINet  Family = "inet"
	FamilyINet6 Family = "inet6"
)

// SetSpec is what a set is created with.
type SetSpec struct {
	Name   string
	Type   SetType
	Family Family
	// MaxElem is the capacity, fixed at creation: the kernel refuses adds
	// beyond it ("Hash is full").
	MaxElem uint32
}

func (s SetSpec) String() string {
	return fmt.Sprintf("type %s family %s maxelem %d", s.Type, s.Family, s.MaxElem)
}

// sameKind reports whether a set created as s can hold what o describes
// and be swapped with a set created as o: the kernel only swaps sets of the
// same type and family.
func (s SetSpec) sameKind(o SetSpec) bool {
	return s.Type == o.Type && s.Family == o.Family
}

// Set is a set as listed from the kernel.
type Set struct {
	SetSpec
	Members []Member
}

// Member is one element of a set. Which fields are used depends on the set
// type:
//
//	hash:ip,port      Net (full-length prefix), Proto, Port
//	hash:net,port     Net, Proto, Port
//	hash:ip,port,ip   Net (full-length prefix), Proto, Port, IP2
//	hash:ip,port,net  Net (full-length prefix), Proto, Port, Net2
//
// Member is comparable, so it can key maps; String gives ipset's own text
// form, e.g. "10.96.0.10,tcp:80".
type Member struct {
	Net   netip.Prefix
	Proto uint8 // IP protocol number (6 tcp, 17 udp, 132 sctp)
	Port  uint16
	IP2   netip.Addr
	Net2  netip.Prefix
}

// IP protocol numbers used in set members.
const (
	protoTCP  uint8 = dataplane.IPProtoTCP
	protoUDP  uint8 = dataplane.IPProtoUDP
	protoSCTP uint8 = dataplane.IPProtoSCTP
)

// IPPortMember is a hash:ip,port member.
func IPPortMember(ip netip.Addr, proto uint8, port uint16) Member {
	return Member{Net: netip.PrefixFrom(ip, ip.BitLen()), Proto: proto, Port: port}
}

// NetPortMember is a hash:net,port member.
func NetPortMember(net netip.Prefix, proto uint8, port uint16) Member {
	return Member{Net: net.Masked(), Proto: proto, Port: port}
}

// IPPortIPMember is a hash:ip,port,ip member.
func IPPortIPMember(ip netip.Addr, proto uint8, port uint16, ip2 netip.Addr) Member {
	m := IPPortMember(ip, proto, port)
	m.IP2 = ip2
	return m
}

// IPPortNetMember is a hash:ip,port,net member.
func IPPortNetMember(ip netip.Addr, proto uint8, port uint16, net netip.Prefix) Member {
	m := IPPortMember(ip, proto, port)
	m.Net2 = net.Masked()
	return m
}

func (m Member) String() string {
	var b strings.Builder
	b.WriteString(prefixString(m.Net))
	fmt.Fprintf(&b, ",%s:%d", protoName(m.Proto), m.Port)
	if m.IP2.IsValid() {
		b.WriteString("," + m.IP2.String())
	}
	if m.Net2.IsValid() {
		b.WriteString("," + prefixString(m.Net2))
	}
	return b.String()
}

// prefixString prints a prefix as ipset does: a host prefix as its address.
func prefixString(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}

// probeMember returns some member valid for spec, to Test a set's
// existence with (TEST-NET addresses, so normally not a member).
func probeMember(spec SetSpec) Member {
	ip := netip.MustParseAddr("192.0.2.1")
	if spec.Family == FamilyINet6 {
		ip = netip.MustParseAddr("2001:db8::1")
	}
	switch spec.Type {
	case HashIPPortIP:
		return IPPortIPMember(ip, protoTCP, 1, ip)
	case HashIPPortNet:
		return IPPortNetMember(ip, protoTCP, 1, netip.PrefixFrom(ip, ip.BitLen()))
	case HashNetPort:
		return NetPortMember(netip.PrefixFrom(ip, ip.BitLen()), protoTCP, 1)
	}
	return IPPortMember(ip, protoTCP, 1)
}

// compareMembers orders members numerically (address, prefix length,
// protocol, port, second address, second network) for deterministic dumps.
func compareMembers(a, b Member) int {
	if c := a.Net.Addr().Compare(b.Net.Addr()); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Net.Bits(), b.Net.Bits()); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Proto, b.Proto); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Port, b.Port); c != 0 {
		return c
	}
	if c := a.IP2.Compare(b.IP2); c != 0 {
		return c
	}
	if c := a.Net2.Addr().Compare(b.Net2.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Net2.Bits(), b.Net2.Bits())
}

func protoName(p uint8) string {
	switch p {
	case protoTCP:
		return "tcp"
	case protoUDP:
		return "udp"
	case protoSCTP:
		return "sctp"
	}
	return strconv.Itoa(int(p))
}

// protoNumber maps a Service protocol to its IP protocol number.
func protoNumber(p dataplane.Protocol) (uint8, bool) { return p.Number() }

// validMember reports why m cannot be a member of a set created as spec, or
// "" if it can. The fake uses it to refuse what the kernel would refuse.
func validMember(spec SetSpec, m Member) string {
	switch spec.Type {
	case HashIPPort, HashNetPort, HashIPPortIP, HashIPPortNet:
		if !m.Net.IsValid() {
			return "missing address"
		}
		if (spec.Family == FamilyINet) != m.Net.Addr().Is4() {
			return "address family differs from the set's"
		}
		if spec.Type != HashNetPort && !m.Net.IsSingleIP() {
			return "a network is not allowed in " + string(spec.Type)
		}
		if spec.Type == HashNetPort && m.Net.Bits() == 0 {
			// The kernel takes prefix lengths 1..32 (1..128) only.
			return "prefix length 0 is not allowed"
		}
		if m.Proto == 0 {
			return "missing protocol"
		}
		if (spec.Type == HashIPPortIP) != m.IP2.IsValid() {
			return "second address must be set exactly for hash:ip,port,ip"
		}
		if m.IP2.IsValid() && m.IP2.Is4() != m.Net.Addr().Is4() {
			return "second address family differs"
		}
		if (spec.Type == HashIPPortNet) != m.Net2.IsValid() {
			return "second network must be set exactly for hash:ip,port,net"
		}
		if m.Net2.IsValid() {
			if m.Net2.Addr().Is4() != m.Net.Addr().Is4() {
				return "second network family differs"
			}
			if m.Net2.Bits() == 0 {
				// As for hash:net,port: 1..32 (1..128) only.
				return "prefix length 0 is not allowed"
			}
		}
		return ""
	}
	return "unknown set type " + string(spec.Type)
}
