package iptables

import (
	"slices"
	"strings"
)

// Rule-building helpers. Rules are written in the order `iptables -S`
// prints them (see Rule): address and protocol matches (-s, -d, -p) first,
// then the -m matches in the order given here, then the target.

func comment(text string) []string { return []string{"-m", "comment", "--comment", text} }

func matchSet(set, dirs string) []string { return []string{"-m", "set", "--match-set", set, dirs} }

func jump(target string, opts ...string) []string { return append([]string{"-j", target}, opts...) }

func rule(parts ...[]string) Rule {
	var r Rule
	for _, p := range parts {
		r = append(r, p...)
	}
	return r
}

// buildChains returns the owned chains for cfg in apply order. nonEmpty
// says whether a set has members; rules matching an empty set are left out
// (as kube-proxy does), and so are chains nothing would jump to.
func buildChains(cfg Config, fam Family, nonEmpty func(set string) bool) []DesiredChain {
	n := func(base string) string { return setName(fam, base) }
	var chains []DesiredChain
	mark := DesiredChain{Table: TableNAT, Name: chainMarkMasq, Rules: []Rule{
		rule(comment("mark service traffic for masquerade"), jump("MARK", "--set-xmark", cfg.masqMark())),
	}}
	chains = append(chains, mark)

	// The SERVICES chain sees every packet in PREROUTING and OUTPUT. Its
	// rules only mark (or jump to chains that only mark or return), so
	// whatever follows it in the built-in chain (the IPVS hook, a test's
	// DNAT) still sees every packet.
	services := DesiredChain{Table: TableNAT, Name: chainServices}
	// IPVS does not serve connections from 127.0.0.0/8 (no route_localnet
	// handling), so, as kube-proxy, do not mark them.
	loopback := "127.0.0.0/8"
	if fam == FamilyINet6 {
		loopback = "::1/128"
	}
	services.Rules = append(services.Rules,
		rule([]string{"-s", loopback}, comment("localhost traffic is not proxied"), jump("RETURN")))

	if nonEmpty(n(setClusterIP)) {
		r, sub := clusterIPRules(cfg, fam)
		services.Rules = append(services.Rules, r)
		if sub != nil {
			chains = append(chains, *sub)
		}
	}
	for _, ext := range []struct {
		set, local, chain, what string
	}{
		{n(setExternalIP), n(setExternalIPLocal), chainExternalIP, "external IP"},
		{n(setLoadBalancer), n(setLoadBalancerLocal), chainLoadBalancer, "load balancer IP"},
	} {
		if !nonEmpty(ext.set) {
			continue
		}
		c := DesiredChain{Table: TableNAT, Name: ext.chain}
		if nonEmpty(ext.local) {
			// The node's own traffic is masqueraded whatever the policy
			// (the nftables dataplane's "masquerade local traffic"): its
			// source may be the frontend itself (bound on the IPVS dummy
			// link) or a node address, and without a local endpoint a
			// remote one answers it, through this node only if SNATed.
			c.Rules = append(c.Rules,
				rule(comment(ext.what+" traffic from this node"), srcTypeLocal(), jump(chainMarkMasq)),
				rule(comment(ext.what+" with externalTrafficPolicy Local keeps the client address"),
					matchSet(ext.local, "dst,dst"), jump("RETURN")))
		}
		c.Rules = append(c.Rules, rule(comment(ext.what+" traffic"), jump(chainMarkMasq)))
		chains = append(chains, c)
		services.Rules = append(services.Rules,
			rule(comment(ext.what+" traffic"), matchSet(ext.set, "dst,dst"), jump(ext.chain)))
	}
	if np := nodePortChain(fam, nonEmpty); np != nil {
		chains = append(chains, *np)
		services.Rules = append(services.Rules,
			rule(comment("node port traffic"), []string{"-m", "addrtype", "--dst-type", "LOCAL"}, jump(chainNodePort)))
	}
	chains = append(chains, services, postroutingChain(cfg, fam, nonEmpty))
	if reset := resetMarkedChain(cfg); reset != nil {
		chains = append(chains, *reset)
	}
	chains = append(chains, forwardChain(cfg))
	for _, table := range []string{TableFilter, TableMangle} {
		chains = append(chains, firewallChains(cfg, table, fam, nonEmpty)...)
	}
	return chains
}

// srcTypeLocal matches packets whose source is an address of the node.
func srcTypeLocal() []string { return []string{"-m", "addrtype", "--src-type", "LOCAL"} }

