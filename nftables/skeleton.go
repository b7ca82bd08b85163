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
		HasTimeout: s.timeout, Dynamic: s.dynamic, Comment: s.comment}
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

	forward := []rule{}
	if cfg.ConntrackDropInvalid {
		forward = append(forward, r("", matchCt(expr.CtKeySTATE, expr.CtStateBitINVALID), one(verdict(expr.VerdictDrop))))
	}
	forward = append(forward, r("", ctNew, one(jump(chainServiceEndpointsCheck))))

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
		base(chainFilterInput, nftables.ChainTypeFilter, *nftables.ChainHookInput, priorityFilter,
			r("", ctNew, one(jump(chainNodePortEndpointsCheck))),
			r("", ctNew, one(jump(chainServiceEndpointsCheck)))),
		base(chainFilterForward, nftables.ChainTypeFilter, *nftables.ChainHookForward, priorityFilter, forward...),
		base(chainFilterOutput, nftables.ChainTypeFilter, *nftables.ChainHookOutput, priorityFilter,
			r("", ctNew, one(jump(chainServiceEndpointsCheck)))),
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
