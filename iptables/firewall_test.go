package iptables

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/switchyard/switchyard/dataplane"
)

// The loadBalancerSourceRanges firewall: which sets hold what, and the
// chains built on them, in filter (INPUT) and mangle (OUTPUT) alike.
func TestDesiredSourceRanges(t *testing.T) {
	lb := func(ranges ...string) svc {
		return svc{ns: "default", name: "lb", port: "http", proto: dataplane.TCP, svcPort: 80, nodePort: 30080,
			clusterIPs: []string{"10.96.0.10"}, lbIPs: []string{"198.51.100.10"}, sourceRanges: ranges,
			endpoints: []string{"10.244.1.2:8080"}}
	}
	const (
		cidrRule = `-A SWITCHYARD-SOURCE-RANGES-FW -m comment --comment "source inside loadBalancerSourceRanges" -m set --match-set SWITCHYARD-LB-SOURCE-CIDR dst,dst,src -j RETURN`
		ipRule   = `-A SWITCHYARD-SOURCE-RANGES-FW -m comment --comment "load balancer IP as source from this node, a node IP being inside the ranges" -m set --match-set SWITCHYARD-LB-SOURCE-IP dst,dst,src -j RETURN`
		dropRule = `-A SWITCHYARD-SOURCE-RANGES-FW -m comment --comment "source outside loadBalancerSourceRanges" -j DROP`
		jumpRule = `-A SWITCHYARD-PROXY-FIREWALL -m comment --comment "load balancer IP with loadBalancerSourceRanges" -m set --match-set SWITCHYARD-LOAD-BALANCER-FW dst,dst -j SWITCHYARD-SOURCE-RANGES-FW`
	)
	for _, tc := range []struct {
		name    string
		fam     Family
		svcs    []svc
		nodeIPs []string
		// Members of the FW, SOURCE-CIDR and SOURCE-IP sets.
		fw, cidr, ip []string
		// Rules of SWITCHYARD-SOURCE-RANGES-FW; nil: no such chain, and
		// SWITCHYARD-PROXY-FIREWALL empty.
		rules []string
	}{{
		name: "no ranges: no firewall", svcs: []svc{lb()}, nodeIPs: []string{"192.168.1.5"},
	}, {
		name: "node outside the ranges", svcs: []svc{lb("203.0.113.0/24", "192.0.2.7/32")}, nodeIPs: []string{"192.168.1.5"},
		fw:    []string{"198.51.100.10,tcp:80"},
		cidr:  []string{"198.51.100.10,tcp:80,192.0.2.7", "198.51.100.10,tcp:80,203.0.113.0/24"},
		rules: []string{cidrRule, dropRule},
	}, {
		name: "a node IP inside a range lets the LB IP itself through", svcs: []svc{lb("203.0.113.0/24", "192.168.0.0/16")},
		nodeIPs: []string{"fd00::5", "192.168.1.5"},
		fw:      []string{"198.51.100.10,tcp:80"},
		cidr:    []string{"198.51.100.10,tcp:80,192.168.0.0/16", "198.51.100.10,tcp:80,203.0.113.0/24"},
		ip:      []string{"198.51.100.10,tcp:80,198.51.100.10"},
		rules:   []string{cidrRule, ipRule, dropRule},
	}, {
		name: "no endpoints: firewalled all the same", nodeIPs: []string{"192.168.1.5"},
		svcs:  []svc{func() svc { s := lb("203.0.113.0/24"); s.endpoints = nil; return s }()},
		fw:    []string{"198.51.100.10,tcp:80"},
		cidr:  []string{"198.51.100.10,tcp:80,203.0.113.0/24"},
		rules: []string{cidrRule, dropRule},
	}, {
		name: "two LB IPs, UDP, and a Service without ranges next to it",
		svcs: []svc{
			{ns: "default", name: "dns", port: "dns", proto: dataplane.UDP, svcPort: 53, clusterIPs: []string{"10.96.0.53"},
				lbIPs: []string{"198.51.100.53", "198.51.100.54"}, sourceRanges: []string{"203.0.113.0/24", "10.0.0.0/8"}},
			lb(),
		},
		nodeIPs: []string{"10.1.1.1"},
		fw:      []string{"198.51.100.53,udp:53", "198.51.100.54,udp:53"},
		cidr: []string{"198.51.100.53,udp:53,10.0.0.0/8", "198.51.100.53,udp:53,203.0.113.0/24",
			"198.51.100.54,udp:53,10.0.0.0/8", "198.51.100.54,udp:53,203.0.113.0/24"},
		ip:    []string{"198.51.100.53,udp:53,198.51.100.53", "198.51.100.54,udp:53,198.51.100.54"},
		rules: []string{cidrRule, ipRule, dropRule},
	}, {
		name: "0.0.0.0/0 as two halves (the kernel refuses /0)", svcs: []svc{lb("0.0.0.0/0")}, nodeIPs: []string{"192.168.1.5"},
		fw:    []string{"198.51.100.10,tcp:80"},
		cidr:  []string{"198.51.100.10,tcp:80,0.0.0.0/1", "198.51.100.10,tcp:80,128.0.0.0/1"},
		ip:    []string{"198.51.100.10,tcp:80,198.51.100.10"},
		rules: []string{cidrRule, ipRule, dropRule},
	}, {
		name: "an IPv4-mapped IPv6 range is the IPv4 range", svcs: []svc{lb("::ffff:203.0.113.0/120")},
		fw:    []string{"198.51.100.10,tcp:80"},
		cidr:  []string{"198.51.100.10,tcp:80,203.0.113.0/24"},
		rules: []string{cidrRule, dropRule},
	}, {
		name: "only IPv6 ranges: the IPv4 LB IP is not filtered", svcs: []svc{lb("2001:db8::/32")},
	}, {
		name: "without LB IP: cluster IP, external IPs and NodePort are never filtered",
		svcs: []svc{{ns: "default", name: "np", port: "http", proto: dataplane.TCP, svcPort: 80, nodePort: 30080,
			clusterIPs: []string{"10.96.0.10"}, externalIPs: []string{"192.0.2.10"}, sourceRanges: []string{"203.0.113.0/24"},
			endpoints: []string{"10.244.1.2:8080"}}},
	}, {
		name: "IPv6: own ranges, ::/0 as two halves, a node IP inside", fam: FamilyINet6,
		svcs: []svc{{ns: "default", name: "dual", port: "http", proto: dataplane.SCTP, svcPort: 80,
			clusterIPs: []string{"10.96.0.10", "fd00:96::10"}, lbIPs: []string{"198.51.100.10", "2001:db8:1::10"},
			sourceRanges: []string{"203.0.113.0/24", "::/0", "fd00:10::/64"}}},
		nodeIPs: []string{"192.168.1.5", "fd00:10::5"},
		fw:      []string{"2001:db8:1::10,sctp:80"},
		cidr:    []string{"2001:db8:1::10,sctp:80,::/1", "2001:db8:1::10,sctp:80,8000::/1", "2001:db8:1::10,sctp:80,fd00:10::/64"},
		ip:      []string{"2001:db8:1::10,sctp:80,2001:db8:1::10"},
		rules: []string{
			strings.Replace(cidrRule, "SWITCHYARD-LB-", "SWITCHYARD6-LB-", 1),
			strings.Replace(ipRule, "SWITCHYARD-LB-", "SWITCHYARD6-LB-", 1),
			dropRule,
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			st := newState(t, tc.svcs...)
			st.NodeIPs = addrs(t, tc.nodeIPs)
			cfg := testConfig()
			cfg.Family = tc.fam
			d := Desired(st, cfg)
			n := func(base string) string { return setName(d.Family, base) }
			for _, s := range []struct {
				set  string
				want []string
			}{{n(setLoadBalancerFW), tc.fw}, {n(setLoadBalancerSourceCIDR), tc.cidr}, {n(setLoadBalancerSourceIP), tc.ip}} {
				ds := d.Set(s.set)
				if ds == nil {
					t.Fatalf("no set %s", s.set)
				}
				var got []string
				for _, m := range ds.Sorted() {
					if why := validMember(ds.Spec, m); why != "" {
						t.Errorf("%s member %s: %s", s.set, m, why)
					}
					got = append(got, m.String())
				}
				if !slices.Equal(got, s.want) {
					t.Errorf("%s = %q, want %q", s.set, got, s.want)
				}
			}
			for _, table := range []string{TableFilter, TableMangle} {
				fw := d.Chain(table, chainFirewall)
				if fw == nil {
					t.Fatalf("no %s %s: the hooks jump to it", table, chainFirewall)
				}
				ranges := d.Chain(table, chainSourceRanges)
				if tc.rules == nil {
					if ranges != nil || len(fw.Rules) != 0 {
						t.Errorf("%s: firewall without ranges: %s has %v, %s present=%v", table, chainFirewall, fw.Rules, chainSourceRanges, ranges != nil)
					}
					continue
				}
				wantJump := strings.Replace(jumpRule, "SWITCHYARD-LOAD-BALANCER-FW", n(setLoadBalancerFW), 1)
				if len(fw.Rules) != 1 || fw.Rules[0].Line(chainFirewall) != wantJump {
					t.Errorf("%s %s:\n%v\nwant\n%s", table, chainFirewall, fw.Rules, wantJump)
				}
				if ranges == nil {
					t.Fatalf("%s: no %s", table, chainSourceRanges)
				}
				var got []string
				for _, r := range ranges.Rules {
					got = append(got, r.Line(chainSourceRanges))
				}
				if !slices.Equal(got, tc.rules) {
					t.Errorf("%s %s:\n%s\nwant\n%s", table, chainSourceRanges, strings.Join(got, "\n"), strings.Join(tc.rules, "\n"))
				}
			}
			// Whatever the ranges, the other frontends' sets are the same
			// as without them.
			plain := newState(t, tc.svcs...)
			for name := range plain.Services {
				plain.Services[name].LoadBalancerSourceRanges = nil
			}
			without := Desired(plain, cfg)
			for _, base := range []string{setClusterIP, setExternalIP, setLoadBalancer, setNodePortTCP, setLoopBack} {
				if a, b := d.Set(n(base)).Sorted(), without.Set(n(base)).Sorted(); !slices.Equal(a, b) {
					t.Errorf("%s differs with ranges: %v vs %v", n(base), a, b)
				}
			}
		})
	}
}

