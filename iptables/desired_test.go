package iptables

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/switchyard/switchyard/dataplane"
)

func TestDesiredGolden(t *testing.T) {
	cfg := testConfig()
	cfg.RandomFully = true
	d := Desired(smallState(t), cfg)
	checkGolden(t, "desired_small.golden", d.Dump())

	again := Desired(smallState(t), cfg)
	if again.Dump() != d.Dump() {
		t.Error("Desired is not deterministic")
	}
}

func TestDesiredEmptyState(t *testing.T) {
	d := Desired(dataplane.NewState(), testConfig())
	// Every set exists (rules may reference any), all empty, smallest size.
	if len(d.Sets) != len(setDefs(FamilyINet)) {
		t.Fatalf("got %d sets, want %d", len(d.Sets), len(setDefs(FamilyINet)))
	}
	for _, s := range d.Sets {
		if len(s.Members) != 0 {
			t.Errorf("set %s has members", s.Spec.Name)
		}
		if s.Spec.MaxElem != 65536 {
			t.Errorf("set %s maxelem %d, want 65536", s.Spec.Name, s.Spec.MaxElem)
		}
	}
	// Only the always-needed chains.
	var names []string
	for _, c := range d.Chains {
		names = append(names, c.Table+"/"+c.Name)
	}
	want := "nat/SWITCHYARD-MARK-MASQ nat/SWITCHYARD-SERVICES nat/SWITCHYARD-POSTROUTING filter/SWITCHYARD-RESET-MARKED filter/SWITCHYARD-FORWARD " +
		"filter/SWITCHYARD-PROXY-FIREWALL mangle/SWITCHYARD-PROXY-FIREWALL"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("chains: got %s, want %s", got, want)
	}
	for _, c := range d.Chains {
		for _, r := range c.Rules {
			if r.value("--match-set") != "" {
				t.Errorf("rule matching an empty set: %s", r.Line(c.Name))
			}
		}
	}
}

func TestDesiredNamesFit(t *testing.T) {
	for _, fam := range []Family{FamilyINet, FamilyINet6} {
		other := FamilyINet6
		if fam == FamilyINet6 {
			other = FamilyINet
		}
		for _, d := range setDefs(fam) {
			if len(d.name) > maxSetNameLen || !ownsSet(fam, d.name) || ownsSet(other, d.name) {
				t.Errorf("%s set name %q: too long, not owned or owned by %s too", fam, d.name, other)
			}
			if tmp := tempSetName(fam, d.name); len(tmp) > maxSetNameLen || !ownsSet(fam, tmp) || ownsSet(other, tmp) || tmp == d.name {
				t.Errorf("%s temp set name %q for %q", fam, tmp, d.name)
			}
		}
	}
	for _, c := range []string{chainServices, chainPostrouting, chainMarkMasq, chainClusterIP, chainNodePort, chainLoadBalancer, chainExternalIP, chainForward,
		chainFirewall, chainSourceRanges, chainNoLocalEndpoint, chainResetMarked} {
		if len(c) > maxChainNameLen || !isOwned(c) {
			t.Errorf("chain name %q: too long or not owned", c)
		}
	}
}

