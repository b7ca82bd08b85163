package nftables

import (
	"context"
	"fmt"
	"testing"
	"time"

	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/dataplane"
)

// oneEndpointToggle flips one endpoint of Service #7 of st in and out and
// returns the matching Changes.
func oneEndpointToggle(st *dataplane.State, svcs []svc) func(i int) dataplane.Changes {
	target := svcs[7]
	base := target.endpoints
	return func(i int) dataplane.Changes {
		target.endpoints = base
		if i%2 == 0 {
			target.endpoints = append(append([]string(nil), base...), "10.246.0.7:8080")
		}
		putService(st, target)
		return changed(target.portName().ServiceName)
	}
}

// BenchmarkDesiredOneEndpointChange measures the in-memory work of a
// partial sync after one endpoint changed: recomputing the changed
// Service's objects, diffing them with the applied state and building the
// batch (no kernel).
func BenchmarkDesiredOneEndpointChange(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			cfg, _ := Config{ClusterCIDRs: clusterCIDR}.withDefaults()
			svcs := manyServices(n)
			st := newState(svcs...)
			ts := buildTableState(klog.Background(), cfg, ipv4, st)
			toggle := oneEndpointToggle(st, svcs)
			msgs, i := 0, 0
			b.ReportAllocs()
			for b.Loop() {
				c := toggle(i)
				batch := planPartial(klog.Background(), cfg, ipv4, ts, st, c)
				msgs += batch.stats.Messages
				i++
			}
			b.ReportMetric(float64(msgs)/float64(i), "msgs/op")
		})
	}
}

// BenchmarkDesiredFull measures computing the whole desired state (what a
// full sync does before reading the kernel).
func BenchmarkDesiredFull(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			cfg, _ := Config{ClusterCIDRs: clusterCIDR}.withDefaults()
			st := newState(manyServices(n)...)
			b.ReportAllocs()
			for b.Loop() {
				buildTableState(klog.Background(), cfg, ipv4, st)
			}
		})
	}
}

// BenchmarkSyncOneEndpointChange runs partial syncs against a real kernel
// (a fresh network namespace) holding n Services, one endpoint changing
// per sync, and reports the netlink messages each sends. The cold load and
// a no-op full sync (what a restarted agent does) are timed once and
// logged.
func BenchmarkSyncOneEndpointChange(b *testing.B) {
	requireKernel(b)
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			k := newKernelNS(b, "sy-nft-bench")
			p := k.proxier(b, Config{ClusterCIDRs: clusterCIDR})
			svcs := manyServices(n)
			st := newState(svcs...)
			ctx := context.Background()
			start := time.Now()
			if err := p.Sync(ctx, st, full); err != nil {
				b.Fatal(err)
			}
			cold, coldMsgs := time.Since(start), p.last.Messages
			start = time.Now()
			if err := p.Sync(ctx, st, full); err != nil {
				b.Fatal(err)
			}
			b.Logf("%d Services: cold load %v (%d messages), no-op full sync %v (%d messages)",
				n, cold, coldMsgs, time.Since(start), p.last.Messages)
			toggle := oneEndpointToggle(st, svcs)
			k.cnt.take()
			msgs, i := 0, 0
			for b.Loop() {
				if err := p.Sync(ctx, st, toggle(i)); err != nil {
					b.Fatal(err)
				}
				m, _ := k.cnt.take()
				msgs += m
				i++
			}
			b.ReportMetric(float64(msgs)/float64(i), "msgs/op")
		})
	}
}