// noLocalEndpointRules are the rules of SWITCHYARD-PROXY-FIREWALL (filter
// only) sending packets to an external frontend without a local endpoint
// (the no-local-endpoint sets) to chainNoLocalEndpoint, and that chain.
// With externalTrafficPolicy Local and no endpoint on this node, the IPVS
// dataplane gives the external virtual servers the Cluster endpoints (as
// kube-proxy's IPVS mode) so that pods and the node reach the Service
// there; other sources would reach a remote endpoint without their
// address kept and get its reply from the wrong address, if at all. So,
// as the nftables dataplane (and kube-proxy's iptables and nftables
// modes), their new connections are dropped (the client retries; a
// rejection would say the Service is gone), while traffic from the
// cluster CIDRs (pods, unmasqueraded: the IPVS dataplane marks no
// externalTrafficPolicy Local traffic but the node's) and from the node
// itself (masqueraded: see the SERVICES chains) passes. Without cluster
// CIDRs pods cannot be told apart and are dropped too, as in the nftables
// dataplane. Established connections (to a local endpoint that became
// unready, draining at weight 0) keep going.
//
// nil, nil when no Service is in that state.
func noLocalEndpointRules(cfg Config, fam Family, nonEmpty func(string) bool) ([]Rule, *DesiredChain) {
	n := func(base string) string { return setName(fam, base) }
	var jumps []Rule
	if nonEmpty(n(setNoLocalEndpoint)) {
		jumps = append(jumps, rule(comment("external IP or load balancer IP without a local endpoint"),
			matchSet(n(setNoLocalEndpoint), "dst,dst"), jump(chainNoLocalEndpoint)))
	}
	for _, p := range []struct{ proto, set string }{
		{"tcp", n(setNoLocalEndpointNodeTCP)},
		{"udp", n(setNoLocalEndpointNodeUDP)},
		{"sctp", n(setNoLocalEndpointNodeSCTP)},
	} {
		// The sets hold the port on every address (see setDefs); INPUT
		// only sees packets to local addresses, as NodePorts are.
		if nonEmpty(p.set) {
			jumps = append(jumps, rule([]string{"-p", p.proto}, comment(strings.ToUpper(p.proto)+" node port without a local endpoint"),
				matchSet(p.set, "dst,dst"), jump(chainNoLocalEndpoint)))
		}
	}
	if len(jumps) == 0 {
		return nil, nil
	}
	c := &DesiredChain{Table: TableFilter, Name: chainNoLocalEndpoint}
	for _, p := range cfg.clusterCIDRs(fam) {
		c.Rules = append(c.Rules, rule([]string{"-s", p.String()}, comment("pod traffic goes to the cluster endpoints"), jump("RETURN")))
	}
	c.Rules = append(c.Rules,
		rule(comment("node traffic goes to the cluster endpoints"), srcTypeLocal(), jump("RETURN")),
		rule(comment("externalTrafficPolicy Local without a local endpoint"),
			[]string{"-m", "conntrack", "--ctstate", "NEW"}, jump("DROP")))
	return jumps, c
}

// firewallChains are the loadBalancerSourceRanges firewall in table, as
// kube-proxy's IPVS mode has it: SWITCHYARD-PROXY-FIREWALL (always there:
// the hooks jump to it) sends packets to a load balancer IP and port of a
// Service with ranges (the FW set) to SWITCHYARD-SOURCE-RANGES-FW, which
// returns for sources inside the ranges (SOURCE-CIDR, matched
// dst,dst,src), for the LB IP itself as source when a node IP is inside
// one (SOURCE-IP), and drops the rest, whether or not the Service has
// endpoints. Only the LB IPs are filtered, never the Service's cluster
// IPs, external IPs or NodePorts.
//
// The same chains go to filter and mangle; see buildHooks for which
// packets each sees. In filter, SWITCHYARD-PROXY-FIREWALL then also drops
// outside traffic to external frontends without a local endpoint (see
// noLocalEndpointRules); mangle, which only sees the node's own traffic,
// has no use for that.
func firewallChains(cfg Config, table string, fam Family, nonEmpty func(string) bool) []DesiredChain {
	n := func(base string) string { return setName(fam, base) }
	fw := DesiredChain{Table: table, Name: chainFirewall}
	var out []DesiredChain
	if nonEmpty(n(setLoadBalancerFW)) {
		ranges := sourceRangesChain(table, fam, nonEmpty)
		out = append(out, ranges)
		fw.Rules = append(fw.Rules, rule(comment("load balancer IP with loadBalancerSourceRanges"),
			matchSet(n(setLoadBalancerFW), "dst,dst"), jump(chainSourceRanges)))
	}
	if table == TableFilter {
		if jumps, c := noLocalEndpointRules(cfg, fam, nonEmpty); c != nil {
			out = append(out, *c)
			fw.Rules = append(fw.Rules, jumps...)
		}
	}
	return append(out, fw)
}

