package nftables

import (
	"crypto/sha256"
	"encoding/hex"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/switchyard/switchyard/dataplane"
)

// frontend is one key of the service maps: an address, protocol and port,
// or a NodePort (protocol and port, no address).
type frontend struct {
	addr  netip.Addr // invalid for a NodePort
	proto uint8
	port  uint16
}

// nodeInfo is what the desired state needs to know about this node.
type nodeInfo struct {
	name, zone string
	// ips are the node's addresses (dataplane.State.NodeIPs).
	ips []netip.Addr
}

func nodeOf(st *dataplane.State) nodeInfo {
	return nodeInfo{name: st.NodeName, zone: st.NodeZone, ips: st.NodeIPs}
}

func (fr frontend) isNodePort() bool { return !fr.addr.IsValid() }

func (fr frontend) String() string {
	if fr.isNodePort() {
		return "nodeport " + protoName(fr.proto) + " . " + itoa(int(fr.port))
	}
	return fr.addr.String() + " . " + protoName(fr.proto) + " . " + itoa(int(fr.port))
}

// key encodes the frontend as a set key: each field padded to 4 bytes (see
// exprs.go: that is how the concatenated registers look).
func (fr frontend) key() []byte {
	b := make([]byte, 0, 24)
	if !fr.isNodePort() {
		b = append(b, fr.addr.AsSlice()...)
	}
	b = append(b, fr.proto, 0, 0, 0)
	b = append(b, be16(fr.port)...)
	return append(b, 0, 0)
}

// hairpinKey is "endpoint . endpoint" for the hairpin set.
func hairpinKey(a netip.Addr) []byte { return append(a.AsSlice(), a.AsSlice()...) }

// servicePortState is what one Service port puts into the table.
type servicePortState struct {
	name      dataplane.ServicePortName
	frontends []frontend
	// chains are the port's chains, sorted by name: the cluster-policy
	// chain (svc-), the Local-policy chain (local-), the external
	// dispatch of externalTrafficPolicy Local (ext-) and the firewall of
	// loadBalancerSourceRanges (fw-), each only when needed. A port
	// without endpoints has none but maybe a firewall: its frontends go
	// to the no-endpoint sets.
	chains []chainSpec
	// elems are the set and map elements of each frontend.
	elems map[frontend][]element
	// sets are the session affinity maps of the chains and the port's
	// connection-count set (switchyard.io/max-connections-per-backend).
	sets    []setSpec
	hairpin []netip.Addr // endpoints that may be DNATed to
}

// chainRules returns the rules of the port's chain name, and whether the
// port has that chain.
func (ps *servicePortState) chain(name string) (chainSpec, bool) {
	for _, c := range ps.chains {
		if c.name == name {
			return c, true
		}
	}
	return chainSpec{}, false
}

// nodePortsEnabled: with NodePortAddresses set, only families with a prefix
// of their own get NodePorts (kube-proxy's rule).
func nodePortsEnabled(cfg Config, f *family) bool {
	return len(cfg.NodePortAddresses) == 0 || len(f.prefixes(cfg.NodePortAddresses)) > 0
}

