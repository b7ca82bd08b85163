package nftables

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/sysctl"
)

// TestKernelGoldenIPv6 programs IPv6 and dual-stack States (both tables),
// compares the dump with golden files and checks that a second sync and a
// restarted Proxier write nothing.
func TestKernelGoldenIPv6(t *testing.T) {
	requireKernel(t)
	be := func(hosts ...string) []string {
		var out []string
		for _, h := range hosts {
			out = append(out, hostPort(h, 8080))
		}
		return out
	}
	tests := []struct {
		name string
		cfg  Config
		svcs []svc
	}{{
		name: "ipv6-policies",
		cfg:  Config{ClusterCIDRs: clusterCIDRsDual, NodePortAddresses: prefixes("192.168.0.0/16", "fd00:77::/64"), ConntrackDropInvalid: true},
		svcs: []svc{
			// External policy Local (a local and a remote endpoint),
			// NodePort, load balancer IPs with source ranges of both
			// families, external IP.
			{ns: "default", name: "etp", proto: dataplane.TCP, svcPort: 80, nodePort: 30080,
				clusterIPs: []string{"fd00:10:96::10"}, externalIPs: []string{"fd00:203::10"}, lbIPs: []string{"fd00:198::10"},
				sourceRanges: []string{"fd00:77::/64", "192.168.77.0/24"}, endpoints: be("fd00:10:244::1:2"), remote: be("fd00:10:244::9:2"), etpLocal: true},
			// Session affinity, internal policy Local.
			{ns: "default", name: "sticky", proto: dataplane.TCP, svcPort: 80, clusterIPs: []string{"fd00:10:96::14"},
				endpoints: be("fd00:10:244::1:2", "fd00:10:244::2:2"), remote: be("fd00:10:244::9:3"), affinity: time.Hour},
			{ns: "default", name: "itp", proto: dataplane.TCP, svcPort: 80, clusterIPs: []string{"fd00:10:96::15"},
				endpoints: be("fd00:10:244::1:2"), remote: be("fd00:10:244::9:3"), itpLocal: true},
			// No endpoints at all; no IPv6 endpoint of a dual-stack Service.
			{ns: "default", name: "empty", proto: dataplane.UDP, svcPort: 53, nodePort: 30053, clusterIPs: []string{"fd00:10:96::53"}},
			{ns: "default", name: "v4-endpoints-only", proto: dataplane.TCP, svcPort: 80, nodePort: 30081,
				clusterIPs: []string{"10.96.0.81", "fd00:10:96::81"}, endpoints: []string{"10.244.1.2:80"}},
		},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k := newKernelNS(t, "sy-nft-gold6")
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

// manyServices6 is manyServices over IPv6, cluster IPs and endpoints in
// the ip6 table only.
func manyServices6(n int) []svc {
	out := make([]svc, 0, n)
	for i := range n {
		s := svc{ns: "bench", name: fmt.Sprintf("svc-%05d", i), port: "http", proto: dataplane.TCP, svcPort: 80,
			clusterIPs: []string{fmt.Sprintf("fd00:10:96::%x", i+1)}}
		if i%7 != 3 {
			s.endpoints = []string{fmt.Sprintf("[fd00:10:244::%x]:8080", i+1), fmt.Sprintf("[fd00:10:245::%x]:8080", i+1)}
		}
		if i%10 == 0 {
			s.nodePort = uint16(30000 + i%2700)
		}
		out = append(out, s)
	}
	return out
}

// TestPartialSyncMessagesIPv6: in the ip6 table too, a one-endpoint change
// costs the same number of messages at 20 Services as at 500, and partial
// syncs leave the kernel as a full sync would.
func TestPartialSyncMessagesIPv6(t *testing.T) {
	requireKernel(t)
	counts := map[int][]int{}
	for _, n := range []int{20, 500} {
		k := newKernelNS(t, "sy-nft-part6")
		p := k.proxier(t, Config{ClusterCIDRs: clusterCIDRsDual})
		svcs := manyServices6(n)
		// A dual-stack target: its IPv4 half must not cost anything when
		// only IPv6 endpoints change.
		target := svcs[7]
		target.clusterIPs = []string{"10.96.0.8", target.clusterIPs[0]}
		target.endpoints = append(target.endpoints, "10.244.0.8:8080")
		svcs[7] = target
		st := newState(svcs...)
		mustSync(t, p, st, full)
		k.cnt.take()
		steps := []struct {
			name string
			edit func(s *svc)
		}{
			{"add endpoint", func(s *svc) { s.endpoints = append(s.endpoints, "[fd00:10:246::7]:8080") }},
			{"remove endpoint", func(s *svc) { s.endpoints = s.endpoints[:3] }},
			{"no IPv6 endpoints", func(s *svc) { s.endpoints = []string{"10.244.0.8:8080"} }},
			{"endpoints back", func(s *svc) { s.endpoints = []string{"10.244.0.8:8080", "[fd00:10:244::8]:8080"} }},
			{"affinity", func(s *svc) { s.affinity = time.Minute }},
			{"external policy Local", func(s *svc) { s.etpLocal, s.nodePort = true, 31999 }},
			{"add node port and external IP", func(s *svc) { s.externalIPs = []string{"fd00:203::7"} }},
		}
		for _, step := range steps {
			step.edit(&target)
			putService(st, target)
			mustSync(t, p, st, changed(target.portName().ServiceName))
			msgs, flushes := k.cnt.take()
			if flushes != 1 {
				t.Fatalf("%d Services, %s: %d transactions, want 1", n, step.name, flushes)
			}
			counts[n] = append(counts[n], msgs)
			mustSync(t, p, st, full)
			if msgs, _ := k.cnt.take(); msgs != 0 {
				t.Fatalf("%d Services, %s: full sync after the partial one sent %d messages", n, step.name, msgs)
			}
		}
	}
	t.Logf("messages per step: 20 Services %v, 500 Services %v", counts[20], counts[500])
	if fmt.Sprint(counts[20]) != fmt.Sprint(counts[500]) {
		t.Errorf("message counts depend on the number of Services: %v vs %v", counts[20], counts[500])
	}
	// Only the ip6 table: flush the chain, its masquerade rule, the
	// anonymous map (set and elements), the dnat rule, one hairpin element.
	if got := counts[20][0]; got != 6 {
		t.Errorf("adding one IPv6 endpoint sent %d messages, want 6", got)
	}
}

// logSink collects log lines.
type logSink struct {
	mu    sync.Mutex
	lines []string
}

func (l *logSink) logger() logr.Logger {
	return funcr.New(func(prefix, args string) {
		l.mu.Lock()
		l.lines = append(l.lines, args)
		l.mu.Unlock()
	}, funcr.Options{})
}

func (l *logSink) matching(s string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, line := range l.lines {
		if strings.Contains(line, s) {
			out = append(out, line)
		}
	}
	return out
}

// TestNoIPv6 runs the Proxier on nodes without IPv6: the ip6 table is
// skipped with one log line, IPv4 works, and Cleanup still removes an ip6
// table left from before.
func TestNoIPv6(t *testing.T) {
	requireKernel(t)
	dual := svc{ns: "default", name: "dual", proto: dataplane.TCP, svcPort: 80, nodePort: 30080,
		clusterIPs: []string{"10.96.0.30", "fd00:10:96::30"}, endpoints: []string{"10.244.1.2:80", "[fd00:10:244::2]:80"}}
	t.Run("disable_ipv6=1 in the namespace", func(t *testing.T) {
		k := newKernelNS(t, "sy-nft-no6")
		// An ip6 table from a run while IPv6 was on.
		mustSync(t, k.proxier(t, Config{}), newState(dual), full)
		sc := sysctl.NewAt(k.ns.NsHandle())
		for _, name := range []string{"net/ipv6/conf/all/disable_ipv6", "net/ipv6/conf/default/disable_ipv6"} {
			if err := sc.Set(name, "1"); err != nil {
				t.Fatal(err)
			}
		}
		if err := k.proxier(t, Config{}).Cleanup(context.Background()); err != nil {
			t.Fatal(err)
		}
		if d := k.dump(t); d != "" {
			t.Fatalf("cleanup left:\n%s", d)
		}

		var logs logSink
		ctx := logr.NewContext(context.Background(), logs.logger())
		p := k.proxier(t, Config{ClusterCIDRs: clusterCIDRsDual})
		st := newState(dual)
		for _, c := range []dataplane.Changes{full, changed(dual.portName().ServiceName), full} {
			if err := p.Sync(ctx, st, c); err != nil {
				t.Fatal(err)
			}
		}
		d := k.dump(t)
		if !strings.Contains(d, "table ip switchyard\n") || !strings.Contains(d, "10.96.0.30 . tcp . 80 : goto svc-") {
			t.Errorf("IPv4 not programmed:\n%s", d)
		}
		if strings.Contains(d, "table ip6") {
			t.Errorf("ip6 table programmed without IPv6:\n%s", d)
		}
		if got := logs.matching("IPv6 is disabled on this node"); len(got) != 1 {
			t.Errorf("want one log line about IPv6, got %q", got)
		}
	})
	t.Run("no /proc/sys/net/ipv6", func(t *testing.T) {
		k := newKernelNS(t, "sy-nft-no6")
		var logs logSink
		ctx := logr.NewContext(context.Background(), logs.logger())
		// The kernel of ipv6.disable=1 has no net/ipv6 sysctls.
		p, err := NewProxier(Config{}, k.conn, sysctl.NewFake(nil))
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Sync(ctx, newState(dual), full); err != nil {
			t.Fatal(err)
		}
		if d := k.dump(t); !strings.Contains(d, "table ip switchyard\n") || strings.Contains(d, "table ip6") {
			t.Errorf("want the ip table only:\n%s", d)
		}
		if got := logs.matching("IPv6 is not available on this node"); len(got) != 1 {
			t.Errorf("want one log line about IPv6, got %q", got)
		}
	})
}
