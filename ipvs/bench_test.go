package ipvs

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/switchyard/switchyard/dataplane"
)

// benchState holds n single-port Services with 3 endpoints each and a
// NodePort on every tenth, spread over 10.96.0.0/16-style cluster IPs.
func benchState(n int) *dataplane.State {
	st := dataplane.NewState()
	for i := range n {
		ip := netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})
		sp := svc(fmt.Sprintf("bench/svc-%d", i), "http", dataplane.TCP, 80, ip.String())
		if i%10 == 0 {
			sp.NodePort = uint16(30000 + i/10)
		}
		eps := make([]dataplane.Endpoint, 3)
		for j := range eps {
			eps[j] = ready(fmt.Sprintf("10.%d.%d.%d:8080", 200+j, byte(i>>8), byte(i)))
		}
		put(st, sp, eps...)
	}
	return st
}

// toggleEndpoint adds or removes a fourth endpoint of Service #7.
func toggleEndpoint(st *dataplane.State, i int) dataplane.Changes {
	name := spn("bench/svc-7", "http", dataplane.TCP)
	eps := st.Endpoints[name][:3]
	if i%2 == 0 {
		eps = append(eps[:3:3], ready("10.250.0.7:8080"))
	}
	st.Endpoints[name] = eps
	return changed(name)
}

// BenchmarkDesired measures the pure desired-state computation a sync
// starts with, for the whole node.
func BenchmarkDesired(b *testing.B) {
	nodeIPs := []netip.Addr{netip.MustParseAddr("192.168.1.10")}
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			st := benchState(n)
			b.ReportAllocs()
			for b.Loop() {
				Desired(st, nodeIPs, Config{Scheduler: "rr"})
			}
		})
	}
}

// BenchmarkSyncOneEndpointChange runs partial syncs against the fake
// kernel, one endpoint changing per sync, and reports the IPVS operations
// (netlink requests on a real kernel) each sends: the figure must stay flat
// as Services grow.
func BenchmarkSyncOneEndpointChange(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			h, l := NewFakeHandle(), NewFakeLinks("")
			l.SetHostAddresses("eth0", "192.168.1.10")
			p, err := NewProxier(Config{StateDir: b.TempDir()}, h, l, NewFakeIPVSSysctl())
			if err != nil {
				b.Fatal(err)
			}
			st := benchState(n)
			ctx := context.Background()
			if err := p.Sync(ctx, st, dataplane.Changes{Full: true}); err != nil {
				b.Fatal(err)
			}
			ops, i := 0, 0
			b.ReportAllocs()
			for b.Loop() {
				h.ResetCalls()
				l.ResetCalls()
				if err := p.Sync(ctx, st, toggleEndpoint(st, i)); err != nil {
					b.Fatal(err)
				}
				ops += len(h.Calls()) + len(l.Calls())
				i++
			}
			b.ReportMetric(float64(ops)/float64(i), "kernel-ops/op")
		})
	}
}