// desiredServicePort computes one Service port's objects for family f on
// node nodeName in zone. It returns nil when the port has nothing in this
// family (or an unsupported protocol).
//
// The semantics are kube-proxy's (pkg/proxy/nftables): endpoints come from
// dataplane.CategorizeEndpoints; cluster-IP traffic goes to the Local
// endpoints with internalTrafficPolicy Local, else to the Cluster ones;
// external traffic (external and load balancer IPs, NodePorts) with
// externalTrafficPolicy Local goes through an ext- chain that sends the
// node's own traffic (masqueraded) and pods' traffic (from the cluster
// CIDRs) to the Cluster endpoints — the "short circuit" — and the rest,
// unmasqueraded, to the Local ones. Traffic whose policy leaves no
// endpoint while the Service has some elsewhere is dropped; a Service
// without endpoints at all is rejected.
//
// weights (State.Weights of the port; nil for none) steer new connections
// among the chosen endpoints.
func desiredServicePort(cfg Config, f *family, sp *dataplane.ServicePort, eps []dataplane.Endpoint, weights map[netip.AddrPort]int, node nodeInfo) *servicePortState {
	proto, ok := protoNumber(sp.Name.Protocol)
	if !ok {
		return nil
	}
	ps := &servicePortState{name: sp.Name, elems: map[frontend][]element{}}
	var clusterIP netip.Addr
	var internal, external, lbs []frontend
	for _, a := range sp.ClusterIPs {
		if a, ok := f.addr(a); ok {
			if !clusterIP.IsValid() {
				clusterIP = a
			}
			internal = append(internal, frontend{addr: a, proto: proto, port: sp.Port})
		}
	}
	for _, a := range sp.ExternalIPs {
		if a, ok := f.addr(a); ok {
			external = append(external, frontend{addr: a, proto: proto, port: sp.Port})
		}
	}
	for _, a := range sp.LoadBalancerIPs {
		if a, ok := f.addr(a); ok {
			fr := frontend{addr: a, proto: proto, port: sp.Port}
			external = append(external, fr)
			lbs = append(lbs, fr)
		}
	}
	// As kube-proxy's per-family proxiers (and the IPVS dataplane), a
	// Service has a NodePort in a family only when it has a cluster IP of
	// that family.
	if sp.NodePort != 0 && nodePortsEnabled(cfg, f) && len(internal) > 0 {
		external = append(external, frontend{proto: proto, port: sp.NodePort})
	}
	ps.frontends = append(append(ps.frontends, internal...), external...)
	if len(ps.frontends) == 0 {
		return nil
	}
	slices.SortFunc(ps.frontends, compareFrontends)
	ps.frontends = slices.Compact(ps.frontends)

	var familyEps []dataplane.Endpoint
	for _, e := range eps {
		if _, ok := f.addr(e.Addr.Addr()); ok {
			familyEps = append(familyEps, e)
		}
	}
	sets := dataplane.CategorizeEndpoints(sp, familyEps, node.name, node.zone)

	// switchyard.io/max-connections-per-backend: TCP only. A limit needs
	// connections that end; UDP and SCTP flows would only be counted
	// until their conntrack entries time out, so a limit there would
	// refuse traffic long after it stopped. One set per port, shared by
	// its endpoint chains, so a backend reached through svc- and local-
	// has one count.
	var limit connLimit
	if sp.MaxConnectionsPerBackend > 0 && proto == protoTCP {
		limit = connLimit{set: limitSet(sp.Name, sp.MaxConnectionsPerBackend), limit: sp.MaxConnectionsPerBackend}
	}

	clusterName, localName, extName := servicePortChain(sp.Name), localChain(sp.Name), externalChain(sp.Name)
	hasCluster := len(sets.Cluster) > 0 && sp.UsesClusterEndpoints()
	// The Local-policy chain only when some frontend of this family leads
	// to it (UsesLocalEndpoints looks at every family).
	hasLocal := len(sets.Local) > 0 && (sp.InternalPolicyLocal && len(internal) > 0 || sp.ExternalPolicyLocal && len(external) > 0)
	if hasCluster {
		// External traffic reaches this chain directly (and is
		// masqueraded) only with externalTrafficPolicy Cluster; with
		// Local only the short-circuited traffic of the node (already
		// marked) and of pods does.
		masq := masqueradeRules(cfg, f, clusterIP, len(external) > 0 && !sp.ExternalPolicyLocal)
		ps.addEndpointChain(f, sp, clusterName, masq, dataplane.WeightEndpoints(weights, sets.Cluster), limit)
	}
	if hasLocal {
		var masq []rule
		if sp.InternalPolicyLocal {
			masq = masqueradeRules(cfg, f, clusterIP, false)
		} else if cfg.MasqueradeAll {
			masq = masqueradeRules(cfg, f, netip.Addr{}, false)
		}
		ps.addEndpointChain(f, sp, localName, masq, dataplane.WeightEndpoints(weights, sets.Local), limit)
	}
	if limit.on() && (hasCluster || hasLocal) {
		ps.sets = append(ps.sets, limitSpec(f, limit.set))
	}

	// Where each kind of traffic goes: a chain, or (none) a drop when the
	// Service has endpoints elsewhere, a reject when it has none.
	internalTarget, externalTarget := "", ""
	switch {
	case sp.InternalPolicyLocal && hasLocal:
		internalTarget = localName
	case !sp.InternalPolicyLocal && hasCluster:
		internalTarget = clusterName
	}
	hasExternalEps := false
	switch {
	case len(external) == 0:
	case sp.ExternalPolicyLocal && hasCluster:
		// The ext- chain exists whenever there are endpoints: the node's
		// and pods' own traffic uses the Cluster ones even without a
		// local endpoint.
		hasExternalEps = hasLocal
		externalTarget = extName
		ps.chains = append(ps.chains, chainSpec{name: extName, rules: externalLocalRules(cfg, f, clusterName, localName, hasLocal)})
	case !sp.ExternalPolicyLocal && hasCluster:
		hasExternalEps = true
		externalTarget = clusterName
	}
	noEndpointSet := func(fr frontend) element {
		switch {
		case sets.HasAny && fr.isNodePort():
			return element{set: setNoLocalEndpointNodePorts, key: string(fr.key())}
		case sets.HasAny:
			return element{set: setNoLocalEndpointServices, key: string(fr.key())}
		case fr.isNodePort():
			return element{set: setNoEndpointNodePorts, key: string(fr.key())}
		}
		return element{set: setNoEndpointServices, key: string(fr.key())}
	}
	serviceElem := func(fr frontend, chain string) element {
		if fr.isNodePort() {
			return element{set: mapServiceNodePorts, key: string(fr.key()), chain: chain}
		}
		return element{set: mapServiceIPs, key: string(fr.key()), chain: chain}
	}
	for _, fr := range internal {
		if internalTarget != "" {
			ps.elems[fr] = append(ps.elems[fr], serviceElem(fr, internalTarget))
		} else {
			ps.elems[fr] = append(ps.elems[fr], noEndpointSet(fr))
		}
	}
	for _, fr := range external {
		if externalTarget != "" {
			ps.elems[fr] = append(ps.elems[fr], serviceElem(fr, externalTarget))
		}
		if !hasExternalEps {
			ps.elems[fr] = append(ps.elems[fr], noEndpointSet(fr))
		}
	}

	// loadBalancerSourceRanges: kube-proxy's firewall, whether or not
	// there are endpoints.
	if ranges := f.prefixes(sp.LoadBalancerSourceRanges); len(lbs) > 0 && len(ranges) > 0 {
		fw := firewallChain(sp.Name)
		ps.chains = append(ps.chains, chainSpec{name: fw, rules: firewallRules(f, ranges, lbs, node.ips)})
		for _, fr := range lbs {
			ps.elems[fr] = append(ps.elems[fr], element{set: mapFirewallIPs, key: string(fr.key()), chain: fw})
		}
	}
	for fr := range ps.elems {
		slices.SortFunc(ps.elems[fr], compareElements)
		ps.elems[fr] = slices.Compact(ps.elems[fr])
	}
	sortChains(ps.chains)

	for _, e := range sets.AllReachable {
		if a, ok := f.addr(e.Addr.Addr()); ok {
			ps.hairpin = append(ps.hairpin, a)
		}
	}
	slices.SortFunc(ps.hairpin, netip.Addr.Compare)
	ps.hairpin = slices.Compact(ps.hairpin)
	return ps
}

