package iptables

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/switchyard/switchyard/dataplane"
)

// Rules of the no-local-endpoint drop with testConfig (one cluster CIDR).
const (
	nleExtJump  = `-A SWITCHYARD-PROXY-FIREWALL -m comment --comment "external IP or load balancer IP without a local endpoint" -m set --match-set SWITCHYARD-NO-LOCAL-ENDPOINT dst,dst -j SWITCHYARD-NO-LOCAL-ENDPOINT`
	nleTCPJump  = `-A SWITCHYARD-PROXY-FIREWALL -p tcp -m comment --comment "TCP node port without a local endpoint" -m set --match-set SWITCHYARD-NO-LOCAL-EP-NP-TCP dst,dst -j SWITCHYARD-NO-LOCAL-ENDPOINT`
	nleUDPJump  = `-A SWITCHYARD-PROXY-FIREWALL -p udp -m comment --comment "UDP node port without a local endpoint" -m set --match-set SWITCHYARD-NO-LOCAL-EP-NP-UDP dst,dst -j SWITCHYARD-NO-LOCAL-ENDPOINT`
	nleSCTPJump = `-A SWITCHYARD-PROXY-FIREWALL -p sctp -m comment --comment "SCTP node port without a local endpoint" -m set --match-set SWITCHYARD-NO-LOCAL-EP-NP-SCTP dst,dst -j SWITCHYARD-NO-LOCAL-ENDPOINT`
	nlePods     = `-A SWITCHYARD-NO-LOCAL-ENDPOINT -s 10.244.0.0/16 -m comment --comment "pod traffic goes to the cluster endpoints" -j RETURN`
	nleNode     = `-A SWITCHYARD-NO-LOCAL-ENDPOINT -m comment --comment "node traffic goes to the cluster endpoints" -m addrtype --src-type LOCAL -j RETURN`
	nleDrop     = `-A SWITCHYARD-NO-LOCAL-ENDPOINT -m comment --comment "externalTrafficPolicy Local without a local endpoint" -m conntrack --ctstate NEW -j DROP`
)

// etpLocal is a LoadBalancer Service with an external IP, externalTrafficPolicy
// Local and a NodePort, without endpoints (the cases add them).
func etpLocal() svc {
	return svc{ns: "default", name: "edge", port: "http", proto: dataplane.TCP, svcPort: 80, nodePort: 30080, local: true,
		clusterIPs: []string{"10.96.0.30"}, externalIPs: []string{"203.0.113.7"}, lbIPs: []string{"198.51.100.1"}}
}

