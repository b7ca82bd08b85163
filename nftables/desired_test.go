package nftables

import (
	"strings"
	"testing"

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
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := tc.cfg.withDefaults()
			if err != nil {
				t.Fatal(err)
			}
			st := newState(tc.svc)
			n := tc.svc.portName()
			ps := desiredServicePort(cfg, ipv4, st.Services[n], st.Endpoints[n])
			if ps == nil || ps.chain == "" {
				t.Fatalf("no chain for %v", n)
			}
			got := strings.Join(ruleTexts(ps.rules), "\n")
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
	})
	var got []string
	for _, e := range r.anon.elems {
		got = append(got, renderElement(e, r.anon.keyType, r.anon.dataType, true))
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
