package ipvs

import "net/netip"

// DefaultLinkName is the dummy link holding service addresses.
const DefaultLinkName = "switchyard0"

// Links manages the dummy link that makes service addresses local, and
// reports the node's own addresses. An implementation is bound to one link
// name (and, for the real one, one network namespace).
//
// Like kube-proxy's kube-ipvs0, the dummy link is left DOWN: addresses on a
// down link are still local (the kernel adds them to the local routing
// table), so IPVS sees packets to them in LOCAL_IN, while the node never
// answers ARP/ND for them through that link.
type Links interface {
	// EnsureLink creates the dummy link if it does not exist.
	EnsureLink() error
	// Addresses lists the addresses on the dummy link. A missing link
	// wraps ErrNotFound.
	Addresses() ([]netip.Addr, error)
	// AddAddress adds a host-prefix address (/32, /128) to the dummy link.
	// It wraps ErrExists if present and ErrFamilyUnsupported when the node
	// cannot hold an address of that family.
	AddAddress(a netip.Addr) error
	// DeleteAddress removes an address from the dummy link; ErrNotFound if
	// absent.
	DeleteAddress(a netip.Addr) error
	// NodeAddresses lists the unicast addresses of every other link of the
	// node (loopback included; NodePortIPs filters). An address that is on
	// the dummy link and also on another link is listed
	// (kubernetes#114815).
	NodeAddresses() ([]netip.Addr, error)
	// DeleteLink deletes the dummy link and so every address on it;
	// ErrNotFound if absent.
	DeleteLink() error
}
