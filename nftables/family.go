package nftables

import (
	"net/netip"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// family holds what differs between the ip and ip6 tables; everything else
// (layout, rules, sync) is shared code parameterized by it.
type family struct {
	name      string // "ip": the nft family keyword, also used in dumps
	table     nftables.TableFamily
	natFamily uint32 // NFPROTO_* for the nat expression
	addrType  nftables.SetDatatype
	addrLen   uint32
	// Offsets of the source and destination addresses in the network
	// header.
	saddrOffset, daddrOffset uint32
	loopback                 netip.Prefix
	// icmpPortUnreachable is the family's ICMP code for "port
	// unreachable" (ICMP 3, ICMPv6 4), the code of its reject.
	icmpPortUnreachable uint8
	// regAffinityKey holds the client address in the session affinity
	// rules, clear of the endpoint (address . port) they build from
	// NFT_REG32_00: 8 bytes for IPv4, 20 for IPv6.
	regAffinityKey uint32
	// lengthOffset is where the header's 16-bit length field is ("ip
	// length": the whole packet; "ip6 length": what follows the fixed
	// header); lengthOverhead is what it counts besides the transport
	// header and payload (the 20-byte IPv4 header without options).
	lengthOffset, lengthOverhead uint32
}

// ipv4 is never modified.
var ipv4 = &family{
	name:        "ip",
	table:       nftables.TableFamilyIPv4,
	natFamily:   unix.NFPROTO_IPV4,
	addrType:    nftables.TypeIPAddr,
	addrLen:     4,
	saddrOffset: 12,
	daddrOffset: 16,
	loopback:    netip.MustParsePrefix("127.0.0.0/8"),

	icmpPortUnreachable: 3, // ICMP_PORT_UNREACH
	regAffinityKey:      unix.NFT_REG32_02,
	lengthOffset:        2,
	lengthOverhead:      20,
}

// ipv6 is never modified.
var ipv6 = &family{
	name:        "ip6",
	table:       nftables.TableFamilyIPv6,
	natFamily:   unix.NFPROTO_IPV6,
	addrType:    nftables.TypeIP6Addr,
	addrLen:     16,
	saddrOffset: 8,
	daddrOffset: 24,
	loopback:    netip.MustParsePrefix("::1/128"),

	icmpPortUnreachable: 4, // ICMPV6_PORT_UNREACH
	// The endpoint takes NFT_REG32_00..04; NFT_REG32_08 starts NFT_REG_3.
	regAffinityKey: unix.NFT_REG32_08,
	lengthOffset:   4,
}

// allFamilies are the families switchyard programs, IPv4 first: one table
// "switchyard" in each (kube-proxy's nftables mode also uses a table per
// family).
var allFamilies = []*family{ipv4, ipv6}

// addr returns a as this family's address, or false when a belongs to the
// other family.
func (f *family) addr(a netip.Addr) (netip.Addr, bool) {
	a = a.Unmap()
	if !a.IsValid() || a.Is4() != (f.addrLen == 4) {
		return netip.Addr{}, false
	}
	return a, true
}

// prefixes returns the prefixes of this family.
func (f *family) prefixes(ps []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if a := p.Addr(); a.Is4In6() {
			// An IPv4-mapped prefix is the IPv4 prefix it covers; kept
			// as is, its bit count would overrun a 4-byte address.
			if p.Bits() < 96 {
				continue
			}
			p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		}
		if _, ok := f.addr(p.Addr()); ok {
			out = append(out, p)
		}
	}
	return out
}

// tableRef is the table object the library needs on every call.
func (f *family) tableRef() *nftables.Table {
	return &nftables.Table{Name: tableName, Family: f.table}
}
