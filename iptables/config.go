package iptables

import (
	"fmt"
	"net/netip"
)

// defaultMasqueradeBit is kube-proxy's --iptables-masquerade-bit default.
const defaultMasqueradeBit = 14

// DefaultResetMarkBit is the conntrack mark bit that asks for a connection
// reset when Config.ResetMarkBit is nil (0x8000), the nftables dataplane's
// default too (nftables.DefaultResetMarkBit).
const DefaultResetMarkBit = 15

// ResetMarkOff, as Config.ResetMarkBit, leaves the reset rules out.
const ResetMarkOff = -1

// Config is the node-level policy for masquerading service traffic, for
// one IP family: a dual-stack node runs one Proxier per family (as
// kube-proxy's IPVS mode runs one proxier per family), each with its own
// Tables (iptables or ip6tables) and both on the same IPSet.
type Config struct {
	// Family is the IP family this Proxier programs: FamilyINet (the
	// default when empty) or FamilyINet6. It selects the addresses taken
	// from the model, the set names and families (see setName) and the
	// loopback exemption; the Tables must be of the same family.
	Family Family

	// MasqueradeBit is the fwmark bit (0..31) marking packets for SNAT; nil
	// means the default, 14 (0x4000), as kube-proxy. A pointer because bit
	// 0 is a valid choice. It must not collide with bits other software on
	// the node uses.
	MasqueradeBit *int

	// MasqueradeAll masquerades all traffic to cluster IPs. Otherwise only
	// traffic from outside ClusterCIDRs is, and with no ClusterCIDRs only
	// node-originated traffic whose source is itself a cluster IP (the
	// kube-proxy fallback).
	MasqueradeAll bool

	// ClusterCIDRs are the pod networks; traffic from them to a cluster IP
	// keeps its source address. Only the prefixes of Family are used, so
	// both families' Proxiers may be given the whole dual-stack list.
	ClusterCIDRs []netip.Prefix

	// ConntrackDropInvalid drops forwarded packets conntrack considers
	// INVALID (kube-proxy's --conntrack-drop-invalid behaviour): such
	// packets would otherwise skip de-NAT and reach the client with a pod
	// address, which resets the connection.
	ConntrackDropInvalid bool

	// ConntrackTCPBeLiberal sets net.netfilter.nf_conntrack_tcp_be_liberal=1,
	// the alternative to dropping INVALID packets: conntrack then accepts
	// out-of-window TCP segments instead of marking them INVALID.
	ConntrackTCPBeLiberal bool

	// ResetMarkBit is the conntrack mark bit (0..31; the connection's mark,
	// "-m connmark", not the packet's fwmark) that asks the dataplane to
	// reset a TCP connection it forwards, or that starts or ends on this
	// node: the rebalancer sets it on chosen entries
	// (conntrack.Netlink.MarkFlows with ResetMark) and the filter chains
	// turn the connection's next packet, from either end, into a reset to
	// its sender (see the package documentation, "Resetting marked
	// connections"). nil means DefaultResetMarkBit (0x8000), ResetMarkOff
	// leaves the rules out; without marked entries traffic is unaffected.
	// It must differ from MasqueradeBit, as in the nftables dataplane: the
	// two live in different marks, but where something copies packet marks
	// into conntrack marks (CONNMARK --save-mark) a shared bit would reset
	// every masqueraded connection.
	ResetMarkBit *int

	// RandomFully adds --random-fully to MASQUERADE (fully randomized
	// source ports avoid SNAT port collisions; iptables >= 1.6.2, kernel >=
	// 3.14). NewProxier sets it from Tables.HasRandomFully; Desired only
	// reads it.
	RandomFully bool
}

func (c Config) withDefaults() Config {
	if c.Family == "" {
		c.Family = FamilyINet
	}
	if c.MasqueradeBit == nil {
		bit := defaultMasqueradeBit
		c.MasqueradeBit = &bit
	}
	bit := DefaultResetMarkBit
	if c.ResetMarkBit != nil {
		bit = *c.ResetMarkBit
	}
	c.ResetMarkBit = &bit // the caller's variable may change later

	return c
}

func (c Config) validate() error {
	c = c.withDefaults()
	if c.Family != FamilyINet && c.Family != FamilyINet6 {
		return fmt.Errorf("invalid family %q, want %q or %q", c.Family, FamilyINet, FamilyINet6)
	}
	if bit := *c.MasqueradeBit; bit < 0 || bit > 31 {
		return fmt.Errorf("masquerade bit %d out of range 0..31", bit)
	}
	switch bit := *c.ResetMarkBit; {
	case bit == ResetMarkOff:
	case bit < 0 || bit > 31:
		return fmt.Errorf("reset mark bit %d out of range 0..31 (or %d: off)", bit, ResetMarkOff)
	case bit == *c.MasqueradeBit:
		return fmt.Errorf("reset mark bit %d is the masquerade bit", bit)
	}
	for _, p := range c.ClusterCIDRs {
		if !p.IsValid() {
			return fmt.Errorf("invalid cluster CIDR %v", p)
		}
	}
	return nil
}

// masqMark is the mark/mask pair as `iptables -S` prints it: "0x4000/0x4000".
func (c Config) masqMark() string {
	bit := uint32(1) << *c.withDefaults().MasqueradeBit
	return fmt.Sprintf("%#x/%#x", bit, bit)
}

// clearMasqMark zeroes the bit, as `iptables -S` prints it: "0x0/0x4000".
func (c Config) clearMasqMark() string {
	bit := uint32(1) << *c.withDefaults().MasqueradeBit
	return fmt.Sprintf("0x0/%#x", bit)
}

// ResetMark is the conntrack mark value (and mask) that asks for a reset
// (conntrack.Netlink.MarkFlows(flows, m, m)); 0 when the rules are off or
// the Config is invalid.
func (c Config) ResetMark() uint32 {
	if c.validate() != nil {
		return 0
	}
	bit := *c.withDefaults().ResetMarkBit
	if bit == ResetMarkOff {
		return 0
	}
	return uint32(1) << bit
}

// resetMark is the reset bit as `iptables -S` prints a connmark match:
// "0x8000/0x8000". Only for a Config whose bit is not ResetMarkOff.
func (c Config) resetMark() string {
	bit := uint32(1) << *c.withDefaults().ResetMarkBit
	return fmt.Sprintf("%#x/%#x", bit, bit)
}

// clusterCIDRs returns the cluster CIDRs of a family, masked, without
// duplicates.
func (c Config) clusterCIDRs(fam Family) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range c.ClusterCIDRs {
		p = p.Masked()
		if p.Addr().Is4() == (fam == FamilyINet) && !containsPrefix(out, p) {
			out = append(out, p)
		}
	}
	return out
}

func containsPrefix(ps []netip.Prefix, p netip.Prefix) bool {
	for _, q := range ps {
		if q == p {
			return true
		}
	}
	return false
}
