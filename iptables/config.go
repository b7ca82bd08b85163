package iptables

import (
	"fmt"
	"net/netip"
)

// defaultMasqueradeBit is kube-proxy's --iptables-masquerade-bit default.
const defaultMasqueradeBit = 14

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