// addEndpointChain adds a chain choosing among eps: the masquerade rules,
// then with session affinity the client's previous endpoint, then a random
// one by weight. With a connection limit, the endpoint picked is counted
// before the DNAT, and a connection it would take over the limit falls
// through to a final reject (limitRules).
func (ps *servicePortState) addEndpointChain(f *family, sp *dataplane.ServicePort, chain string, masq []rule, weighted []dataplane.WeightedEndpoint, limit connLimit) {
	rules := append([]rule(nil), masq...)
	if sp.SessionAffinityTimeout > 0 {
		spec := affinitySpec(f, chain)
		ps.sets = append(ps.sets, spec)
		rules = append(rules, affinityRules(f, chain, spec.name, sp.SessionAffinityTimeout, weighted, limit)...)
	} else {
		rules = append(rules, dnatRule(f, chain, weighted, limit))
	}
	if limit.on() {
		rules = append(rules, limitRejectRule(f, limit))
	}
	ps.chains = append(ps.chains, chainSpec{name: chain, rules: rules})
}

// limitRejectRule ends an endpoint chain with a connection limit: a
// connection gets here only when the endpoint picked for it already held
// the limit (the DNAT rule stopped at its count), and is refused with a
// TCP reset, so the client fails at once instead of retrying a SYN into
// nothing.
//
// Why the count sits in the NAT chain and not in a filter chain after it:
// the chain knows its Service (a filter chain would have to find it again
// from the conntrack entry's original destination, which for a NodePort
// is any of the node's addresses), runs exactly once per connection (the
// first packet; a loopback connection passes the filter hooks twice), and
// counts in the same rule that translates, so a connection is counted for
// the endpoint it goes to and nowhere else. The kernel accepts reject in
// the nat chains of prerouting and output, the hooks our chains run in.
//
// The endpoint is picked at random first, as without a limit: a
// connection that lands on a full endpoint is refused even when another
// one has room (nftables cannot read a count without adding to it, so it
// cannot try the next one). Clients retry; the IPVS dataplane and the
// socket LB skip full backends instead.
func limitRejectRule(f *family, limit connLimit) rule {
	return newRule(f, "over "+itoa(limit.limit)+" connections per backend", one(rejectTCPReset()))
}

