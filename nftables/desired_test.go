package nftables

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/switchyard/switchyard/dataplane"
)

// TestDesiredServicePortRules checks the rules of one Service port chain
// for the masquerade policies, without a kernel.
func TestDesiredServicePortRules(t *testing.T) {
	bit3 := 3
	tests := []struct {
		name string
		cfg  Config
		svc  svc
		want string
	}{{
		name: "cluster IP only",
		cfg:  Config{ClusterCIDRs: clusterCIDR},
		svc:  web(),
		want: `
			ip daddr 10.96.0.10 jump mark-if-outside-cluster
			dnat to numgen random mod 2 map { anonymous } comment "endpoints 2 digest 45147d6050de"`,
	}, {
		name: "node port, no cluster CIDR",
		svc:  withNodePort(web(), 30080),
		want: `
			ip daddr != 10.96.0.10 jump mark-for-masquerade
			dnat to numgen random mod 2 map { anonymous } comment "endpoints 2 digest 45147d6050de"`,
	}, {
		name: "masquerade all",
		cfg:  Config{MasqueradeAll: true, MasqueradeBit: &bit3, ClusterCIDRs: clusterCIDR},
		svc:  withNodePort(web(), 30080),
		want: `
			jump mark-for-masquerade
			dnat to numgen random mod 2 map { anonymous } comment "endpoints 2 digest 45147d6050de"`,
	}, {
		name: "external IP without cluster IP",
		cfg:  Config{ClusterCIDRs: clusterCIDR},
		svc: svc{ns: "default", name: "ext", proto: dataplane.UDP, svcPort: 53, externalIPs: []string{"192.0.2.1"},
			endpoints: []string{"10.244.1.1:53"}},
		want: `
			jump mark-for-masquerade
			dnat to numgen random mod 1 map { anonymous } comment "endpoints 1 digest cb49b67813a7"`,
	}, {
		name: "only terminating endpoints serve",
		cfg:  Config{ClusterCIDRs: clusterCIDR},
		svc: svc{ns: "default", name: "t", proto: dataplane.TCP, svcPort: 80, clusterIPs: []string{"10.96.0.5"},
			terminating: []string{"10.244.1.1:80", "10.244.1.2:80", "10.244.1.3:80"}},
		want: `
			ip daddr 10.96.0.5 jump mark-if-outside-cluster
			dnat to numgen random mod 3 map { anonymous } comment "endpoints 3 digest 463bee177305"`,
	}, {
		name: "max connections per backend",
		cfg:  Config{ClusterCIDRs: clusterCIDR},
		svc:  func() svc { s := web(); s.maxConns = 2; return s }(),
		want: `
			ip daddr 10.96.0.10 jump mark-if-outside-cluster
			add @limit-2-OSC5D42R-default/web/tcp/http { numgen random mod 2 map { anonymous } ct count 2 } dnat to numgen random mod 2 map { anonymous } comment "endpoints 2 digest 45147d6050de"
			reject with tcp reset comment "over 2 connections per backend"`,
	}, {
		name: "max connections per backend with session affinity",
		cfg:  Config{ClusterCIDRs: clusterCIDR},
		svc:  func() svc { s := web(); s.maxConns = 1; s.affinity = 10 * time.Second; return s }(),
		want: `
			ip daddr 10.96.0.10 jump mark-if-outside-cluster
			ip saddr map @aff-svc-OSC5D42R-default/web/tcp/http { anonymous } add @limit-1-OSC5D42R-default/web/tcp/http { ip saddr map @aff-svc-OSC5D42R-default/web/tcp/http ct count 1 } update @aff-svc-OSC5D42R-default/web/tcp/http { ip saddr : ip saddr map @aff-svc-OSC5D42R-default/web/tcp/http timeout 10s } dnat to ip saddr map @aff-svc-OSC5D42R-default/web/tcp/http comment "endpoints 2 digest 45147d6050de"
			ip saddr map @aff-svc-OSC5D42R-default/web/tcp/http { anonymous } reject with tcp reset comment "endpoints 2 digest 45147d6050de"
			add @limit-1-OSC5D42R-default/web/tcp/http { numgen random mod 2 map { anonymous } ct count 1 } delete @aff-svc-OSC5D42R-default/web/tcp/http { ip saddr } update @aff-svc-OSC5D42R-default/web/tcp/http { ip saddr : numgen random mod 2 map { anonymous } timeout 10s } dnat to numgen random mod 2 map { anonymous } comment "endpoints 2 digest 45147d6050de"
			reject with tcp reset comment "over 1 connections per backend"`,
	}, {
		name: "max connections per backend ignored for UDP",
		cfg:  Config{ClusterCIDRs: clusterCIDR},
		svc: svc{ns: "default", name: "u", proto: dataplane.UDP, svcPort: 53, clusterIPs: []string{"10.96.0.53"},
			endpoints: []string{"10.244.1.1:53"}, maxConns: 2},
		want: `
			ip daddr 10.96.0.53 jump mark-if-outside-cluster
			dnat to numgen random mod 1 map { anonymous } comment "endpoints 1 digest cb49b67813a7"`,
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := tc.cfg.withDefaults()
			if err != nil {
				t.Fatal(err)
			}
			st := newState(tc.svc)
			n := tc.svc.portName()
			ps := desiredServicePort(cfg, ipv4, st.Services[n], st.Endpoints[n], st.Weights[n], nodeOf(st))
			if ps == nil || len(ps.chains) == 0 {
				t.Fatalf("no chain for %v", n)
			}
			got := strings.Join(ruleTexts(ps.chains[0].rules), "\n")
			if want := strings.TrimSpace(dedent(tc.want)); got != want {
				t.Errorf("rules:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

// TestDesiredWeights: an endpoint of weight w takes w slots.
func TestDesiredWeights(t *testing.T) {
	r := dnatRule(ipv4, "svc-x", []dataplane.WeightedEndpoint{
		{Endpoint: dataplane.Endpoint{Addr: addrPort("10.0.0.1:80")}, Weight: 1},
		{Endpoint: dataplane.Endpoint{Addr: addrPort("10.0.0.2:80")}, Weight: 3},
	}, connLimit{})
	var got []string
	for _, e := range r.anons[0].elems {
		got = append(got, renderElement(e, r.anons[0].keyType, r.anons[0].dataType, true))
	}
	want := "0 : 10.0.0.1 . 80,1 : 10.0.0.2 . 80,2 : 10.0.0.2 . 80,3 : 10.0.0.2 . 80"
	if strings.Join(got, ",") != want || !strings.Contains(r.text, "mod 4 map") {
		t.Errorf("weighted map %v (rule %q), want %s and mod 4", got, r.text, want)
	}
}

func TestChunkElements(t *testing.T) {
	var elems []nftables.SetElement
	for range 5000 {
		elems = append(elems, nftables.SetElement{Key: make([]byte, 12), VerdictData: goTo(strings.Repeat("c", 60))})
	}
	chunks := chunkElements(elems)
	total := 0
	for _, c := range chunks {
		size := 0
		for _, e := range c {
			size += 48 + len(e.Key) + 32 + len(e.VerdictData.Chain)
		}
		if size > maxElementBytes {
			t.Errorf("chunk of %d bytes", size)
		}
		total += len(c)
	}
	if total != len(elems) || len(chunks) < 2 {
		t.Errorf("%d chunks holding %d elements", len(chunks), total)
	}
	if got := chunkElements(nil); len(got) != 1 || len(got[0]) != 0 {
		t.Errorf("chunkElements(nil) = %v", got)
	}
}

func TestNaturalCompare(t *testing.T) {
	for _, c := range []struct{ a, b string }{{"10.0.0.9", "10.0.0.10"}, {"2 : x", "10 : x"}, {"a", "b"}, {"tcp . 80", "udp . 53"}} {
		if naturalCompare(c.a, c.b) >= 0 || naturalCompare(c.b, c.a) <= 0 {
			t.Errorf("naturalCompare(%q, %q) wrong", c.a, c.b)
		}
	}
}

func TestServicePortChainName(t *testing.T) {
	n := dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: "ns", Name: "svc"}, Port: "http", Protocol: dataplane.TCP}
	got := servicePortChain(n)
	if !strings.HasPrefix(got, "svc-") || !strings.HasSuffix(got, "-ns/svc/tcp/http") || len(got) != len("svc-12345678-ns/svc/tcp/http") {
		t.Errorf("chain name %q", got)
	}
	n.Port = ""
	if other := servicePortChain(n); other == got || !strings.HasSuffix(other, "-ns/svc/tcp") {
		t.Errorf("chain name without port name %q", other)
	}
}

// describePort renders a port's chains and elements as text.
func describePort(ps *servicePortState) string {
	var lines []string
	for _, c := range ps.chains {
		lines = append(lines, "chain "+c.name)
		for _, r := range ruleTexts(c.rules) {
			lines = append(lines, "  "+r)
		}
	}
	types := map[string]nftables.SetDatatype{}
	for _, s := range setSpecs(ipv4) {
		types[s.name] = s.keyType
	}
	var elems []string
	for _, es := range ps.elems {
		for _, e := range es {
			l := e.set + " " + renderFields(typeNames(types[e.set]), []byte(e.key))
			if e.chain != "" {
				l += " : " + e.chain
			}
			elems = append(elems, l)
		}
	}
	slices.Sort(elems)
	for _, s := range ps.sets {
		lines = append(lines, "map "+s.name)
	}
	return strings.Join(append(lines, elems...), "\n")
}

// TestDesiredPolicies checks, without a kernel, where each kind of
// traffic goes for the traffic policies, affinity and source ranges.
func TestDesiredPolicies(t *testing.T) {
	base := func() svc {
		return svc{ns: "d", name: "s", proto: dataplane.TCP, svcPort: 80, nodePort: 30080,
			clusterIPs: []string{"10.96.0.1"}, lbIPs: []string{"198.51.100.1"},
			endpoints: []string{"10.244.1.1:80"}, remote: []string{"10.244.9.1:80"}}
	}
	tests := []struct {
		name string
		cfg  Config
		edit func(*svc)
		want string
	}{{
		name: "external policy Local",
		cfg:  Config{ClusterCIDRs: clusterCIDR},
		edit: func(s *svc) { s.etpLocal = true },
		want: `
			chain ext-5KICH3GC-d/s/tcp
			  ip saddr 10.244.0.0/16 goto svc-5KICH3GC-d/s/tcp comment "short-circuit pod traffic"
			  fib saddr type local jump mark-for-masquerade comment "masquerade local traffic"
			  fib saddr type local goto svc-5KICH3GC-d/s/tcp comment "short-circuit local traffic"
			  goto local-5KICH3GC-d/s/tcp
			chain local-5KICH3GC-d/s/tcp
			  dnat to numgen random mod 1 map { anonymous } comment "endpoints 1 digest a856e96dfa15"
			chain svc-5KICH3GC-d/s/tcp
			  ip daddr 10.96.0.1 jump mark-if-outside-cluster
			  dnat to numgen random mod 2 map { anonymous } comment "endpoints 2 digest 9b574448a05d"
			service-ips 10.96.0.1 . tcp . 80 : svc-5KICH3GC-d/s/tcp
			service-ips 198.51.100.1 . tcp . 80 : ext-5KICH3GC-d/s/tcp
			service-nodeports tcp . 30080 : ext-5KICH3GC-d/s/tcp`,
	}, {
		name: "external policy Local, no local endpoint, no cluster CIDR",
		edit: func(s *svc) { s.etpLocal, s.endpoints = true, nil },
		want: `
			chain ext-5KICH3GC-d/s/tcp
			  fib saddr type local jump mark-for-masquerade comment "masquerade local traffic"
			  fib saddr type local goto svc-5KICH3GC-d/s/tcp comment "short-circuit local traffic"
			chain svc-5KICH3GC-d/s/tcp
			  dnat to numgen random mod 1 map { anonymous } comment "endpoints 1 digest deba6f340558"
			no-local-endpoint-nodeports tcp . 30080
			no-local-endpoint-services 198.51.100.1 . tcp . 80
			service-ips 10.96.0.1 . tcp . 80 : svc-5KICH3GC-d/s/tcp
			service-ips 198.51.100.1 . tcp . 80 : ext-5KICH3GC-d/s/tcp
			service-nodeports tcp . 30080 : ext-5KICH3GC-d/s/tcp`,
	}, {
		name: "internal policy Local, no local endpoint",
		cfg:  Config{ClusterCIDRs: clusterCIDR},
		edit: func(s *svc) { s.itpLocal, s.endpoints, s.nodePort, s.lbIPs = true, nil, 0, nil },
		want: `
			no-local-endpoint-services 10.96.0.1 . tcp . 80`,
	}, {
		name: "both policies Local",
		cfg:  Config{ClusterCIDRs: clusterCIDR},
		edit: func(s *svc) { s.itpLocal, s.etpLocal, s.lbIPs, s.nodePort = true, true, nil, 0 },
		want: `
			chain local-5KICH3GC-d/s/tcp
			  ip daddr 10.96.0.1 jump mark-if-outside-cluster
			  dnat to numgen random mod 1 map { anonymous } comment "endpoints 1 digest a856e96dfa15"
			service-ips 10.96.0.1 . tcp . 80 : local-5KICH3GC-d/s/tcp`,
	}, {
		name: "no endpoints at all: rejected, firewall kept",
		cfg:  Config{ClusterCIDRs: clusterCIDR},
		edit: func(s *svc) {
			s.etpLocal, s.endpoints, s.remote, s.sourceRanges = true, nil, nil, []string{"192.0.2.0/24"}
		},
		want: `
			chain fw-5KICH3GC-d/s/tcp
			  ip saddr 192.0.2.0/24 return
			  drop
			firewall-ips 198.51.100.1 . tcp . 80 : fw-5KICH3GC-d/s/tcp
			no-endpoint-nodeports tcp . 30080
			no-endpoint-services 10.96.0.1 . tcp . 80
			no-endpoint-services 198.51.100.1 . tcp . 80`,
	}, {
		name: "session affinity",
		cfg:  Config{ClusterCIDRs: clusterCIDR},
		edit: func(s *svc) { s.affinity, s.nodePort, s.lbIPs, s.remote = 10*time.Second, 0, nil, nil },
		want: `
			chain svc-5KICH3GC-d/s/tcp
			  ip daddr 10.96.0.1 jump mark-if-outside-cluster
			  ip saddr map @aff-svc-5KICH3GC-d/s/tcp { anonymous } update @aff-svc-5KICH3GC-d/s/tcp { ip saddr : ip saddr map @aff-svc-5KICH3GC-d/s/tcp timeout 10s } dnat to ip saddr map @aff-svc-5KICH3GC-d/s/tcp comment "endpoints 1 digest a856e96dfa15"
			  delete @aff-svc-5KICH3GC-d/s/tcp { ip saddr } update @aff-svc-5KICH3GC-d/s/tcp { ip saddr : numgen random mod 1 map { anonymous } timeout 10s } dnat to numgen random mod 1 map { anonymous } comment "endpoints 1 digest a856e96dfa15"
			map aff-svc-5KICH3GC-d/s/tcp
			service-ips 10.96.0.1 . tcp . 80 : svc-5KICH3GC-d/s/tcp`,
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := tc.cfg.withDefaults()
			if err != nil {
				t.Fatal(err)
			}
			s := base()
			tc.edit(&s)
			st := newState(s)
			n := s.portName()
			ps := desiredServicePort(cfg, ipv4, st.Services[n], st.Endpoints[n], st.Weights[n], nodeOf(st))
			got := describePort(ps)
			if want := strings.TrimSpace(dedent(tc.want)); got != want {
				t.Errorf("got:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

// TestFirewallRules: kube-proxy's allowFromNode. Sources in the ranges
// pass; the load balancer IPs themselves pass as sources only when one of
// the node's addresses is in a range; nothing else does, the node's own
// address included.
func TestFirewallRules(t *testing.T) {
	lbs := []frontend{
		{addr: netip.MustParseAddr("198.51.100.2"), proto: 6, port: 80},
		{addr: netip.MustParseAddr("198.51.100.1"), proto: 6, port: 80},
		{addr: netip.MustParseAddr("198.51.100.1"), proto: 6, port: 443},
	}
	ranges := prefixes("192.0.2.0/24", "203.0.113.0/25")
	tests := []struct {
		name    string
		nodeIPs []netip.Addr
		want    string
	}{{
		name: "no node address known",
		want: `
			ip saddr 192.0.2.0/24 return
			ip saddr 203.0.113.0/25 return
			drop`,
	}, {
		name:    "node address outside the ranges",
		nodeIPs: []netip.Addr{netip.MustParseAddr("203.0.113.200"), netip.MustParseAddr("2001:db8::1")},
		want: `
			ip saddr 192.0.2.0/24 return
			ip saddr 203.0.113.0/25 return
			drop`,
	}, {
		name:    "node address inside a range: the VIPs pass as sources",
		nodeIPs: []netip.Addr{netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("203.0.113.7")},
		want: `
			ip saddr 192.0.2.0/24 return
			ip saddr 203.0.113.0/25 return
			ip saddr 198.51.100.1 return comment "load balancer IP from this node"
			ip saddr 198.51.100.2 return comment "load balancer IP from this node"
			drop`,
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := strings.Join(ruleTexts(firewallRules(ipv4, ranges, lbs, tc.nodeIPs)), "\n")
			if want := strings.TrimSpace(dedent(tc.want)); got != want {
				t.Errorf("rules:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

// TestFamilyPrefixesMapped: an IPv4-mapped prefix (from a config file or
// an older model) is used as the IPv4 prefix it covers, not crashed on.
func TestFamilyPrefixesMapped(t *testing.T) {
	in := []netip.Prefix{netip.MustParsePrefix("::ffff:10.0.0.0/104"), netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("2001:db8::/32")}
	got4, got6 := ipv4.prefixes(in), ipv6.prefixes(in)
	if want := prefixes("10.0.0.0/8", "192.0.2.0/24"); !slices.Equal(got4, want) {
		t.Errorf("ipv4 %v, want %v", got4, want)
	}
	if want := prefixes("2001:db8::/32"); !slices.Equal(got6, want) {
		t.Errorf("ipv6 %v, want %v", got6, want)
	}
	// Rendering the mapped range must not panic.
	_ = firewallRules(ipv4, got4, nil, nil)
}
