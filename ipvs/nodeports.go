package ipvs

import (
	"net/netip"
	"slices"
)

// NodePortIPs picks the node addresses that get NodePort virtual servers
// from all of the node's addresses (Links.NodeAddresses).
//
//   - IPv6 link-local addresses never qualify (they need a zone; kube-proxy
//     skips them too).
//   - With no prefixes every remaining address qualifies except loopback.
//   - With prefixes an address qualifies when a prefix contains it; loopback
//     only when a prefix explicitly contains it. A 127.0.0.0/8 NodePort only
//     works with net.ipv4.conf.all.route_localnet=1 and SNAT: IPVS refuses to
//     masquerade a loopback source to a remote backend otherwise.
//     (kube-proxy's IPVS mode always drops loopback; its iptables and
//     nftables modes keep it when the prefixes include it.)
func NodePortIPs(nodeAddrs []netip.Addr, prefixes []netip.Prefix) []netip.Addr {
	var out []netip.Addr
	for _, a := range nodeAddrs {
		a = a.Unmap()
		if a.Is6() && a.IsLinkLocalUnicast() {
			continue
		}
		if len(prefixes) == 0 {
			if !a.IsLoopback() {
				out = append(out, a)
			}
			continue
		}
		for _, p := range prefixes {
			if p.Contains(a) {
				out = append(out, a)
				break
			}
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}