// The no-local-endpoint sets hold the external frontends of
// externalTrafficPolicy Local Services with endpoints but none on this
// node (the IPVS dataplane's fallback to the Cluster endpoints), decided
// per family as ipvs.Desired does; the filter chain drops outside traffic
// to them, letting pods and the node through.
func TestDesiredNoLocalEndpoint(t *testing.T) {
	with := func(s svc, f func(*svc)) svc { f(&s); return s }
	edgeNoLocal := with(etpLocal(), func(s *svc) { s.remote = []string{"10.244.2.7:8080", "10.244.2.9:8080"} })
	// Members of the external, TCP, UDP and SCTP no-local-endpoint sets
	// (NodePort members as port only: each is there as two halves).
	type members struct{ ext, tcp, udp, sctp []string }
	edgeMembers := members{ext: []string{"198.51.100.1,tcp:80", "203.0.113.7,tcp:80"}, tcp: []string{"tcp:30080"}}
	edgeRules := []string{nleExtJump, nleTCPJump, nlePods, nleNode, nleDrop}
	for _, tc := range []struct {
		name string
		fam  Family
		cfg  func(*Config)
		svcs []svc
		want members
		// Rules of filter SWITCHYARD-PROXY-FIREWALL, then of
		// SWITCHYARD-NO-LOCAL-ENDPOINT; nil: neither (no such chain).
		rules []string
	}{{
		name: "remote endpoints only", svcs: []svc{edgeNoLocal}, want: edgeMembers, rules: edgeRules,
	}, {
		name: "a local endpoint", svcs: []svc{with(edgeNoLocal, func(s *svc) { s.endpoints = []string{"10.244.1.5:8080"} })},
	}, {
		name: "externalTrafficPolicy Cluster", svcs: []svc{with(edgeNoLocal, func(s *svc) { s.local = false })},
	}, {
		name: "no endpoints at all: rejected by IPVS, not dropped here", svcs: []svc{etpLocal()},
	}, {
		name: "the local endpoint not ready: the Local set is empty",
		svcs: []svc{with(edgeNoLocal, func(s *svc) {
			s.eps = []dataplane.Endpoint{{Addr: netip.MustParseAddrPort("10.244.1.5:8080"), NodeName: "node-a"}}
		})},
		want: edgeMembers, rules: edgeRules,
	}, {
		name: "the local endpoint terminating but serving: it still serves (KEP-1669)",
		svcs: []svc{with(edgeNoLocal, func(s *svc) {
			s.eps = []dataplane.Endpoint{{Addr: netip.MustParseAddrPort("10.244.1.5:8080"), NodeName: "node-a", Serving: true, Terminating: true}}
		})},
	}, {
		name: "nothing ready anywhere: nothing to fall back to",
		svcs: []svc{with(etpLocal(), func(s *svc) {
			s.eps = []dataplane.Endpoint{{Addr: netip.MustParseAddrPort("10.244.2.7:8080"), NodeName: "node-b"}}
		})},
	}, {
		name: "an external IP that is the Service's ClusterIP follows the internal policy",
		svcs: []svc{with(edgeNoLocal, func(s *svc) { s.externalIPs = []string{"10.96.0.30", "203.0.113.7"} })},
		want: edgeMembers, rules: edgeRules,
	}, {
		name: "UDP and SCTP NodePorts, no LB IP",
		svcs: []svc{
			{ns: "default", name: "dns", port: "dns", proto: dataplane.UDP, svcPort: 53, nodePort: 30053, local: true,
				clusterIPs: []string{"10.96.0.53"}, remote: []string{"10.244.2.5:53"}},
			{ns: "default", name: "sig", proto: dataplane.SCTP, svcPort: 9000, nodePort: 30900, local: true,
				clusterIPs: []string{"10.96.0.90"}, remote: []string{"10.244.2.6:9000"}},
		},
		want:  members{udp: []string{"udp:30053"}, sctp: []string{"sctp:30900"}},
		rules: []string{nleUDPJump, nleSCTPJump, nlePods, nleNode, nleDrop},
	}, {
		name: "no cluster CIDR: only the node passes", cfg: func(c *Config) { c.ClusterCIDRs = nil },
		svcs: []svc{edgeNoLocal}, want: edgeMembers,
		rules: []string{nleExtJump, nleTCPJump, nleNode, nleDrop},
	}, {
		name: "two cluster CIDRs (the IPv6 one ignored)",
		cfg: func(c *Config) {
			c.ClusterCIDRs = append(c.ClusterCIDRs, netip.MustParsePrefix("10.245.0.0/16"), netip.MustParsePrefix("fd00:244::/56"))
		},
		svcs: []svc{edgeNoLocal}, want: edgeMembers,
		rules: []string{nleExtJump, nleTCPJump, nlePods,
			`-A SWITCHYARD-NO-LOCAL-ENDPOINT -s 10.245.0.0/16 -m comment --comment "pod traffic goes to the cluster endpoints" -j RETURN`,
			nleNode, nleDrop},
	}, {
		name: "with loadBalancerSourceRanges: the source ranges first",
		svcs: []svc{with(edgeNoLocal, func(s *svc) { s.sourceRanges = []string{"192.0.2.0/24"} })},
		want: edgeMembers,
		rules: append([]string{`-A SWITCHYARD-PROXY-FIREWALL -m comment --comment "load balancer IP with loadBalancerSourceRanges" -m set --match-set SWITCHYARD-LOAD-BALANCER-FW dst,dst -j SWITCHYARD-SOURCE-RANGES-FW`},
			edgeRules...),
	}, {
		name: "dual stack, IPv4: a local IPv4 endpoint",
		svcs: []svc{dualEdge()},
	}, {
		name: "dual stack, IPv6: only a remote IPv6 endpoint", fam: FamilyINet6,
		cfg:  func(c *Config) { c.ClusterCIDRs = append(c.ClusterCIDRs, netip.MustParsePrefix("fd00:244::/56")) },
		svcs: []svc{dualEdge()},
		want: members{ext: []string{"2001:db8::7,tcp:80"}, tcp: []string{"tcp:30080"}},
		rules: []string{
			strings.Replace(nleExtJump, "SWITCHYARD-NO-LOCAL-ENDPOINT dst", "SWITCHYARD6-NO-LOCAL-ENDPOINT dst", 1),
			strings.Replace(nleTCPJump, "SWITCHYARD-NO-LOCAL-EP-NP-TCP", "SWITCHYARD6-NO-LOCAL-EP-NP-TCP", 1),
			strings.Replace(nlePods, "10.244.0.0/16", "fd00:244::/56", 1),
			nleNode, nleDrop},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.Family = tc.fam
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			d := Desired(newState(t, tc.svcs...), cfg)
			n := func(base string) string { return setName(d.Family, base) }
			for _, s := range []struct {
				set  string
				want []string
			}{{n(setNoLocalEndpoint), tc.want.ext}, {n(setNoLocalEndpointNodeTCP), tc.want.tcp},
				{n(setNoLocalEndpointNodeUDP), tc.want.udp}, {n(setNoLocalEndpointNodeSCTP), tc.want.sctp}} {
				ds := d.Set(s.set)
				if ds == nil {
					t.Fatalf("no set %s", s.set)
				}
				var got []string
				for _, m := range ds.Sorted() {
					if why := validMember(ds.Spec, m); why != "" {
						t.Errorf("%s member %s: %s", s.set, m, why)
					}
					str := m.String()
					if ds.Spec.Type == HashNetPort {
						_, str, _ = strings.Cut(str, ",")
					}
					got = append(got, str)
				}
				got = slices.Compact(got)
				if !slices.Equal(got, s.want) {
					t.Errorf("%s: got %v, want %v", s.set, got, s.want)
				}
			}
			var got []string
			for _, name := range []string{chainFirewall, chainNoLocalEndpoint} {
				if c := d.Chain(TableFilter, name); c != nil {
					for _, r := range c.Rules {
						got = append(got, r.Line(name))
					}
				}
			}
			if !slices.Equal(got, tc.rules) {
				t.Errorf("filter rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.rules, "\n"))
			}
			if (d.Chain(TableFilter, chainNoLocalEndpoint) != nil) != (tc.rules != nil && slices.Contains(tc.rules, nleDrop)) {
				t.Errorf("chain %s present: %v", chainNoLocalEndpoint, d.Chain(TableFilter, chainNoLocalEndpoint) != nil)
			}
			// mangle (the node's own traffic, let through anyway) never
			// has the drop.
			if d.Chain(TableMangle, chainNoLocalEndpoint) != nil {
				t.Errorf("mangle has %s", chainNoLocalEndpoint)
			}
			for _, r := range d.Chain(TableMangle, chainFirewall).Rules {
				if r.Target() == chainNoLocalEndpoint {
					t.Errorf("mangle %s jumps to %s: %s", chainFirewall, chainNoLocalEndpoint, r.Line(chainFirewall))
				}
			}
		})
	}
}