// sourceRangesChain is SWITCHYARD-SOURCE-RANGES-FW in table (see
// firewallChains).
func sourceRangesChain(table string, fam Family, nonEmpty func(string) bool) DesiredChain {
	n := func(base string) string { return setName(fam, base) }
	ranges := DesiredChain{Table: table, Name: chainSourceRanges}
	if nonEmpty(n(setLoadBalancerSourceCIDR)) {
		ranges.Rules = append(ranges.Rules, rule(comment("source inside loadBalancerSourceRanges"),
			matchSet(n(setLoadBalancerSourceCIDR), "dst,dst,src"), jump("RETURN")))
	}
	if nonEmpty(n(setLoadBalancerSourceIP)) {
		ranges.Rules = append(ranges.Rules, rule(comment("load balancer IP as source from this node, a node IP being inside the ranges"),
			matchSet(n(setLoadBalancerSourceIP), "dst,dst,src"), jump("RETURN")))
	}
	ranges.Rules = append(ranges.Rules, rule(comment("source outside loadBalancerSourceRanges"), jump("DROP")))
	return ranges
}

// clusterIPRules returns the SERVICES rule for cluster IPs and, with
// several cluster CIDRs, the chain it jumps to. One rule cannot say "from
// none of these CIDRs" (iptables refuses `!` with several -s), so several
// CIDRs get a chain returning for each.
func clusterIPRules(cfg Config, fam Family) (Rule, *DesiredChain) {
	cidrs := cfg.clusterCIDRs(fam)
	clusterSet := setName(fam, setClusterIP)
	switch {
	case cfg.MasqueradeAll:
		return rule(comment("cluster IP traffic, masquerade all"), matchSet(clusterSet, "dst,dst"), jump(chainMarkMasq)), nil
	case len(cidrs) == 1:
		return rule([]string{"!", "-s", cidrs[0].String()}, comment("cluster IP traffic from outside the cluster CIDR"),
			matchSet(clusterSet, "dst,dst"), jump(chainMarkMasq)), nil
	case len(cidrs) > 1:
		c := &DesiredChain{Table: TableNAT, Name: chainClusterIP}
		for _, p := range cidrs {
			c.Rules = append(c.Rules, rule([]string{"-s", p.String()}, comment("from cluster CIDR "+p.String()), jump("RETURN")))
		}
		c.Rules = append(c.Rules, rule(comment("cluster IP traffic from outside the cluster CIDRs"), jump(chainMarkMasq)))
		return rule(comment("cluster IP traffic"), matchSet(clusterSet, "dst,dst"), jump(chainClusterIP)), c
	default:
		// Without cluster CIDRs, internal and external clients cannot be
		// told apart. As kube-proxy, masquerade at least node-originated
		// connections whose source is a cluster IP (IPVS binds every cluster
		// IP to a dummy interface, so the kernel may pick one as source).
		return rule(comment("node traffic from a cluster IP"), matchSet(clusterSet, "src,dst"), jump(chainMarkMasq)), nil
	}
}

// nodePortChain marks NodePort traffic per protocol, except for Services
// with externalTrafficPolicy Local, which keep the client address unless
// it is the node's own. nil if there are no NodePorts.
func nodePortChain(fam Family, nonEmpty func(string) bool) *DesiredChain {
	n := func(base string) string { return setName(fam, base) }
	c := &DesiredChain{Table: TableNAT, Name: chainNodePort}
	for _, p := range []struct {
		proto, set, local, dirs string
	}{
		{"tcp", n(setNodePortTCP), n(setNodePortLocalTCP), "dst,dst"},
		{"udp", n(setNodePortUDP), n(setNodePortLocalUDP), "dst,dst"},
		{"sctp", n(setNodePortSCTP), n(setNodePortLocalSCTP), "dst,dst"},
	} {
		if !nonEmpty(p.set) {
			continue
		}
		proto := []string{"-p", p.proto}
		upper := strings.ToUpper(p.proto)
		if nonEmpty(p.local) {
			// The node's own traffic is masqueraded whatever the policy
			// (see buildChains).
			c.Rules = append(c.Rules,
				rule(proto, comment(upper+" node port with externalTrafficPolicy Local, from this node"),
					srcTypeLocal(), matchSet(p.local, p.dirs), jump(chainMarkMasq)),
				rule(proto, comment(upper+" node port with externalTrafficPolicy Local keeps the client address"),
					matchSet(p.local, p.dirs), jump("RETURN")))
		}
		c.Rules = append(c.Rules, rule(proto, comment(upper+" node port traffic"), matchSet(p.set, p.dirs), jump(chainMarkMasq)))
	}
	if len(c.Rules) == 0 {
		return nil
	}
	return c
}