// externalLocalRules is the ext- chain of externalTrafficPolicy Local
// (kube-proxy's external chain): pods' traffic short-circuits to the
// Cluster endpoints unmasqueraded, the node's own traffic is masqueraded
// (its source is the node's address) and short-circuits too, the rest
// goes to the Local endpoints keeping the client's address — or, with none
// here, falls through untranslated to the drop of the filter chains.
func externalLocalRules(cfg Config, f *family, clusterChain, localChain string, hasLocal bool) []rule {
	var rules []rule
	for _, p := range f.prefixes(cfg.ClusterCIDRs) {
		rules = append(rules, newRule(f, "short-circuit pod traffic", matchPrefix(f, f.saddrOffset, expr.CmpOpEq, p), one(goTo(clusterChain))))
	}
	rules = append(rules,
		newRule(f, "masquerade local traffic", matchFibSaddrLocal(), one(jump(chainMarkMasq))),
		newRule(f, "short-circuit local traffic", matchFibSaddrLocal(), one(goTo(clusterChain))))
	if hasLocal {
		rules = append(rules, newRule(f, "", one(goTo(localChain))))
	}
	return rules
}

// firewallRules: sources inside loadBalancerSourceRanges pass; the rest
// is dropped. As kube-proxy ("allowFromNode"), when one of this node's
// addresses lies inside a range, traffic whose source is the load
// balancer IP itself passes too: where the VIP is bound on the node (an IP
// route rule, kube-vip), the node's own requests to it carry the VIP as
// source. The node gets no other exemption: its requests from its own
// address pass only if a range contains that address.
func firewallRules(f *family, ranges []netip.Prefix, lbs []frontend, nodeIPs []netip.Addr) []rule {
	var rules []rule
	allowFromNode := false
	for _, p := range ranges {
		rules = append(rules, newRule(f, "", matchPrefix(f, f.saddrOffset, expr.CmpOpEq, p), one(verdict(expr.VerdictReturn))))
		for _, ip := range nodeIPs {
			if p.Contains(ip.Unmap()) {
				allowFromNode = true
			}
		}
	}
	if allowFromNode {
		var vips []netip.Addr
		for _, fr := range lbs {
			vips = append(vips, fr.addr)
		}
		slices.SortFunc(vips, netip.Addr.Compare)
		for _, vip := range slices.Compact(vips) {
			rules = append(rules, newRule(f, "load balancer IP from this node", matchAddr(f, f.saddrOffset, expr.CmpOpEq, vip), one(verdict(expr.VerdictReturn))))
		}
	}
	return append(rules, newRule(f, "", one(verdict(expr.VerdictDrop))))
}

// masqueradeRules mark the traffic the IPVS dataplane's policy masquerades:
// everything with MasqueradeAll; otherwise external, load balancer and
// NodePort traffic (anything not addressed to the cluster IP, since only
// the port's own frontends lead to its chain) when external is set, and
// cluster-IP traffic from outside the cluster CIDRs.
func masqueradeRules(cfg Config, f *family, clusterIP netip.Addr, external bool) []rule {
	if cfg.MasqueradeAll {
		return []rule{newRule(f, "", one(jump(chainMarkMasq)))}
	}
	var rules []rule
	if external {
		if clusterIP.IsValid() {
			rules = append(rules, newRule(f, "", matchAddr(f, f.daddrOffset, expr.CmpOpNeq, clusterIP), one(jump(chainMarkMasq))))
		} else {
			rules = append(rules, newRule(f, "", one(jump(chainMarkMasq))))
		}
	}
	if clusterIP.IsValid() && len(f.prefixes(cfg.ClusterCIDRs)) > 0 {
		rules = append(rules, newRule(f, "", matchAddr(f, f.daddrOffset, expr.CmpOpEq, clusterIP), one(jump(chainMasqOutsideCluster))))
	}
	return rules
}

