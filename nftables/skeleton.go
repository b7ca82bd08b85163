package nftables

import (
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// The skeleton is everything in the table that does not depend on Services:
// the named sets and maps, the base chains hooked into netfilter and the
// helper chains. It depends only on Config and the family.

// setSpec defines one named set or map.
type setSpec struct {
	name     string
	keyType  nftables.SetDatatype
	dataType nftables.SetDatatype // maps only
	isMap    bool
	// timeout and dynamic: a map the packet path writes (session
	// affinity), whose elements expire.
	timeout bool
	dynamic bool
	// size bounds the elements the packet path may add (0: the kernel's
	// default).
	size    uint32
	comment string
}

// affinitySpec is the session affinity map of a Service port chain:
// client address -> endpoint address . port, written by the chain's rules
// with a per-element timeout (the Service's affinity timeout, in the rule).
func affinitySpec(f *family, chain string) setSpec {
	return setSpec{name: affinitySet(chain), keyType: f.addrType,
		dataType: nftables.MustConcatSetType(f.addrType, nftables.TypeInetService), isMap: true,
		timeout: true, dynamic: true}
}

// isAffinitySetName reports whether a named set is a session affinity map.
func isAffinitySetName(name string) bool { return strings.HasPrefix(name, affinitySetPrefix) }

// limitSetSize bounds a connection-count set: one element per backend
// that holds connections (elements whose count drops to zero are garbage
// collected by the kernel), so 65535 (nft's default for such sets) is
// far more than any Service's endpoints.
const limitSetSize = 65535

// limitSpec is the connection-count set of a Service port with
// switchyard.io/max-connections-per-backend: backend address . port, each
// element holding a "ct count" of the connections this node sent there
// (see limitRules). The packet path adds the elements; syncs never read or
// write them.
func limitSpec(f *family, name string) setSpec {
	return setSpec{name: name, keyType: nftables.MustConcatSetType(f.addrType, nftables.TypeInetService),
		dynamic: true, size: limitSetSize, comment: "connections per backend"}
}

// isLimitSetName reports whether a named set is a connection-count set.
func isLimitSetName(name string) bool { return strings.HasPrefix(name, limitSetPrefix) }

// portSetSpec returns the spec of a per-Service-port set (session affinity
// or connection count) from its name alone, for readers of the kernel's
// table.
func portSetSpec(f *family, name string) (setSpec, bool) {
	switch {
	case isAffinitySetName(name):
		return affinitySpec(f, strings.TrimPrefix(name, affinitySetPrefix)), true
	case isLimitSetName(name):
		return limitSpec(f, name), true
	}
	return setSpec{}, false
}

func setSpecs(f *family) []setSpec {
	addrProtoPort := nftables.MustConcatSetType(f.addrType, nftables.TypeInetProto, nftables.TypeInetService)
	protoPort := nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService)
	return []setSpec{
		{name: setHairpin, keyType: nftables.MustConcatSetType(f.addrType, f.addrType),
			comment: "endpoint . endpoint: an endpoint reaching itself through a Service"},
		{name: setNoEndpointNodePorts, keyType: protoPort, comment: "NodePorts of Services without endpoints"},
		{name: setNoEndpointServices, keyType: addrProtoPort, comment: "frontends of Services without endpoints"},
		{name: setNoLocalEndpointNodePorts, keyType: protoPort,
			comment: "NodePorts of Services with endpoints, none of them for traffic from outside (Local policy)"},
		{name: setNoLocalEndpointServices, keyType: addrProtoPort,
			comment: "frontends of Services with endpoints, none of them for this traffic (Local policy)"},
		{name: mapFirewallIPs, keyType: addrProtoPort, dataType: nftables.TypeVerdict, isMap: true,
			comment: "load balancer IPs with loadBalancerSourceRanges"},
		{name: mapServiceIPs, keyType: addrProtoPort, dataType: nftables.TypeVerdict, isMap: true,
			comment: "cluster, external and load balancer IPs"},
		{name: mapServiceNodePorts, keyType: protoPort, dataType: nftables.TypeVerdict, isMap: true,
			comment: "NodePorts"},
	}
}

