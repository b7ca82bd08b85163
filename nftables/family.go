package nftables

import (
	"net/netip"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// family holds what differs between the ip and ip6 tables. Only IPv4 is
// wired today; an ip6 table needs a second value here (addresses 16 bytes
// at offsets 8 and 24, TypeIP6Addr, ::1/128) and a Proxier per family, and
// the renderer must learn the ip6 header offsets.
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
}

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
