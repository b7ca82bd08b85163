package nftables

import (
	"crypto/sha256"
	"encoding/hex"
	"net/netip"
	"slices"
	"strings"

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
	// chain is "" when the port has no endpoint to send new connections
	// to: its frontends then go to the no-endpoint sets and it has no
	// chain.
	chain   string
	rules   []rule
	hairpin []netip.Addr // endpoints that may be DNATed to
}

// nodePortsEnabled: with NodePortAddresses set, only families with a prefix
// of their own get NodePorts (kube-proxy's rule).
func nodePortsEnabled(cfg Config, f *family) bool {
	return len(cfg.NodePortAddresses) == 0 || len(f.prefixes(cfg.NodePortAddresses)) > 0
}

// desiredServicePort computes one Service port's objects for family f. It
// returns nil when the port has nothing in this family (or an unsupported
// protocol).
func desiredServicePort(cfg Config, f *family, sp *dataplane.ServicePort, eps []dataplane.Endpoint) *servicePortState {
	proto, ok := protoNumber(sp.Name.Protocol)
	if !ok {
		return nil
	}
	ps := &servicePortState{name: sp.Name}
	var clusterIP netip.Addr
	for _, a := range sp.ClusterIPs {
		if a, ok := f.addr(a); ok {
			if !clusterIP.IsValid() {
				clusterIP = a
			}
			ps.frontends = append(ps.frontends, frontend{addr: a, proto: proto, port: sp.Port})
		}
	}
	external := false
	for _, group := range [][]netip.Addr{sp.ExternalIPs, sp.LoadBalancerIPs} {
		for _, a := range group {
			if a, ok := f.addr(a); ok {
				external = true
				ps.frontends = append(ps.frontends, frontend{addr: a, proto: proto, port: sp.Port})
			}
		}
	}
	if sp.NodePort != 0 && nodePortsEnabled(cfg, f) {
		external = true
		ps.frontends = append(ps.frontends, frontend{proto: proto, port: sp.NodePort})
	}
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
	var usable []dataplane.WeightedEndpoint
	for _, e := range dataplane.ClusterEndpoints(familyEps) {
		if e.Weight > 0 {
			usable = append(usable, e)
		}
	}
	if len(usable) == 0 {
		return ps
	}
	ps.chain = servicePortChain(sp.Name)
	ps.rules = append(masqueradeRules(cfg, f, clusterIP, external), dnatRule(f, ps.chain, usable))
	for _, e := range usable {
		a, _ := f.addr(e.Addr.Addr())
		ps.hairpin = append(ps.hairpin, a)
	}
	slices.SortFunc(ps.hairpin, netip.Addr.Compare)
	ps.hairpin = slices.Compact(ps.hairpin)
	return ps
}

// masqueradeRules mark the traffic the IPVS dataplane's policy masquerades:
// everything with MasqueradeAll; otherwise external, load balancer and
// NodePort traffic (anything not addressed to the cluster IP, since only
// the port's own frontends lead to its chain), and cluster-IP traffic from
// outside the cluster CIDRs. externalTrafficPolicy Local is not honoured
// yet: its traffic is masqueraded like Cluster's.
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
func dnatRule(f *family, chain string, eps []dataplane.WeightedEndpoint) rule {
	anon := &anonMap{
		name:     anonMapName(chain),
		keyType:  nftables.TypeInteger,
		dataType: nftables.MustConcatSetType(f.addrType, nftables.TypeInetService),
	}
	var text strings.Builder
	slot := uint32(0)
	for _, e := range eps {
		addr, _ := f.addr(e.Addr.Addr())
		val := append(addr.AsSlice(), be16(e.Addr.Port())...)
		val = append(val, 0, 0)
		for range e.Weight {
			anon.elems = append(anon.elems, nftables.SetElement{Key: native32(slot), Val: val})
			text.WriteString(itoa(int(slot)) + ":" + e.Addr.String() + " ")
			slot++
		}
	}
	sum := sha256.Sum256([]byte(text.String()))
	comment := "endpoints " + itoa(len(eps)) + " digest " + hex.EncodeToString(sum[:6])
	r := newRule(f, comment, dnatNumgenMap(f, slot, anon.name))
	r.anon = anon
	r.anonIdx = 1 // the lookup, see dnatNumgenMap
	return r
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