// setKeyLen returns the key length of the family's named sets, for the
// renderer.
func setKeyLen(f *family) func(string) int {
	specs := setSpecs(f)
	return func(name string) int {
		for _, s := range specs {
			if s.name == name {
				return int(s.keyType.Bytes)
			}
		}
		return 0
	}
}

// set returns the library object for the spec.
func (s setSpec) set(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: s.name, KeyType: s.keyType, DataType: s.dataType, IsMap: s.isMap,
		HasTimeout: s.timeout, Dynamic: s.dynamic, Size: s.size, Comment: s.comment}
}

// chainSpec is a chain and its rules.
type chainSpec struct {
	name  string
	hook  *baseHook // nil for regular chains
	rules []rule
}

// baseHook attaches a chain to a netfilter hook.
type baseHook struct {
	typ      nftables.ChainType
	hook     nftables.ChainHook
	priority nftables.ChainPriority
}

func (c chainSpec) chain(t *nftables.Table) *nftables.Chain {
	ch := &nftables.Chain{Table: t, Name: c.name}
	if c.hook != nil {
		hook, prio := c.hook.hook, c.hook.priority
		policy := nftables.ChainPolicyAccept
		ch.Type, ch.Hooknum, ch.Priority, ch.Policy = c.hook.typ, &hook, &prio, &policy
	}
	return ch
}

// Priorities. NAT chains use the standard dstnat/srcnat ones. The filter
// chains run just before the standard filter priority (0), so a new
// connection to a Service without endpoints is rejected by us even when
// another table's filter chain would drop it at 0 (the client then sees
// "connection refused" at once instead of a timeout).
const (
	priorityDstNAT = nftables.ChainPriority(-100)
	prioritySrcNAT = nftables.ChainPriority(100)
	priorityFilter = nftables.ChainPriority(-10)
	// priorityFirewall runs before DNAT (dstnat - 10), as kube-proxy's
	// firewall: the destination is still the load balancer IP.
	priorityFirewall = nftables.ChainPriority(-110)
)