// The hooks: filter INPUT for traffic from other hosts and pods, mangle
// OUTPUT (before IPVS at LOCAL_OUT) for the node's own; nothing in FORWARD
// but the existing forwarding rules.
func TestDesiredFirewallHooks(t *testing.T) {
	d := Desired(dataplane.NewState(), testConfig())
	var got []string
	for _, h := range d.Hooks {
		if h.Rule.Target() == chainFirewall {
			got = append(got, h.Table+" "+h.Rule.Line(h.Chain))
		}
	}
	want := []string{
		`filter -A INPUT -m comment --comment "switchyard load balancer source ranges" -j SWITCHYARD-PROXY-FIREWALL`,
		`mangle -A OUTPUT -m comment --comment "switchyard load balancer source ranges, from this node" -j SWITCHYARD-PROXY-FIREWALL`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("firewall hooks:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// Changing a Service's ranges or the node's addresses costs set member
// writes only, while the chains' shape stays; the first and the last
// firewalled Service add and remove the chain and its jump in both tables.
// The kernel matches Desired after every step, and nothing stale stays.
func TestSourceRangesSync(t *testing.T) {
	k := newFakeKernel()
	foreignState(t, k)
	p := k.proxier(t, testConfig())
	name := dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: "default", Name: "lb"}, Port: "http", Protocol: dataplane.TCP}
	st := newState(t, svc{ns: "default", name: "lb", port: "http", proto: dataplane.TCP, svcPort: 80,
		clusterIPs: []string{"10.96.0.10"}, lbIPs: []string{"198.51.100.10"}, endpoints: []string{"10.244.1.2:8080"}})
	st.NodeIPs = addrs(t, []string{"192.168.1.5"})
	fullSync(t, p, st)

	step := func(what string, change func(), want []string) {
		t.Helper()
		change()
		k.resetOps()
		partialSync(t, p, st, name.ServiceName)
		got := k.writes()
		if want != nil && !slices.Equal(got, want) {
			t.Errorf("%s: writes\n%s\nwant\n%s", what, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		d := Desired(st, p.cfg)
		if dump := ownedDump(t, k.sets, k.tables, d); dump != d.Dump() {
			t.Errorf("%s: kernel differs from desired:\n%s", what, lineDiff(d.Dump(), dump))
		}
	}
	setRanges := func(ps ...string) func() {
		return func() { st.Services[name].LoadBalancerSourceRanges = prefixes(t, ps) }
	}
	const (
		fw   = "SWITCHYARD-LOAD-BALANCER-FW 198.51.100.10,tcp:80"
		cidr = "SWITCHYARD-LB-SOURCE-CIDR 198.51.100.10,tcp:80,"
	)
	step("first ranges", setRanges("203.0.113.0/24"), nil)
	if !slices.Contains(k.writes(), "add "+fw) || !slices.Contains(k.writes(), "new-chain mangle "+chainSourceRanges) {
		t.Errorf("first ranges: no FW member or no mangle chain in %q", k.writes())
	}
	step("ranges changed", setRanges("192.0.2.0/24"), []string{"del " + cidr + "203.0.113.0/24", "add " + cidr + "192.0.2.0/24"})
	// A node IP inside the ranges: the LB IP itself passes, one rule more
	// in each table's SOURCE-RANGES chain, before the DROP.
	step("node IP inside", func() { st.NodeIPs = addrs(t, []string{"192.0.2.9"}) }, []string{
		"add SWITCHYARD-LB-SOURCE-IP 198.51.100.10,tcp:80,198.51.100.10",
		`insert filter -A SWITCHYARD-SOURCE-RANGES-FW -m comment --comment "load balancer IP as source from this node, a node IP being inside the ranges" -m set --match-set SWITCHYARD-LB-SOURCE-IP dst,dst,src -j RETURN`,
		`insert mangle -A SWITCHYARD-SOURCE-RANGES-FW -m comment --comment "load balancer IP as source from this node, a node IP being inside the ranges" -m set --match-set SWITCHYARD-LB-SOURCE-IP dst,dst,src -j RETURN`,
	})
	step("node IP outside again", func() { st.NodeIPs = addrs(t, []string{"192.168.1.5"}) }, nil)
	step("endpoints gone", func() { delete(st.Endpoints, name) }, nil)
	if s := k.sets.Dump(); !strings.Contains(s, "198.51.100.10,tcp:80,192.0.2.0/24") {
		t.Errorf("firewall lost with the endpoints:\n%s", s)
	}
	step("ranges removed", setRanges(), nil)
	for _, table := range []string{TableFilter, TableMangle} {
		if chains, _ := k.tables.ListChains(table); slices.Contains(chains, chainSourceRanges) {
			t.Errorf("%s %s left after the last ranges went", table, chainSourceRanges)
		}
		if rules, _ := k.tables.ListRules(table, chainFirewall); len(rules) != 0 {
			t.Errorf("%s %s still has %v", table, chainFirewall, rules)
		}
	}
	step("ranges back", setRanges("192.0.2.0/24"), nil)

	// The hooks are first in INPUT and OUTPUT, in front of foreign rules
	// (in INPUT after the reset of marked connections), and Cleanup takes
	// everything of ours from filter and mangle.
	if in, _ := k.tables.ListRules(TableFilter, builtinInput); len(in) != 3 || !isOurHook(in[0]) || in[0].Target() != chainResetMarked ||
		!isOurHook(in[1]) || in[1].Target() != chainFirewall || in[2].Target() != "FOREIGN-INPUT" {
		t.Errorf("filter INPUT: %v, want our reset and firewall hooks, then the foreign jump", in)
	}
	if err := k.proxier(t, testConfig()).Cleanup(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, table := range []string{TableFilter, TableMangle} {
		for _, c := range builtinChains(table) {
			rules, _ := k.tables.ListRules(table, c)
			for _, r := range rules {
				if isOurHook(r) {
					t.Errorf("after Cleanup %s %s has %s", table, c, r.Line(c))
				}
			}
		}
		if chains, _ := k.tables.ListChains(table); slices.ContainsFunc(chains, isOwned) {
			t.Errorf("after Cleanup %s has %v", table, chains)
		}
	}
}

// The fake refuses what the kernel refuses in hash:ip,port,net.
func TestFakeIPSetIPPortNet(t *testing.T) {
	f := NewFakeIPSet()
	for _, spec := range []SetSpec{
		{Name: "N", Type: HashIPPortNet, Family: FamilyINet},
		{Name: "I", Type: HashIPPortIP, Family: FamilyINet},
	} {
		if err := f.Create(spec); err != nil {
			t.Fatal(err)
		}
	}
	ip := netip.MustParseAddr("198.51.100.10")
	if err := f.Add("N", IPPortNetMember(ip, protoTCP, 80, netip.MustParsePrefix("10.0.0.0/8"))); err != nil {
		t.Fatal(err)
	}
	for what, c := range map[string]struct {
		set string
		m   Member
	}{
		"prefix length 0":               {"N", IPPortNetMember(ip, protoTCP, 80, netip.MustParsePrefix("0.0.0.0/0"))},
		"no network":                    {"N", IPPortMember(ip, protoTCP, 80)},
		"network family differs":        {"N", IPPortNetMember(ip, protoTCP, 80, netip.MustParsePrefix("fd00::/64"))},
		"network as first element":      {"N", Member{Net: netip.MustParsePrefix("198.51.100.0/24"), Proto: protoTCP, Port: 80, Net2: netip.MustParsePrefix("10.0.0.0/8")}},
		"a second address instead":      {"N", IPPortIPMember(ip, protoTCP, 80, ip)},
		"a network in hash:ip,port,ip":  {"I", IPPortNetMember(ip, protoTCP, 80, netip.MustParsePrefix("10.0.0.0/8"))},
		"already there, as the network": {"N", IPPortNetMember(ip, protoTCP, 80, netip.MustParsePrefix("10.1.2.3/8"))},
	} {
		if err := f.Add(c.set, c.m); err == nil {
			t.Errorf("%s: %s accepted in %s", what, c.m, c.set)
		}
	}
}
