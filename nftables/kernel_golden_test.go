package nftables

import (
	"testing"
	"time"

	"github.com/switchyard/switchyard/dataplane"
)

// web is the usual test Service: cluster IP, two ready endpoints.
func web() svc {
	return svc{ns: "default", name: "web", port: "http", proto: dataplane.TCP, svcPort: 80,
		clusterIPs: []string{"10.96.0.10"}, endpoints: []string{"10.244.1.2:8080", "10.244.2.3:8080"}}
}

func withNodePort(s svc, np uint16) svc { s.nodePort = np; return s }

var clusterCIDR = prefixes("10.244.0.0/16")

// TestKernelGolden programs a fresh namespace for each State, compares the
// kernel's table with a golden dump, and checks that syncing again, from
// the same Proxier or from a new one (a restart), writes nothing.
func TestKernelGolden(t *testing.T) {
	requireKernel(t)
	bit0 := 0
	tests := []struct {
		name string
		cfg  Config
		svcs []svc
	}{{
		name: "clusterip",
		cfg:  Config{ClusterCIDRs: clusterCIDR},
		svcs: []svc{web()},
	}, {
		name: "nodeport-external-lb",
		cfg:  Config{ClusterCIDRs: clusterCIDR, ConntrackDropInvalid: true},
		svcs: []svc{func() svc {
			s := withNodePort(web(), 30080)
			s.externalIPs, s.lbIPs = []string{"192.0.2.10"}, []string{"198.51.100.10", "198.51.100.11"}
			return s
		}()},
	}, {
		name: "no-endpoints",
		cfg:  Config{ClusterCIDRs: clusterCIDR},
		svcs: []svc{
			{ns: "default", name: "empty", proto: dataplane.TCP, svcPort: 80, nodePort: 30081, clusterIPs: []string{"10.96.0.11"}, externalIPs: []string{"192.0.2.11"}},
			{ns: "default", name: "empty-udp", proto: dataplane.UDP, svcPort: 53, clusterIPs: []string{"10.96.0.12"}},
		},
	}, {
		name: "terminating-endpoints",
		cfg:  Config{ClusterCIDRs: clusterCIDR},
		svcs: []svc{
			// No ready endpoint: serving terminating ones take traffic.
			{ns: "default", name: "draining", proto: dataplane.TCP, svcPort: 80, clusterIPs: []string{"10.96.0.20"},
				terminating: []string{"10.244.1.7:80", "10.244.2.7:80"}},
			// A ready one exists: the terminating one gets nothing.
			{ns: "default", name: "mixed", proto: dataplane.TCP, svcPort: 80, clusterIPs: []string{"10.96.0.21"},
				endpoints: []string{"10.244.1.8:80"}, terminating: []string{"10.244.2.8:80"}},
		},
	}, {
		name: "udp-sctp-multiport",
		cfg:  Config{ClusterCIDRs: clusterCIDR},
		svcs: []svc{
			{ns: "kube-system", name: "dns", port: "dns", proto: dataplane.UDP, svcPort: 53, clusterIPs: []string{"10.96.0.53"},
				endpoints: []string{"10.244.1.5:53", "10.244.2.5:53"}},
			{ns: "kube-system", name: "dns", port: "dns-tcp", proto: dataplane.TCP, svcPort: 53, clusterIPs: []string{"10.96.0.53"},
				endpoints: []string{"10.244.1.5:53", "10.244.2.5:53"}},
			{ns: "default", name: "sig", proto: dataplane.SCTP, svcPort: 3868, nodePort: 30868, clusterIPs: []string{"10.96.0.68"},
				endpoints: []string{"10.244.1.9:3868"}},
		},
	}, {
		name: "masquerade-all-bit0",
		cfg:  Config{MasqueradeAll: true, MasqueradeBit: &bit0, ClusterCIDRs: clusterCIDR, ConntrackDropInvalid: true},
		svcs: []svc{withNodePort(web(), 30080)},
	}, {
		name: "two-cluster-cidrs",
		cfg:  Config{ClusterCIDRs: prefixes("10.244.0.0/16", "10.245.0.0/16", "fd00:244::/56")},
		svcs: []svc{web()},
	}, {
		name: "no-cluster-cidr",
		cfg:  Config{},
		svcs: []svc{withNodePort(web(), 30080)},
	}, {
		name: "nodeport-addresses",
		cfg:  Config{ClusterCIDRs: clusterCIDR, NodePortAddresses: prefixes("192.168.0.0/16", "172.16.5.0/24", "fd00::/8")},
		svcs: []svc{withNodePort(web(), 30080),
			{ns: "default", name: "empty", proto: dataplane.UDP, svcPort: 53, nodePort: 30053, clusterIPs: []string{"10.96.0.53"}}},
	}, {
		name: "nodeport-addresses-ipv6-only",
		cfg:  Config{ClusterCIDRs: clusterCIDR, NodePortAddresses: prefixes("fd00::/8")},
		svcs: []svc{withNodePort(web(), 30080)},
	}, {
		name: "dual-stack",
		cfg:  Config{ClusterCIDRs: prefixes("10.244.0.0/16", "fd00:244::/56")},
		svcs: []svc{
			{ns: "default", name: "ds", proto: dataplane.TCP, svcPort: 80, nodePort: 30080, clusterIPs: []string{"10.96.0.30", "fd00:96::30"},
				endpoints: []string{"10.244.1.2:80", "[fd00:244::2]:80"}},
			// IPv6 only: nothing in the ip table.
			{ns: "default", name: "v6", proto: dataplane.TCP, svcPort: 80, clusterIPs: []string{"fd00:96::31"},
				endpoints: []string{"[fd00:244::3]:80"}},
		},
	}, {
		name: "frontend-conflict",
		cfg:  Config{ClusterCIDRs: clusterCIDR},
		svcs: []svc{
			// Both claim 192.0.2.50:80; the first in name order keeps it.
			{ns: "a", name: "first", proto: dataplane.TCP, svcPort: 80, clusterIPs: []string{"10.96.0.41"}, externalIPs: []string{"192.0.2.50"},
				endpoints: []string{"10.244.1.41:80"}},
			{ns: "b", name: "second", proto: dataplane.TCP, svcPort: 80, clusterIPs: []string{"10.96.0.42"}, externalIPs: []string{"192.0.2.50"},
				endpoints: []string{"10.244.1.42:80"}},
		},
	}, {
		name: "shared-endpoint",
		cfg:  Config{ClusterCIDRs: clusterCIDR},
		svcs: []svc{
			// Two Services backed by the same pod: one hairpin element.
			{ns: "default", name: "a", proto: dataplane.TCP, svcPort: 80, clusterIPs: []string{"10.96.0.51"}, endpoints: []string{"10.244.1.5:80"}},
			{ns: "default", name: "b", proto: dataplane.TCP, svcPort: 81, clusterIPs: []string{"10.96.0.52"}, endpoints: []string{"10.244.1.5:81"}},
		},
	}, {
		name: "external-policy-local",
		cfg:  Config{ClusterCIDRs: clusterCIDR},
		svcs: []svc{
			// A local and a remote endpoint: outside traffic to the local
			// one, the node's and pods' to both.
			func() svc {
				s := withNodePort(web(), 30080)
				s.endpoints, s.remote = []string{"10.244.1.2:8080"}, []string{"10.244.9.3:8080"}
				s.lbIPs, s.etpLocal = []string{"198.51.100.10"}, true
				return s
			}(),
			// Only remote endpoints: outside traffic is dropped, the
			// node's and pods' still served.
			{ns: "default", name: "remote", proto: dataplane.TCP, svcPort: 80, nodePort: 30081, clusterIPs: []string{"10.96.0.11"},
				externalIPs: []string{"192.0.2.11"}, remote: []string{"10.244.9.4:80"}, etpLocal: true},
		},
	}, {
		name: "internal-policy-local",
		cfg:  Config{ClusterCIDRs: clusterCIDR},
		svcs: []svc{
			{ns: "default", name: "local", proto: dataplane.TCP, svcPort: 80, clusterIPs: []string{"10.96.0.12"},
				endpoints: []string{"10.244.1.2:80"}, remote: []string{"10.244.9.2:80"}, itpLocal: true},
			// No endpoint here: dropped, not rejected.
			{ns: "default", name: "remote", proto: dataplane.TCP, svcPort: 80, clusterIPs: []string{"10.96.0.13"},
				remote: []string{"10.244.9.3:80"}, itpLocal: true},
		},
	}, {
		name: "session-affinity",
		cfg:  Config{ClusterCIDRs: clusterCIDR},
		svcs: []svc{func() svc { s := web(); s.affinity = 3 * time.Hour; return s }()},
	}, {
		name: "load-balancer-source-ranges",
		cfg:  Config{ClusterCIDRs: clusterCIDR},
		svcs: []svc{
			func() svc {
				s := withNodePort(web(), 30080)
				s.lbIPs, s.sourceRanges = []string{"198.51.100.10", "198.51.100.11"}, []string{"192.168.77.0/24", "203.0.113.7/32", "fd00::/8"}
				return s
			}(),
			// Firewalled even without endpoints.
			{ns: "default", name: "empty", proto: dataplane.TCP, svcPort: 80, clusterIPs: []string{"10.96.0.11"},
				lbIPs: []string{"198.51.100.12"}, sourceRanges: []string{"10.0.0.0/8"}},
		},
	}, {
		name: "max-connections",
		cfg:  Config{ClusterCIDRs: clusterCIDR},
		svcs: []svc{
			// Cluster and local chains share the port's one count set.
			func() svc {
				s := withNodePort(web(), 30080)
				s.endpoints, s.remote = []string{"10.244.1.2:8080"}, []string{"10.244.9.3:8080"}
				s.etpLocal, s.maxConns = true, 100
				return s
			}(),
			{ns: "default", name: "sticky", proto: dataplane.TCP, svcPort: 80, clusterIPs: []string{"10.96.0.14"},
				endpoints: []string{"10.244.1.4:80"}, affinity: time.Hour, maxConns: 1},
			// IPv6: the set's key is ipv6_addr . inet_service.
			{ns: "default", name: "v6", proto: dataplane.TCP, svcPort: 80, clusterIPs: []string{"fd00:96::31"},
				endpoints: []string{"[fd00:244::3]:80"}, maxConns: 3},
			// UDP: not limited, no set.
			{ns: "default", name: "dns", proto: dataplane.UDP, svcPort: 53, clusterIPs: []string{"10.96.0.53"},
				endpoints: []string{"10.244.1.5:53"}, maxConns: 5},
		},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k := newKernelNS(t, "sy-nft-gold")
			p := k.proxier(t, tc.cfg)
			st := newState(tc.svcs...)
			mustSync(t, p, st, full)
			if msgs, flushes := k.cnt.take(); flushes != 1 || msgs == 0 {
				t.Errorf("first sync: %d messages in %d transactions, want some in 1", msgs, flushes)
			}
			golden(t, "kernel_"+tc.name, k.dump(t))

			mustSync(t, p, st, full)
			if msgs, flushes := k.cnt.take(); flushes != 0 {
				t.Errorf("second full sync sent %d messages, want none", msgs)
			}
			restarted := k.proxier(t, tc.cfg)
			mustSync(t, restarted, st, full)
			if msgs, flushes := k.cnt.take(); flushes != 0 {
				t.Errorf("full sync of a new Proxier sent %d messages, want none", msgs)
			}
		})
	}
}