// skeletonChains returns the fixed chains for cfg, sorted by name.
func skeletonChains(cfg Config, f *family) []chainSpec {
	bit := cfg.masqMark()
	r := func(comment string, exprs ...[]expr.Any) rule { return newRule(f, comment, exprs...) }
	base := func(name string, typ nftables.ChainType, hook nftables.ChainHook, prio nftables.ChainPriority, rules ...rule) chainSpec {
		return chainSpec{name: name, hook: &baseHook{typ: typ, hook: hook, priority: prio}, rules: rules}
	}
	ctNew := matchCt(expr.CtKeySTATE, expr.CtStateBitNEW)

	// Connections marked for a reset go to chainResetMarked first, in
	// every filter chain: forwarded ones in both directions, and the ones
	// this node starts (output, then input for replies) or ends.
	var input, forward, output []rule
	resetMarked := resetMarkedRules(cfg, f)
	if cfg.ConntrackDropInvalid {
		forward = append(forward, r("", matchCt(expr.CtKeySTATE, expr.CtStateBitINVALID), one(verdict(expr.VerdictDrop))))
	}
	if resetMarked != nil {
		jumpReset := r("", matchCt(expr.CtKeyMARK, cfg.resetMark()), matchL4Proto(protoTCP), one(jump(chainResetMarked)))
		input, forward, output = append(input, jumpReset), append(forward, jumpReset), append(output, jumpReset)
	}
	input = append(input,
		r("", ctNew, one(jump(chainNodePortEndpointsCheck))),
		r("", ctNew, one(jump(chainServiceEndpointsCheck))))
	forward = append(forward, r("", ctNew, one(jump(chainServiceEndpointsCheck))))
	output = append(output, r("", ctNew, one(jump(chainServiceEndpointsCheck))))

	chains := []chainSpec{
		base(chainNatPrerouting, nftables.ChainTypeNAT, *nftables.ChainHookPrerouting, priorityDstNAT,
			r("", one(jump(chainServices)))),
		base(chainNatOutput, nftables.ChainTypeNAT, *nftables.ChainHookOutput, priorityDstNAT,
			r("", one(jump(chainServices)))),
		base(chainNatPostrouting, nftables.ChainTypeNAT, *nftables.ChainHookPostrouting, prioritySrcNAT,
			// After DNAT picked an endpoint, a packet from that same
			// endpoint is the endpoint reaching itself through a Service.
			// Its reply would stay inside the pod and skip de-NAT unless
			// the source becomes the node.
			r("hairpin", matchCt(expr.CtKeySTATUS, ctStatusDNAT), loadSaddrDaddr(f), one(inSet(setHairpin), masquerade())),
			r("", matchMarkClear(bit), one(verdict(expr.VerdictReturn))),
			// Clear the bit so a packet going through the stack again (a
			// tunnel device, say) is not masqueraded twice.
			r("", setMark(bit, false)),
			r("", one(masquerade()))),
		base(chainFilterInput, nftables.ChainTypeFilter, *nftables.ChainHookInput, priorityFilter, input...),
		base(chainFilterForward, nftables.ChainTypeFilter, *nftables.ChainHookForward, priorityFilter, forward...),
		base(chainFilterOutput, nftables.ChainTypeFilter, *nftables.ChainHookOutput, priorityFilter, output...),
		{name: chainServices, rules: append(
			[]rule{r("", loadDaddrProtoPort(f), one(vmap(mapServiceIPs)))},
			nodePortRules(cfg, f, one(vmap(mapServiceNodePorts)))...)},
		{name: chainMarkMasq, rules: []rule{r("", setMark(bit, true))}},
		{name: chainServiceEndpointsCheck, rules: []rule{
			r("", loadDaddrProtoPort(f), one(inSet(setNoEndpointServices), goTo(chainReject))),
			// Endpoints exist, none for this traffic: drop, the client
			// retries (kube-proxy).
			r("", loadDaddrProtoPort(f), one(inSet(setNoLocalEndpointServices), verdict(expr.VerdictDrop))),
		}},
		{name: chainNodePortEndpointsCheck, rules: append(
			nodePortRules(cfg, f, one(inSet(setNoEndpointNodePorts), goTo(chainReject))),
			nodePortRules(cfg, f, one(inSet(setNoLocalEndpointNodePorts), verdict(expr.VerdictDrop)))...)},
		// loadBalancerSourceRanges, checked before DNAT on every packet
		// to a load balancer IP (kube-proxy's firewall-check).
		base(chainFilterPreroutingPreDNAT, nftables.ChainTypeFilter, *nftables.ChainHookPrerouting, priorityFirewall,
			r("", one(jump(chainFirewallCheck)))),
		base(chainFilterOutputPreDNAT, nftables.ChainTypeFilter, *nftables.ChainHookOutput, priorityFirewall,
			r("", one(jump(chainFirewallCheck)))),
		{name: chainFirewallCheck, rules: []rule{r("", loadDaddrProtoPort(f), one(vmap(mapFirewallIPs)))}},
		{name: chainReject, rules: []rule{
			r("", matchL4Proto(protoTCP), one(rejectTCPReset())),
			r("", one(rejectICMPPortUnreachable(f))),
		}},
	}
	if resetMarked != nil {
		chains = append(chains, chainSpec{name: chainResetMarked, rules: resetMarked})
	}
	if cidrs := f.prefixes(cfg.ClusterCIDRs); len(cidrs) > 0 && !cfg.MasqueradeAll {
		c := chainSpec{name: chainMasqOutsideCluster}
		for _, p := range cidrs {
			c.rules = append(c.rules, r("", matchPrefix(f, f.saddrOffset, expr.CmpOpEq, p), one(verdict(expr.VerdictReturn))))
		}
		c.rules = append(c.rules, r("", setMark(bit, true)))
		chains = append(chains, c)
	}
	sortChains(chains)
	return chains
}