// dualEdge is a dual-stack externalTrafficPolicy Local Service whose IPv4
// endpoint is on this node and whose IPv6 one is not.
func dualEdge() svc {
	return svc{ns: "default", name: "ds", port: "http", proto: dataplane.TCP, svcPort: 80, nodePort: 30080, local: true,
		clusterIPs: []string{"10.96.0.70", "fd00:96::70"}, lbIPs: []string{"198.51.100.7", "2001:db8::7"},
		endpoints: []string{"10.244.1.5:8080"}, remote: []string{"10.244.2.7:8080", "[fd00:244::7]:8080"}}
}

// The node's own traffic to an externalTrafficPolicy Local frontend is
// marked for masquerade before the *-LOCAL sets exempt the rest (the
// nftables dataplane's "masquerade local traffic"); without such Services,
// no rule.
func TestDesiredLocalPolicyMasqueradesNodeTraffic(t *testing.T) {
	for _, tc := range []struct {
		name  string
		local bool
		want  []string
	}{{
		name: "externalTrafficPolicy Local", local: true,
		want: []string{
			`-A SWITCHYARD-EXTERNAL-IP -m comment --comment "external IP traffic from this node" -m addrtype --src-type LOCAL -j SWITCHYARD-MARK-MASQ`,
			`-A SWITCHYARD-EXTERNAL-IP -m comment --comment "external IP with externalTrafficPolicy Local keeps the client address" -m set --match-set SWITCHYARD-EXTERNAL-IP-LOCAL dst,dst -j RETURN`,
			`-A SWITCHYARD-EXTERNAL-IP -m comment --comment "external IP traffic" -j SWITCHYARD-MARK-MASQ`,
			`-A SWITCHYARD-LOAD-BALANCER -m comment --comment "load balancer IP traffic from this node" -m addrtype --src-type LOCAL -j SWITCHYARD-MARK-MASQ`,
			`-A SWITCHYARD-LOAD-BALANCER -m comment --comment "load balancer IP with externalTrafficPolicy Local keeps the client address" -m set --match-set SWITCHYARD-LOAD-BALANCER-LOCAL dst,dst -j RETURN`,
			`-A SWITCHYARD-LOAD-BALANCER -m comment --comment "load balancer IP traffic" -j SWITCHYARD-MARK-MASQ`,
			`-A SWITCHYARD-NODE-PORT -p tcp -m comment --comment "TCP node port with externalTrafficPolicy Local, from this node" -m addrtype --src-type LOCAL -m set --match-set SWITCHYARD-NODE-PORT-LOCAL-TCP dst,dst -j SWITCHYARD-MARK-MASQ`,
			`-A SWITCHYARD-NODE-PORT -p tcp -m comment --comment "TCP node port with externalTrafficPolicy Local keeps the client address" -m set --match-set SWITCHYARD-NODE-PORT-LOCAL-TCP dst,dst -j RETURN`,
			`-A SWITCHYARD-NODE-PORT -p tcp -m comment --comment "TCP node port traffic" -m set --match-set SWITCHYARD-NODE-PORT-TCP dst,dst -j SWITCHYARD-MARK-MASQ`,
		},
	}, {
		name: "externalTrafficPolicy Cluster",
		want: []string{
			`-A SWITCHYARD-EXTERNAL-IP -m comment --comment "external IP traffic" -j SWITCHYARD-MARK-MASQ`,
			`-A SWITCHYARD-LOAD-BALANCER -m comment --comment "load balancer IP traffic" -j SWITCHYARD-MARK-MASQ`,
			`-A SWITCHYARD-NODE-PORT -p tcp -m comment --comment "TCP node port traffic" -m set --match-set SWITCHYARD-NODE-PORT-TCP dst,dst -j SWITCHYARD-MARK-MASQ`,
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			s := etpLocal()
			s.local = tc.local
			s.endpoints = []string{"10.244.1.5:8080"}
			d := Desired(newState(t, s), testConfig())
			var got []string
			for _, name := range []string{chainExternalIP, chainLoadBalancer, chainNodePort} {
				for _, r := range d.Chain(TableNAT, name).Rules {
					got = append(got, r.Line(name))
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

// The local endpoint leaves and comes back: partial syncs (as the agent
// makes on an EndpointSlice change) fill the sets and create the chain,
// then empty them and remove the chain, matching Desired each time and
// writing nothing when nothing changed.
func TestProxierNoLocalEndpointChanges(t *testing.T) {
	k := newFakeKernel()
	p := k.proxier(t, testConfig())
	withLocal := etpLocal()
	withLocal.endpoints, withLocal.remote = []string{"10.244.1.5:8080"}, []string{"10.244.2.7:8080"}
	remoteOnly := etpLocal()
	remoteOnly.remote = []string{"10.244.2.7:8080"}
	name := dataplane.ServiceName{Namespace: "default", Name: "edge"}
	check := func(what string, st *dataplane.State, wantChain bool) {
		t.Helper()
		want := Desired(st, p.cfg)
		if got := ownedDump(t, k.sets, k.tables, want); got != want.Dump() {
			t.Errorf("%s: kernel differs from desired:\n%s", what, lineDiff(want.Dump(), got))
		}
		if has := want.Chain(TableFilter, chainNoLocalEndpoint) != nil; has != wantChain {
			t.Errorf("%s: chain %s wanted %v", what, chainNoLocalEndpoint, has)
		}
	}
	st := newState(t, withLocal)
	fullSync(t, p, st)
	check("with a local endpoint", st, false)

	st = newState(t, remoteOnly)
	partialSync(t, p, st, name)
	check("local endpoint gone", st, true)
	for _, set := range []string{setNoLocalEndpoint, setNoLocalEndpointNodeTCP} {
		if ms := Desired(st, p.cfg).Set(set).Members; len(ms) == 0 {
			t.Errorf("local endpoint gone: %s empty", set)
		}
	}

	k.resetOps()
	partialSync(t, p, st, name)
	if w := k.writes(); len(w) != 0 {
		t.Errorf("unchanged: wrote %v", w)
	}

	st = newState(t, withLocal)
	partialSync(t, p, st, name)
	check("local endpoint back", st, false)
}
