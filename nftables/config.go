package nftables

import (
	"fmt"
	"net/netip"
	"slices"
)

// defaultMasqueradeBit is kube-proxy's --iptables-masquerade-bit default.
const defaultMasqueradeBit = 14

// DefaultResetMarkBit is the conntrack mark bit that asks for a connection
// reset when Config.ResetMarkBit is nil (0x8000).
const DefaultResetMarkBit = 15

// ResetMarkOff, as Config.ResetMarkBit, leaves the reset rules out.
const ResetMarkOff = -1

// Config is the node-level policy of the nftables dataplane.
type Config struct {
	// MasqueradeBit is the packet mark bit (0..31) that asks nat
	// postrouting to masquerade; nil means 14 (0x4000), as kube-proxy. A
	// pointer because bit 0 is a valid choice. The IPVS dataplane uses the
	// same bit, so both leave the same marks on a node that switches.
	MasqueradeBit *int

	// MasqueradeAll masquerades all Service traffic, including traffic from
	// pods to cluster IPs.
	MasqueradeAll bool

	// ClusterCIDRs are the pod networks. Traffic from them to a cluster IP
	// keeps its source address; traffic from anywhere else is masqueraded.
	// With no ClusterCIDRs (and no MasqueradeAll) cluster-IP traffic is never
	// masqueraded, as kube-proxy's nftables mode without a local-traffic
	// detector. Each family uses its own prefixes.
	ClusterCIDRs []netip.Prefix

	// NodePortAddresses restricts NodePorts to local destination addresses
	// inside these prefixes (--nodeport-addresses); empty means every local
	// address except loopback. A family without a prefix of its own gets no
	// NodePorts, as kube-proxy.
	NodePortAddresses []netip.Prefix

	// ConntrackDropInvalid drops forwarded packets conntrack considers
	// INVALID. Such packets would skip de-NAT and reach the client with a pod
	// address, which resets the connection.
	ConntrackDropInvalid bool

	// ConntrackTCPBeLiberal sets net.netfilter.nf_conntrack_tcp_be_liberal=1,
	// the alternative to dropping: conntrack then accepts out-of-window TCP
	// segments instead of marking them INVALID.
	ConntrackTCPBeLiberal bool

	// ResetMarkBit is the conntrack mark bit (0..31; "ct mark", not the
	// packet mark) that asks the dataplane to reset both ends of a TCP
	// connection it forwards, or that starts or ends on this node: the
	// rebalancer sets it on chosen entries (conntrack.Marker) and the
	// tables turn the connection's next packet into a reset (see the
	// package documentation, "Resetting marked connections"). nil means
	// DefaultResetMarkBit (0x8000), ResetMarkOff leaves the rules out;
	// without marked entries traffic is unaffected. It must differ from
	// MasqueradeBit: where something copies packet marks into conntrack
	// marks (CONNMARK --save-mark, "ct mark set meta mark"), a shared bit
	// would reset every masqueraded connection.
	ResetMarkBit *int
}

// withDefaults validates c and returns a copy with defaults filled in,
// prefixes masked and slices owned by the copy.
func (c Config) withDefaults() (Config, error) {
	if c.MasqueradeBit == nil {
		bit := defaultMasqueradeBit
		c.MasqueradeBit = &bit
	} else {
		bit := *c.MasqueradeBit
		c.MasqueradeBit = &bit
	}
	if bit := *c.MasqueradeBit; bit < 0 || bit > 31 {
		return c, fmt.Errorf("masquerade bit %d out of range 0..31", bit)
	}
	bit := DefaultResetMarkBit
	if c.ResetMarkBit != nil {
		bit = *c.ResetMarkBit
	}
	c.ResetMarkBit = &bit
	switch {
	case bit == ResetMarkOff:
	case bit < 0 || bit > 31:
		return c, fmt.Errorf("reset mark bit %d out of range 0..31 (or %d: off)", bit, ResetMarkOff)
	case bit == *c.MasqueradeBit:
		return c, fmt.Errorf("reset mark bit %d is the masquerade bit", bit)
	}
	var err error
	if c.ClusterCIDRs, err = maskedPrefixes(c.ClusterCIDRs, "cluster CIDR"); err != nil {
		return c, err
	}
	if c.NodePortAddresses, err = maskedPrefixes(c.NodePortAddresses, "nodeport address"); err != nil {
		return c, err
	}
	return c, nil
}

// maskedPrefixes returns ps masked, sorted and without duplicates.
func maskedPrefixes(ps []netip.Prefix, what string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(ps))
	for i, p := range ps {
		if !p.IsValid() {
			return nil, fmt.Errorf("invalid %s #%d", what, i)
		}
		out = append(out, netip.PrefixFrom(p.Addr().Unmap(), p.Bits()).Masked())
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return slices.Compact(out), nil
}

// masqMark is the mark bit as a value.
func (c Config) masqMark() uint32 { return uint32(1) << *c.MasqueradeBit }

// resetMark is the reset bit as a value; only for a Config with defaults
// whose bit is not ResetMarkOff.
func (c Config) resetMark() uint32 { return uint32(1) << *c.ResetMarkBit }

// ResetMark is the conntrack mark value (and mask) that asks for a reset
// (conntrack.Marker.MarkFlows(flows, m, m)); 0 when the rules are off or
// the Config is invalid.
func (c Config) ResetMark() uint32 {
	cfg, err := c.withDefaults()
	if err != nil || *cfg.ResetMarkBit == ResetMarkOff {
		return 0
	}
	return uint32(1) << *cfg.ResetMarkBit
}
