package nftables

import (
	"crypto/sha256"
	"encoding/base32"
	"strconv"
	"strings"

	"github.com/switchyard/switchyard/dataplane"
)

// tableName is the table switchyard owns in every family it programs.
// Nothing outside it is ever touched.
const tableName = "switchyard"

// Fixed chains. Base chains are named type-hook, like kube-proxy's.
const (
	chainNatPrerouting  = "nat-prerouting"
	chainNatOutput      = "nat-output"
	chainNatPostrouting = "nat-postrouting"
	chainFilterInput    = "filter-input"
	chainFilterForward  = "filter-forward"
	chainFilterOutput   = "filter-output"

	// chainServices dispatches destination address, protocol and port
	// through the service maps.
	chainServices = "services"
	// chainMarkMasq sets the masquerade bit.
	chainMarkMasq = "mark-for-masquerade"
	// chainMasqOutsideCluster sets the bit unless the source is in a
	// cluster CIDR; service chains jump to it for cluster-IP traffic.
	chainMasqOutsideCluster = "mark-if-outside-cluster"
	// chainServiceEndpointsCheck and chainNodePortEndpointsCheck send new
	// connections to Services without endpoints to chainReject.
	chainServiceEndpointsCheck  = "service-endpoints-check"
	chainNodePortEndpointsCheck = "nodeport-endpoints-check"
	chainReject                 = "reject-no-endpoints"
	// chainResetMarked turns a packet of a TCP connection whose conntrack
	// entry carries Config.ResetMarkBit into a reset (see doc.go).
	chainResetMarked = "reset-marked"
)

// Named sets and maps.
const (
	mapServiceIPs          = "service-ips"
	mapServiceNodePorts    = "service-nodeports"
	setNoEndpointServices  = "no-endpoint-services"
	setNoEndpointNodePorts = "no-endpoint-nodeports"
	setHairpin             = "hairpin-endpoints"
	// setNoLocalEndpointServices and setNoLocalEndpointNodePorts hold the
	// frontends of Services that have endpoints, but none for this
	// traffic from this node (traffic policy Local without a local
	// endpoint): their new connections are dropped, not rejected, as
	// kube-proxy does, so clients retry instead of failing.
	setNoLocalEndpointServices  = "no-local-endpoint-services"
	setNoLocalEndpointNodePorts = "no-local-endpoint-nodeports"
	// mapFirewallIPs sends load balancer IPs with loadBalancerSourceRanges
	// to their firewall chain, before DNAT.
	mapFirewallIPs = "firewall-ips"
)

// Fixed chains of the firewall (loadBalancerSourceRanges).
const (
	chainFilterPreroutingPreDNAT = "filter-prerouting-pre-dnat"
	chainFilterOutputPreDNAT     = "filter-output-pre-dnat"
	chainFirewallCheck           = "firewall-check"
)

// servicePortChainPrefix starts every per-Service-port chain; fixed chains
// never start with it, so a chain with it that no Service wants is stale.
const servicePortChainPrefix = "svc-"

// servicePortChain names a Service port's chain:
// "svc-HASH-namespace/name/protocol[/port]". The readable part is for
// people; the hash (of the whole ServicePortName) keeps names distinct
// whatever the parts contain. Kubernetes names are at most 63 characters
// each, so the name stays far below the kernel's 255 (NFT_CHAIN_MAXNAMELEN);
// "/" is valid in nft identifiers and cannot occur in the parts.
func servicePortChain(n dataplane.ServicePortName) string {
	return servicePortChainPrefix + chainBase(n)
}

// Per-Service-port chains besides the cluster-policy one (svc-): the
// Local-policy endpoints, the external-traffic dispatch of
// externalTrafficPolicy Local and the loadBalancerSourceRanges firewall.
// affinitySetPrefix starts the session affinity map of a chain ("aff-"
// followed by the chain's name).
const (
	localChainPrefix    = "local-"
	externalChainPrefix = "ext-"
	firewallChainPrefix = "fw-"
	affinitySetPrefix   = "aff-"
	// limitSetPrefix starts the connection-count set of a Service port
	// with switchyard.io/max-connections-per-backend ("limit-N-" and the
	// port's chain base).
	limitSetPrefix = "limit-"
)

func localChain(n dataplane.ServicePortName) string    { return localChainPrefix + chainBase(n) }
func externalChain(n dataplane.ServicePortName) string { return externalChainPrefix + chainBase(n) }
func firewallChain(n dataplane.ServicePortName) string { return firewallChainPrefix + chainBase(n) }
func affinitySet(chain string) string                  { return affinitySetPrefix + chain }

// limitSet names the connection-count set of a Service port limited to
// limit connections per backend. The limit is part of the name because
// every element copies the rule's "ct count" when it is created: a set
// whose rules changed their limit would keep the old one in its elements
// for as long as their backends hold connections, so another limit gets
// another set.
func limitSet(n dataplane.ServicePortName, limit int) string {
	return limitSetPrefix + itoa(limit) + "-" + chainBase(n)
}

// anonSetName names the anonymous endpoint set of a chain's session
// affinity rule (see anonMapName).
func anonSetName(chain string) string { return "__set-" + chain }

// chainBase is "HASH-namespace/name/protocol[/port]".
func chainBase(n dataplane.ServicePortName) string {
	readable := n.Namespace + "/" + n.Name + "/" + strings.ToLower(string(n.Protocol))
	if n.Port != "" {
		readable += "/" + n.Port
	}
	sum := sha256.Sum256([]byte(n.String()))
	return base32.StdEncoding.EncodeToString(sum[:])[:8] + "-" + readable
}

// anonMapName names the anonymous endpoint map of a service chain's DNAT
// rule. The library would otherwise send "__map%d" and let the kernel pick
// the number, which walks every set of the table per allocation (quadratic
// in a cold load of thousands of Services). The name only has to be unique
// among live sets: the previous map of a rewritten chain is released in the
// same transaction, before the new one is created.
func anonMapName(chain string) string { return "__map-" + chain }

// isAnonymousSetName reports whether a set name is one of the anonymous
// sets ("__" is reserved for them by nft).
func isAnonymousSetName(name string) bool { return strings.HasPrefix(name, "__") }

// Protocol numbers as the inet_proto type and meta l4proto know them.
const (
	protoTCP  = dataplane.IPProtoTCP
	protoUDP  = dataplane.IPProtoUDP
	protoSCTP = dataplane.IPProtoSCTP
)

func protoNumber(p dataplane.Protocol) (uint8, bool) { return p.Number() }

func protoName(p uint8) string {
	switch p {
	case protoTCP:
		return "tcp"
	case protoUDP:
		return "udp"
	case protoSCTP:
		return "sctp"
	}
	return "proto-" + strconv.Itoa(int(p))
}

func itoa(i int) string { return strconv.Itoa(i) }