// postroutingChain masquerades hairpin traffic and marked traffic.
func postroutingChain(cfg Config, fam Family, nonEmpty func(string) bool) DesiredChain {
	loopSet := setName(fam, setLoopBack)
	masq := jump("MASQUERADE")
	if cfg.RandomFully {
		masq = jump("MASQUERADE", "--random-fully")
	}
	c := DesiredChain{Table: TableNAT, Name: chainPostrouting}
	if nonEmpty(loopSet) {
		// After IPVS picked an endpoint, a packet from that same endpoint
		// (source == destination address, destination port = the
		// endpoint's) is an endpoint reaching itself through a service. Its
		// reply would go straight back inside the pod, bypassing de-NAT,
		// unless the source is rewritten to the node.
		c.Rules = append(c.Rules, rule(comment("hairpin: endpoint reaching itself through a service"),
			matchSet(loopSet, "dst,dst,src"), masq))
	}
	c.Rules = append(c.Rules,
		rule(comment("not marked for masquerade"), []string{"-m", "mark", "!", "--mark", cfg.masqMark()}, jump("RETURN")),
		// Clear the bit so a packet traversing the stack again (e.g.
		// through a tunnel device) is not masqueraded twice.
		rule(comment("clear the masquerade mark"), jump("MARK", "--set-xmark", cfg.clearMasqMark())),
		rule(comment("service traffic requiring SNAT"), masq),
	)
	return c
}

// forwardChain accepts forwarded service traffic even when the FORWARD
// policy is DROP, and optionally drops conntrack-INVALID packets.
func forwardChain(cfg Config) DesiredChain {
	c := DesiredChain{Table: TableFilter, Name: chainForward}
	if cfg.ConntrackDropInvalid {
		c.Rules = append(c.Rules, rule(comment("drop packets conntrack considers invalid"),
			[]string{"-m", "conntrack", "--ctstate", "INVALID"}, jump("DROP")))
	}
	c.Rules = append(c.Rules,
		rule(comment("forward traffic marked for masquerade"), []string{"-m", "mark", "--mark", cfg.masqMark()}, jump("ACCEPT")),
		rule(comment("forward replies and related traffic"), []string{"-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED"}, jump("ACCEPT")),
	)
	return c
}

// resetMarkedChain resets TCP connections whose conntrack entry carries
// the reset bit (nil when Config.ResetMarkBit is off): the packet, whichever
// end sent it, is dropped and its sender gets a TCP reset (REJECT
// --reject-with tcp-reset, which also moves the entry to CLOSE on kernels
// with nf_ct_set_closing: 6.1.81+, 6.3+). The bit stays set, so the other
// end is reset too when it next sends. SYN and RST segments pass: a new
// connection reusing the tuple, and an end's own reset, must get through
// (REJECT would drop a RST without answering it).
func resetMarkedChain(cfg Config) *DesiredChain {
	if *cfg.withDefaults().ResetMarkBit == ResetMarkOff {
		return nil
	}
	return &DesiredChain{Table: TableFilter, Name: chainResetMarked, Rules: []Rule{
		rule([]string{"-p", "tcp"}, comment("reset a connection marked for rebalancing"),
			[]string{"-m", "connmark", "--mark", cfg.resetMark()},
			[]string{"-m", "tcp", "--tcp-flags", "SYN,RST", "NONE"},
			jump("REJECT", "--reject-with", "tcp-reset")),
	}}
}

