package hostport

import (
	"net/netip"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// TableName is the table hostport owns in the ip and ip6 families ("ip
// switchyard-hostport", "ip6 switchyard-hostport"). Nothing outside them is
// ever touched, and nothing else touches them.
const TableName = "switchyard-hostport"

// family holds what differs between the ip and ip6 tables.
type family struct {
	name      string // "ip" or "ip6", the nft family keyword
	table     nftables.TableFamily
	natFamily uint32 // NFPROTO_* for the nat expression
	addrType  nftables.SetDatatype
	addrLen   uint32
	// Offsets of the source and destination addresses in the network
	// header.
	saddrOffset, daddrOffset uint32
	loopback                 netip.Prefix
	ipv6                     bool
}

// ipv4 and ipv6 are never modified.
var (
	ipv4 = &family{
		name: "ip", table: nftables.TableFamilyIPv4, natFamily: unix.NFPROTO_IPV4,
		addrType: nftables.TypeIPAddr, addrLen: 4, saddrOffset: 12, daddrOffset: 16,
		loopback: netip.MustParsePrefix("127.0.0.0/8"),
	}
	ipv6 = &family{
		name: "ip6", table: nftables.TableFamilyIPv6, natFamily: unix.NFPROTO_IPV6,
		addrType: nftables.TypeIP6Addr, addrLen: 16, saddrOffset: 8, daddrOffset: 24,
		loopback: netip.MustParsePrefix("::1/128"), ipv6: true,
	}
	allFamilies = []*family{ipv4, ipv6}
)

// slots is the number of 32-bit registers an address takes.
func (f *family) slots() uint32 { return (f.addrLen + 3) / 4 }

func (f *family) tableRef() *nftables.Table {
	return &nftables.Table{Name: TableName, Family: f.table}
}