// The cluster-IP rule in SWITCHYARD-SERVICES for each masquerade policy.
func TestDesiredClusterIPPolicy(t *testing.T) {
	one := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
	two := append(one, netip.MustParsePrefix("10.245.0.0/16"), netip.MustParsePrefix("fd00::/64"))
	for _, tc := range []struct {
		name     string
		cfg      Config
		rule     string
		subChain []string
	}{
		{"masquerade all", Config{MasqueradeAll: true, ClusterCIDRs: one},
			`-A SWITCHYARD-SERVICES -m comment --comment "cluster IP traffic, masquerade all" -m set --match-set SWITCHYARD-CLUSTER-IP dst,dst -j SWITCHYARD-MARK-MASQ`, nil},
		{"one cluster CIDR", Config{ClusterCIDRs: one},
			`-A SWITCHYARD-SERVICES ! -s 10.244.0.0/16 -m comment --comment "cluster IP traffic from outside the cluster CIDR" -m set --match-set SWITCHYARD-CLUSTER-IP dst,dst -j SWITCHYARD-MARK-MASQ`, nil},
		{"two cluster CIDRs (IPv6 one ignored)", Config{ClusterCIDRs: two},
			`-A SWITCHYARD-SERVICES -m comment --comment "cluster IP traffic" -m set --match-set SWITCHYARD-CLUSTER-IP dst,dst -j SWITCHYARD-CLUSTER-IP`,
			[]string{
				`-A SWITCHYARD-CLUSTER-IP -s 10.244.0.0/16 -m comment --comment "from cluster CIDR 10.244.0.0/16" -j RETURN`,
				`-A SWITCHYARD-CLUSTER-IP -s 10.245.0.0/16 -m comment --comment "from cluster CIDR 10.245.0.0/16" -j RETURN`,
				`-A SWITCHYARD-CLUSTER-IP -m comment --comment "cluster IP traffic from outside the cluster CIDRs" -j SWITCHYARD-MARK-MASQ`,
			}},
		{"no cluster CIDR", Config{},
			`-A SWITCHYARD-SERVICES -m comment --comment "node traffic from a cluster IP" -m set --match-set SWITCHYARD-CLUSTER-IP src,dst -j SWITCHYARD-MARK-MASQ`, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := Desired(smallState(t), tc.cfg)
			var got []string
			for _, r := range d.Chain(TableNAT, chainServices).Rules {
				if strings.Contains(r.String(), setClusterIP) {
					got = append(got, r.Line(chainServices))
				}
			}
			if len(got) != 1 || got[0] != tc.rule {
				t.Errorf("cluster IP rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), tc.rule)
			}
			sub := d.Chain(TableNAT, chainClusterIP)
			if (sub != nil) != (tc.subChain != nil) {
				t.Fatalf("SWITCHYARD-CLUSTER-IP chain present=%v, want %v", sub != nil, tc.subChain != nil)
			}
			if sub != nil {
				var lines []string
				for _, r := range sub.Rules {
					lines = append(lines, r.Line(chainClusterIP))
				}
				if strings.Join(lines, "\n") != strings.Join(tc.subChain, "\n") {
					t.Errorf("SWITCHYARD-CLUSTER-IP:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(tc.subChain, "\n"))
				}
			}
		})
	}
}

// externalTrafficPolicy: Local frontends go to the LOCAL sets too, and the
// chains return for them before marking.
func TestDesiredLocalPolicy(t *testing.T) {
	st := newState(t, svc{ns: "default", name: "edge", proto: dataplane.TCP, svcPort: 443, nodePort: 30443,
		clusterIPs: []string{"10.96.0.44"}, externalIPs: []string{"192.0.2.44"}, lbIPs: []string{"198.51.100.44"}, local: true,
		endpoints: []string{"10.244.1.9:8443"}})
	cfg := testConfig()
	cfg.MasqueradeBit = ptr(3)
	d := Desired(st, cfg)
	for set, member := range map[string]string{
		setExternalIPLocal:   "192.0.2.44,tcp:443",
		setLoadBalancerLocal: "198.51.100.44,tcp:443",
		setNodePortLocalTCP:  "0.0.0.0/1,tcp:30443",
		setNodePortTCP:       "0.0.0.0/1,tcp:30443",
	} {
		s := d.Set(set).Sorted()
		if len(s) == 0 || s[0].String() != member {
			t.Errorf("set %s: %v, want [%s]", set, s, member)
		}
	}
	dump := d.Dump()
	for _, want := range []string{
		`-A SWITCHYARD-NODE-PORT -p tcp -m comment --comment "TCP node port with externalTrafficPolicy Local keeps the client address" -m set --match-set SWITCHYARD-NODE-PORT-LOCAL-TCP dst,dst -j RETURN`,
		`-A SWITCHYARD-LOAD-BALANCER -m comment --comment "load balancer IP with externalTrafficPolicy Local keeps the client address" -m set --match-set SWITCHYARD-LOAD-BALANCER-LOCAL dst,dst -j RETURN`,
		`-A SWITCHYARD-EXTERNAL-IP -m comment --comment "external IP with externalTrafficPolicy Local keeps the client address" -m set --match-set SWITCHYARD-EXTERNAL-IP-LOCAL dst,dst -j RETURN`,
		`-A SWITCHYARD-MARK-MASQ -m comment --comment "mark service traffic for masquerade" -j MARK --set-xmark 0x8/0x8`,
		`-A SWITCHYARD-POSTROUTING -m comment --comment "clear the masquerade mark" -j MARK --set-xmark 0x0/0x8`,
	} {
		if !strings.Contains(dump, want+"\n") {
			t.Errorf("missing rule %s", want)
		}
	}
}

// Sets are sized from content with no 65536 ceiling.
func TestMaxElemFor(t *testing.T) {
	for n, want := range map[int]uint32{0: 65536, 1: 65536, 32768: 65536, 32769: 131072, 65536: 131072, 70000: 262144, 1 << 20: 1 << 21} {
		if got := maxElemFor(n); got != want {
			t.Errorf("maxElemFor(%d) = %d, want %d", n, got, want)
		}
	}
}

// Every rule carries a comment.
func TestDesiredRulesCommented(t *testing.T) {
	cfg := testConfig()
	cfg.ClusterCIDRs = append(cfg.ClusterCIDRs, netip.MustParsePrefix("10.245.0.0/16"))
	st := smallState(t)
	addService(t, st, svc{ns: "x", name: "y", proto: dataplane.SCTP, svcPort: 1, nodePort: 30001, clusterIPs: []string{"10.96.0.1"}, lbIPs: []string{"198.51.100.1"}, externalIPs: []string{"192.0.2.1"}, local: true})
	d := Desired(st, cfg)
	for _, c := range d.Chains {
		for _, r := range c.Rules {
			if r.Comment() == "" {
				t.Errorf("rule without comment: %s", r.Line(c.Name))
			}
		}
	}
	for _, h := range d.Hooks {
		if !isOurHook(h.Rule) {
			t.Errorf("hook not recognized as ours: %s", h.Rule)
		}
	}
}

// IPv6 is computed like IPv4 with its own set names.
func TestDesiredIPv6Family(t *testing.T) {
	st := newState(t, svc{ns: "default", name: "dual", proto: dataplane.SCTP, svcPort: 80, nodePort: 30080, local: true,
		clusterIPs: []string{"10.96.0.10", "fd00:96::10"}, lbIPs: []string{"2001:db8::10"}, endpoints: []string{"[fd00:244::2]:8080", "10.244.1.2:8080"}})
	cfg := Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/64")}}
	d := desiredFamily(st, cfg, FamilyINet6)
	seen := map[string]bool{}
	for _, s := range d.Sets {
		if len(s.Spec.Name) > maxSetNameLen || !isOwned(s.Spec.Name) || seen[s.Spec.Name] || s.Spec.Family != FamilyINet6 {
			t.Errorf("IPv6 set %+v: name too long, not owned, duplicate or wrong family", s.Spec)
		}
		seen[s.Spec.Name] = true
		for m := range s.Members {
			if why := validMember(s.Spec, m); why != "" {
				t.Errorf("set %s member %s: %s", s.Spec.Name, m, why)
			}
		}
	}
	if got := d.Set("SWITCHYARD6-NODE-PORT-LCL-SCTP").Sorted(); len(got) != 2 || got[1].String() != "8000::/1,sctp:30080" {
		t.Errorf("IPv6 local SCTP NodePort set: %v", got)
	}
	if got := d.Set("SWITCHYARD6-LOOP-BACK").Sorted(); len(got) != 1 || got[0].String() != "fd00:244::2,sctp:8080,fd00:244::2" {
		t.Errorf("IPv6 loop-back set: %v", got)
	}
	dump := d.Dump()
	for _, want := range []string{
		`-A SWITCHYARD-SERVICES -s ::1/128 -m comment --comment "localhost traffic is not proxied" -j RETURN`,
		`-A SWITCHYARD-SERVICES ! -s fd00:244::/64 -m comment --comment "cluster IP traffic from outside the cluster CIDR" -m set --match-set SWITCHYARD6-CLUSTER-IP dst,dst -j SWITCHYARD-MARK-MASQ`,
		`--match-set SWITCHYARD6-LOAD-BALANCER-LOCAL dst,dst -j RETURN`,
	} {
		if !strings.Contains(dump, want) {
			t.Errorf("IPv6 dump lacks %s", want)
		}
	}
	if strings.Contains(dump, "10.") {
		t.Errorf("IPv4 address in the IPv6 state:\n%s", dump)
	}
}

// Bit 0 is a valid masquerade bit, distinct from "use the default".
func TestDesiredMasqueradeBitZero(t *testing.T) {
	cfg := testConfig()
	cfg.MasqueradeBit = ptr(0)
	dump := Desired(dataplane.NewState(), cfg).Dump()
	if !strings.Contains(dump, "-j MARK --set-xmark 0x1/0x1") {
		t.Fatalf("bit 0 not used:\n%s", dump)
	}
	cfg.MasqueradeBit = nil
	if dump := Desired(dataplane.NewState(), cfg).Dump(); !strings.Contains(dump, "-j MARK --set-xmark 0x4000/0x4000") {
		t.Fatalf("default bit not 14:\n%s", dump)
	}
}