// buildHooks returns the jumps from built-in chains into ours, the hooks
// of one built-in chain in the order they must come first in it.
//
// The reset of marked connections (resetMarkedChain) comes first in
// filter INPUT, FORWARD and OUTPUT, ahead of everything else of ours (an
// ACCEPT in SWITCHYARD-FORWARD would end the packet's walk) and before
// IPVS sees the packet: a client's packet to a virtual server is
// delivered locally and passes filter INPUT (priority 0) before IPVS
// takes it at LOCAL_IN (priority NF_IP_PRI_NAT_SRC-1); a backend's reply
// crosses filter FORWARD before IPVS de-NATs it (FORWARD, priority 100),
// or filter INPUT for a client on the node; a connection from the node
// itself is scheduled by IPVS at LOCAL_OUT (-98) and still passes filter
// OUTPUT (0), to the real server, with the same conntrack entry.
//
// The loadBalancerSourceRanges firewall needs two hooks, because IPVS
// takes packets to a virtual server at different points depending on
// where they come from:
//
//   - From another host or a pod, a packet to a load balancer IP (bound
//     on the node, on the IPVS dummy link) is delivered locally: filter
//     INPUT (priority 0) sees it before IPVS picks a real server at
//     LOCAL_IN (priority NF_IP_PRI_NAT_SRC-1).
//   - From the node itself, IPVS schedules the connection at LOCAL_OUT
//     (priority NF_IP_PRI_NAT_DST+2 = -98) and sends it on to the real
//     server: it never reaches INPUT, and filter OUTPUT (priority 0) only
//     sees the real server's address. mangle OUTPUT (-150) still sees the
//     load balancer IP. (kube-proxy instead drops, in filter OUTPUT, the
//     node's connections whose source is the LB IP with the xt_ipvs match,
//     one rule per LB IP, when no node IP is inside the ranges; the same
//     chains in mangle give the same verdicts as for any other source.)
//
// The drop of outside traffic to external frontends without a local
// endpoint (noLocalEndpointRules) needs only the filter INPUT hook: other
// hosts' and pods' packets take the first path above, and the node's own
// connections, the only ones IPVS takes at LOCAL_OUT, are let through
// anyway.
//
// No hook in FORWARD (kube-proxy shares one with its iptables mode, whose
// LB IPs are not local): every LB IP in the FW set is bound on the node,
// so packets to it are delivered locally, not forwarded; replies from the
// real servers cross FORWARD with the client as destination and get the
// LB IP as source only after it, from IPVS.
func buildHooks(cfg Config) []Hook {
	hook := func(table, from, to, what string) Hook {
		return Hook{Table: table, Chain: from, Rule: rule(comment(hookCommentPrefix+what), jump(to))}
	}
	hooks := []Hook{
		hook(TableNAT, builtinPrerouting, chainServices, "service portals"),
		hook(TableNAT, builtinOutput, chainServices, "service portals"),
		hook(TableNAT, builtinPostrouting, chainPostrouting, "postrouting rules"),
	}
	if *cfg.withDefaults().ResetMarkBit != ResetMarkOff {
		for _, from := range []string{builtinInput, builtinForward, builtinOutput} {
			hooks = append(hooks, hook(TableFilter, from, chainResetMarked, "reset connections marked for rebalancing"))
		}
	}
	return append(hooks,
		hook(TableFilter, builtinForward, chainForward, "forwarding rules"),
		hook(TableFilter, builtinInput, chainFirewall, "load balancer source ranges"),
		hook(TableMangle, builtinOutput, chainFirewall, "load balancer source ranges, from this node"),
	)
}

// hookGroup is the hooks of one built-in chain, in order.
type hookGroup struct {
	table, chain string
	rules        []Rule
}

// groupHooks groups hooks by built-in chain, in the order each chain
// first appears.
func groupHooks(hooks []Hook) []hookGroup {
	var out []hookGroup
	for _, h := range hooks {
		i := slices.IndexFunc(out, func(g hookGroup) bool { return g.table == h.Table && g.chain == h.Chain })
		if i < 0 {
			out = append(out, hookGroup{table: h.Table, chain: h.Chain})
			i = len(out) - 1
		}
		out[i].rules = append(out[i].rules, h.Rule)
	}
	return out
}

// isOurHook reports whether a rule in a built-in chain is one of ours:
// commented "switchyard ..." and jumping to an owned chain. Rules of other
// software never match, even ones jumping to our chains.
func isOurHook(r Rule) bool {
	return strings.HasPrefix(r.Comment(), hookCommentPrefix) && isOwned(r.Target())
}
