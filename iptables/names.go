package iptables

import "strings"

// ownedPrefix starts the name of every set and chain this package owns;
// ownedPrefix6 starts IPv6 set names (ipset names are per network
// namespace, not per family). Cleanup and stale-object removal only ever
// touch names with these prefixes.
const (
	ownedPrefix  = "SWITCHYARD-"
	ownedPrefix6 = "SWITCHYARD6-"
)

// hookCommentPrefix starts the comment of every rule this package puts in a
// built-in chain; together with a jump to a SWITCHYARD- chain it identifies
// our hook rules among everybody else's.
const hookCommentPrefix = "switchyard "

// Tables and built-in chains used.
const (
	TableNAT    = "nat"
	TableFilter = "filter"

	builtinPrerouting  = "PREROUTING"
	builtinOutput      = "OUTPUT"
	builtinPostrouting = "POSTROUTING"
	builtinForward     = "FORWARD"
)

// builtinChains returns the built-in chains of a table used here, in the
// order Cleanup scans them for our hook rules.
func builtinChains(table string) []string {
	switch table {
	case TableNAT:
		return []string{builtinPrerouting, "INPUT", builtinOutput, builtinPostrouting}
	case TableFilter:
		return []string{"INPUT", builtinForward, builtinOutput}
	}
	return nil
}

// tableNames lists the tables used, in apply order.
func tableNames() []string { return []string{TableNAT, TableFilter} }

// Chains owned by this package.
const (
	chainServices     = "SWITCHYARD-SERVICES"
	chainPostrouting  = "SWITCHYARD-POSTROUTING"
	chainMarkMasq     = "SWITCHYARD-MARK-MASQ"
	chainClusterIP    = "SWITCHYARD-CLUSTER-IP"
	chainNodePort     = "SWITCHYARD-NODE-PORT"
	chainLoadBalancer = "SWITCHYARD-LOAD-BALANCER"
	chainExternalIP   = "SWITCHYARD-EXTERNAL-IP"
	chainForward      = "SWITCHYARD-FORWARD"
)

// Sets owned by this package, by their IPv4 names (see setName for IPv6).
// IPSET_MAXNAMELEN is 32 including the terminating NUL, so names have at
// most 31 characters.
const (
	setClusterIP         = "SWITCHYARD-CLUSTER-IP"
	setLoopBack          = "SWITCHYARD-LOOP-BACK"
	setExternalIP        = "SWITCHYARD-EXTERNAL-IP"
	setExternalIPLocal   = "SWITCHYARD-EXTERNAL-IP-LOCAL"
	setLoadBalancer      = "SWITCHYARD-LOAD-BALANCER"
	setLoadBalancerLocal = "SWITCHYARD-LOAD-BALANCER-LOCAL"
	setNodePortTCP       = "SWITCHYARD-NODE-PORT-TCP"
	setNodePortUDP       = "SWITCHYARD-NODE-PORT-UDP"
	setNodePortSCTP      = "SWITCHYARD-NODE-PORT-SCTP"
	setNodePortLocalTCP  = "SWITCHYARD-NODE-PORT-LOCAL-TCP"
	setNodePortLocalUDP  = "SWITCHYARD-NODE-PORT-LOCAL-UDP"
	setNodePortLocalSCTP = "SWITCHYARD-NODE-PORT-LOCAL-SCTP"
)

// maxSetNameLen is IPSET_MAXNAMELEN (32) minus the NUL.
const maxSetNameLen = 31

// isOwned reports whether a set or chain name belongs to this package.
func isOwned(name string) bool {
	return strings.HasPrefix(name, ownedPrefix) || strings.HasPrefix(name, ownedPrefix6)
}

// setName returns the name in family fam of the set whose IPv4 name is
// base: unchanged for IPv4, SWITCHYARD6-... for IPv6, with LOCAL shortened
// where the name would not fit IPSET_MAXNAMELEN.
func setName(fam Family, base string) string {
	if fam != FamilyINet6 {
		return base
	}
	name := ownedPrefix6 + strings.TrimPrefix(base, ownedPrefix)
	if len(name) > maxSetNameLen {
		name = strings.Replace(name, "-LOCAL-", "-LCL-", 1)
	}
	return name
}

// tempSetName names the scratch set used to grow set name. It must be short
// enough for IPSET_MAXNAMELEN whatever name's length, and owned, so a temp
// set left by a crash is destroyed by the next full sync or Cleanup.
func tempSetName(name string) string {
	// FNV-1a: deterministic, so a leftover from a crash is found and reused.
	h := uint32(2166136261)
	for i := 0; i < len(name); i++ {
		h ^= uint32(name[i])
		h *= 16777619
	}
	const hex = "0123456789abcdef"
	b := []byte(ownedPrefix + "TMP-00000000")
	for i := 0; i < 8; i++ {
		b[len(b)-1-i] = hex[h&0xf]
		h >>= 4
	}
	return string(b)
}
