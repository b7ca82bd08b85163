package ipvs

import "net/netip"

// ownership applies the rules in doc.go to one sync's view of the node.
type ownership struct {
	link   map[netip.Addr]bool // addresses on the dummy link
	host   map[netip.Addr]bool // addresses on the node's other links
	hostVS map[Key]bool        // host-address virtual servers from the state file
}

// owns reports whether the virtual server at k is switchyard's.
func (o ownership) owns(k Key) bool {
	return o.hostVS[k] || o.link[k.IP] && !o.host[k.IP]
}

// dependsOnLink reports whether ownership of k comes from its address being
// on the dummy link (so the address must be bound before the virtual server
// is created, and stay while it exists).
func (o ownership) dependsOnLink(k Key) bool { return !o.hostVS[k] && !o.host[k.IP] }

func addrSet(addrs []netip.Addr) map[netip.Addr]bool {
	m := make(map[netip.Addr]bool, len(addrs))
	for _, a := range addrs {
		m[a.Unmap()] = true
	}
	return m
}
