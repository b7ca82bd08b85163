package iptables

import "strings"

// ownedPrefix starts the name of every chain this package owns and of every
// IPv4 set; ownedPrefix6 starts IPv6 set names. Cleanup and stale-object
// removal only ever touch names with these prefixes.
//
// ipset names are per network namespace, not per family, so the IPv6 sets
// need names of their own. kube-proxy inserts "6-" after its prefix
// (KUBE-6-CLUSTER-IP); we use SWITCHYARD6- instead, a prefix disjoint from
// SWITCHYARD-: each family's Proxier owns exactly the sets starting with its
// prefix (ownsSet), so neither ever destroys, as stale, a set the other
// family's Proxier uses. Chains keep the same names in both families:
// iptables and ip6tables have separate tables.
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
	TableMangle = "mangle"

	builtinPrerouting  = "PREROUTING"
	builtinInput       = "INPUT"
	builtinOutput      = "OUTPUT"
	builtinPostrouting = "POSTROUTING"
	builtinForward     = "FORWARD"
)

// builtinChains returns the built-in chains of a table used here, in the
// order Cleanup scans them for our hook rules.
func builtinChains(table string) []string {
	switch table {
	case TableNAT:
		return []string{builtinPrerouting, builtinInput, builtinOutput, builtinPostrouting}
	case TableFilter:
		return []string{builtinInput, builtinForward, builtinOutput}
	case TableMangle:
		return []string{builtinPrerouting, builtinInput, builtinForward, builtinOutput, builtinPostrouting}
	}
	return nil
}

// tableNames lists the tables used, in apply order.
func tableNames() []string { return []string{TableNAT, TableFilter, TableMangle} }

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
	// chainFirewall is hooked from filter INPUT and mangle OUTPUT and
	// sends load balancer traffic of Services with
	// loadBalancerSourceRanges to chainSourceRanges (kube-proxy's
	// KUBE-PROXY-FIREWALL and KUBE-SOURCE-RANGES-FIREWALL; the latter's
	// name with our prefix would exceed XT_EXTENSION_MAXNAMELEN).
	chainFirewall     = "SWITCHYARD-PROXY-FIREWALL"
	chainSourceRanges = "SWITCHYARD-SOURCE-RANGES-FW"
	// chainNoLocalEndpoint (filter only, from chainFirewall) drops new
	// connections from outside to the external frontends of
	// externalTrafficPolicy Local Services without a local endpoint; pods
	// and the node pass (kube-proxy's "short circuit").
	chainNoLocalEndpoint = "SWITCHYARD-NO-LOCAL-ENDPOINT"
	// chainResetMarked (filter only, hooked first from INPUT, FORWARD and
	// OUTPUT) resets TCP connections whose conntrack entry carries
	// Config.ResetMarkBit (see doc.go, "Resetting marked connections").
	chainResetMarked = "SWITCHYARD-RESET-MARKED"
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
	// The loadBalancerSourceRanges firewall (kube-proxy's
	// KUBE-LOAD-BALANCER-FW, -SOURCE-CIDR and -SOURCE-IP). With our prefix
	// kube-proxy's SOURCE-CIDR and SOURCE-IP names exceed IPSET_MAXNAMELEN
	// in both families (36 and 34 characters for IPv4), so those two say
	// LB instead of LOAD-BALANCER, in both families alike; the FW set keeps
	// kube-proxy's name, which fits (SWITCHYARD6-LOAD-BALANCER-FW: 28).
	setLoadBalancerFW         = "SWITCHYARD-LOAD-BALANCER-FW"
	setLoadBalancerSourceCIDR = "SWITCHYARD-LB-SOURCE-CIDR"
	setLoadBalancerSourceIP   = "SWITCHYARD-LB-SOURCE-IP"
	// The external frontends of externalTrafficPolicy Local Services that
	// have endpoints, none of them on this node (the nftables dataplane's
	// no-local-endpoint sets): external IPs and load balancer IPs with
	// their port, and NodePorts per protocol (hash:net,port as the other
	// NodePort sets). kube-proxy has no such sets (its IPVS mode lets that
	// traffic through). The NodePort ones say NP so that the IPv6 names
	// fit (SWITCHYARD6-NO-LOCAL-EP-NP-SCTP: 31).
	setNoLocalEndpoint         = "SWITCHYARD-NO-LOCAL-ENDPOINT"
	setNoLocalEndpointNodeTCP  = "SWITCHYARD-NO-LOCAL-EP-NP-TCP"
	setNoLocalEndpointNodeUDP  = "SWITCHYARD-NO-LOCAL-EP-NP-UDP"
	setNoLocalEndpointNodeSCTP = "SWITCHYARD-NO-LOCAL-EP-NP-SCTP"
)

// maxSetNameLen is IPSET_MAXNAMELEN (32) minus the NUL.
const maxSetNameLen = 31

// isOwned reports whether a set or chain name belongs to this package,
// whatever its family.
func isOwned(name string) bool {
	return strings.HasPrefix(name, ownedPrefix) || strings.HasPrefix(name, ownedPrefix6)
}

// setPrefix starts the name of every set of family fam.
func setPrefix(fam Family) string {
	if fam == FamilyINet6 {
		return ownedPrefix6
	}
	return ownedPrefix
}

// ownsSet reports whether set name belongs to the Proxier of family fam.
// The prefixes are disjoint: the IPv4 Proxier never touches IPv6 sets
// (they may be referenced from ip6tables) and the reverse.
func ownsSet(fam Family, name string) bool { return strings.HasPrefix(name, setPrefix(fam)) }

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

// tempSetName names the scratch set used to grow set name of family fam.
// It must be short enough for IPSET_MAXNAMELEN whatever name's length, and
// owned by fam's Proxier, so a temp set left by a crash is destroyed by the
// next full sync or Cleanup of that family.
func tempSetName(fam Family, name string) string {
	// FNV-1a: deterministic, so a leftover from a crash is found and reused.
	h := uint32(2166136261)
	for i := 0; i < len(name); i++ {
		h ^= uint32(name[i])
		h *= 16777619
	}
	const hex = "0123456789abcdef"
	b := []byte(setPrefix(fam) + "TMP-00000000")
	for i := 0; i < 8; i++ {
		b[len(b)-1-i] = hex[h&0xf]
		h >>= 4
	}
	return string(b)
}