// dnatRule picks an endpoint per new connection: "dnat to numgen random
// mod N map { slot : address . port }", an endpoint of weight w taking w
// slots. NAT happens on a connection's first packet only; conntrack keeps
// the choice for the rest.
//
// The anonymous map's elements cannot be read back cheaply (the kernel
// finds a set by walking the table's set list, so reading thousands of
// them is quadratic), and a constant anonymous map cannot be changed once
// its rule exists. The rule's comment therefore carries a digest of the
// elements: a rule whose digest matches has the wanted endpoints.
func dnatRule(f *family, chain string, eps []dataplane.WeightedEndpoint, limit connLimit) rule {
	anon, slots, comment := endpointMap(f, anonMapName(chain), eps)
	anon.idx = 1 // the lookup, see dnatNumgenMap
	r := newRule(f, comment, dnatNumgenMap(f, slots, anon.name, limit))
	r.anons = []*anonMap{anon}
	return r
}

// endpointMap builds the numgen map { slot : address . port } of eps and
// the comment carrying its digest.
func endpointMap(f *family, name string, eps []dataplane.WeightedEndpoint) (*anonMap, uint32, string) {
	anon := &anonMap{
		name:     name,
		keyType:  nftables.TypeInteger,
		dataType: nftables.MustConcatSetType(f.addrType, nftables.TypeInetService),
		isMap:    true,
	}
	var text strings.Builder
	slot := uint32(0)
	for _, e := range eps {
		for range e.Weight {
			anon.elems = append(anon.elems, nftables.SetElement{Key: native32(slot), Val: endpointValue(f, e.Addr)})
			text.WriteString(itoa(int(slot)) + ":" + e.Addr.String() + " ")
			slot++
		}
	}
	sum := sha256.Sum256([]byte(text.String()))
	return anon, slot, "endpoints " + itoa(len(eps)) + " digest " + hex.EncodeToString(sum[:6])
}

// endpointValue is "address . port" as a concatenation (port padded).
func endpointValue(f *family, ap netip.AddrPort) []byte {
	addr, _ := f.addr(ap.Addr())
	val := append(addr.AsSlice(), be16(ap.Port())...)
	return append(val, 0, 0)
}

// affinityRules implement sessionAffinity ClientIP (kube-proxy keeps a set
// of clients per endpoint; here one map per chain, client -> endpoint):
// a client with a live entry whose endpoint is still in the chain goes
// there (refreshing the entry's timeout); any other gets a random
// endpoint, recorded with the timeout. Both rules carry the endpoints'
// digest, like dnatRule. With a connection limit a third rule between
// them refuses a client whose endpoint is full (affinityFull).
func affinityRules(f *family, chain, set string, timeout time.Duration, eps []dataplane.WeightedEndpoint, limit connLimit) []rule {
	anon, slots, comment := endpointMap(f, anonMapName(chain), eps)
	anon.idx = affinityPickAnonIdx
	validSet := func(name string) *anonMap {
		valid := &anonMap{name: name, keyType: anon.dataType, idx: affinityHitAnonIdx}
		for _, e := range eps {
			valid.elems = append(valid.elems, nftables.SetElement{Key: endpointValue(f, e.Addr)})
		}
		return valid
	}
	hit := newRule(f, comment, affinityHit(f, set, anonSetName(chain), timeout, limit))
	hit.anons = []*anonMap{validSet(anonSetName(chain))}
	pick := newRule(f, comment, affinityPick(f, slots, anon.name, set, timeout, limit))
	pick.anons = []*anonMap{anon}
	if !limit.on() {
		return []rule{hit, pick}
	}
	// Its own copy of the endpoint set: an anonymous set binds to one
	// rule.
	fullName := anonSetName(limitSetPrefix + chain)
	full := newRule(f, comment, affinityFull(f, set, fullName))
	full.anons = []*anonMap{validSet(fullName)}
	return []rule{hit, full, pick}
}

func compareElements(a, b element) int {
	if c := strings.Compare(a.set, b.set); c != 0 {
		return c
	}
	if c := strings.Compare(a.key, b.key); c != 0 {
		return c
	}
	return strings.Compare(a.chain, b.chain)
}

func compareFrontends(a, b frontend) int {
	if c := a.addr.Compare(b.addr); c != 0 {
		return c
	}
	if c := int(a.proto) - int(b.proto); c != 0 {
		return c
	}
	return int(a.port) - int(b.port)
}