// nodePortRules match NodePort traffic (a local destination, not loopback,
// in a NodePortAddresses prefix if any are configured) and then do
// "meta l4proto . th dport" + tail. kube-proxy fills a set with the node's
// addresses inside the prefixes, which needs watching the node's addresses;
// matching the prefixes themselves after "fib daddr type local" gives the
// same answer without that. The prefixes are a handful of config values,
// so one rule each reads better than an interval set.
func nodePortRules(cfg Config, f *family, tail []expr.Any) []rule {
	notLoopback := matchPrefix(f, f.daddrOffset, expr.CmpOpNeq, f.loopback)
	if len(cfg.NodePortAddresses) == 0 {
		return []rule{newRule(f, "", matchFibDaddrLocal(), notLoopback, loadProtoPort(), tail)}
	}
	var rules []rule
	for _, p := range f.prefixes(cfg.NodePortAddresses) {
		rules = append(rules, newRule(f, "", matchFibDaddrLocal(), notLoopback,
			matchPrefix(f, f.daddrOffset, expr.CmpOpEq, p), loadProtoPort(), tail))
	}
	return rules
}

func sortChains(cs []chainSpec) {
	slices.SortFunc(cs, func(a, b chainSpec) int { return strings.Compare(a.name, b.name) })
}

// resetMarkedRules is the chain that resets a TCP connection whose
// conntrack entry carries the reset bit (nil when Config.ResetMarkBit is
// off), entered with the first packet of the connection, in either
// direction, after the bit was set. The sender of that packet is one end,
// its receiver the other; the packet resets one of them at once and makes
// sure the other's stack hears of it (doc.go, "Resetting marked
// connections"):
//
//   - SYN and RST segments pass untouched: an end's own reset must arrive.
//   - The bit is cleared: the connection is acted on once, whatever
//     happens next, and later packets flow as usual (the reset end's
//     stack answers them with a reset of its own, which conntrack sees,
//     so the entry closes and expires).
//   - A segment without payload (a pure ACK, a keepalive probe) is
//     rejected with a TCP reset to its sender. Its receiver loses only an
//     acknowledgement: if it has data in flight it retransmits it, and
//     the sender's stack, which has no socket any more, answers with a
//     reset.
//   - A segment with payload goes on to its receiver as a reset instead
//     (flags set to RST|ACK, same sequence number, which is the one the
//     receiver expects): the receiver is reset. Its sender got no
//     acknowledgement and retransmits; the receiver's stack answers that
//     with a reset.
//
// Either way the end reset first is the one that would otherwise wait:
// rejecting a data segment would leave its receiver (a server waiting
// for requests, say) open for as long as it stays quiet.
func resetMarkedRules(cfg Config, f *family) []rule {
	if *cfg.ResetMarkBit == ResetMarkOff {
		return nil
	}
	noPayload := newRule(f, "no payload: reset the sender", matchNoTCPPayload(f, anonSetName(chainResetMarked)), one(rejectTCPReset()))
	noPayload.anons = []*anonMap{noTCPPayloadSet(f, anonSetName(chainResetMarked))}
	return []rule{
		newRule(f, "", matchTCPFlagsAny(tcpFlagSYN|tcpFlagRST), one(verdict(expr.VerdictReturn))),
		newRule(f, "", clearCtMark(cfg.resetMark())),
		noPayload,
		newRule(f, "payload: becomes a reset of the receiver", setTCPFlagsRSTACK()),
	}
}
