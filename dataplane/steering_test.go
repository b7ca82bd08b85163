package dataplane

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
)

func TestTrackerSteeringWeights(t *testing.T) {
	tr := NewTracker("node-a", TranslateOptions{}, nil)
	tr.OnServiceUpsert(svc("demo", "web"))
	tr.OnEndpointSliceUpsert(slice("demo", "web-1", "web", []discovery.EndpointPort{port("http", 8080, v1.ProtocolTCP)}, epSpec{ip: "10.244.1.2"}, epSpec{ip: "10.244.1.3"}))
	st, _ := tr.Drain()
	var name ServicePortName
	for n := range st.Services {
		name = n
	}
	b2, b3 := netip.MustParseAddrPort("10.244.1.2:8080"), netip.MustParseAddrPort("10.244.1.3:8080")

	if !tr.SetWeights(name, map[netip.AddrPort]int{b3: 4}) {
		t.Fatal("new weights reported as no change")
	}
	st, ch := tr.Drain()
	if changedNames(ch) != "demo/web" || st.Weights[name][b3] != 4 || len(st.Weights[name]) != 1 {
		t.Fatalf("after SetWeights: changed %q, weights %v", changedNames(ch), st.Weights)
	}
	if !strings.Contains(st.Dump(), "10.244.1.3:8080") || !strings.Contains(st.Dump(), " weight=4\n") {
		t.Errorf("Dump does not show the weight:\n%s", st.Dump())
	}
	// The same weights again: nothing to sync.
	if tr.SetWeights(name, map[netip.AddrPort]int{b3: 4}) {
		t.Error("identical weights reported as a change")
	}
	if _, ch = tr.Drain(); changedNames(ch) != "" {
		t.Errorf("identical weights changed %q", changedNames(ch))
	}
	// Cleared.
	if !tr.SetWeights(name, nil) {
		t.Fatal("clearing reported as no change")
	}
	if st, ch = tr.Drain(); changedNames(ch) != "demo/web" || len(st.Weights) != 0 {
		t.Fatalf("after clearing: changed %q, weights %v", changedNames(ch), st.Weights)
	}
	// Weights of a port the Service does not have never reach the State.
	ghost := ServicePortName{ServiceName: name.ServiceName, Port: "nope", Protocol: TCP}
	tr.SetWeights(ghost, map[netip.AddrPort]int{b2: 1})
	if st, _ = tr.Drain(); len(st.Weights) != 0 {
		t.Errorf("weights of a missing port in the State: %v", st.Weights)
	}
	// The Service goes: so do its weights.
	tr.SetWeights(name, map[netip.AddrPort]int{b2: 1})
	tr.Drain()
	tr.OnServiceDelete("demo", "web")
	if st, _ = tr.Drain(); len(st.Weights) != 0 {
		t.Errorf("weights of a deleted Service left: %v", st.Weights)
	}
}

func TestWeightEndpoints(t *testing.T) {
	var eps []Endpoint
	for i := 1; i <= 4; i++ {
		eps = append(eps, Endpoint{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}), 80)})
	}
	show := func(ws []WeightedEndpoint) string {
		out := ""
		for _, w := range ws {
			out += fmt.Sprintf("%s=%d ", w.Addr.Addr(), w.Weight)
		}
		return out
	}
	for _, tc := range []struct {
		name    string
		weights map[netip.AddrPort]int
		want    string
	}{
		{"none: equal", nil, "10.0.0.1=1 10.0.0.2=1 10.0.0.3=1 10.0.0.4=1 "},
		{"gcd reduced, zero and absent dropped", map[netip.AddrPort]int{eps[0].Addr: 0, eps[2].Addr: 225, eps[3].Addr: 450}, "10.0.0.3=1 10.0.0.4=2 "},
		{"only endpoints not chosen: equal", map[netip.AddrPort]int{netip.MustParseAddrPort("10.9.9.9:80"): 5}, "10.0.0.1=1 10.0.0.2=1 10.0.0.3=1 10.0.0.4=1 "},
		{"scaled to the slot bound", map[netip.AddrPort]int{eps[0].Addr: 1, eps[1].Addr: 999}, "10.0.0.1=1 10.0.0.2=64 "},
	} {
		if got := show(WeightEndpoints(tc.weights, eps)); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
}

func TestSyncerWaitSynced(t *testing.T) {
	tr := NewTracker("node-a", TranslateOptions{}, nil)
	tr.SetServicesSynced()
	tr.SetEndpointSlicesSynced()
	s := NewSyncer(tr, &recordingDataplane{}, 0, 0)
	ctx := context.Background()
	if err := s.syncOnce(ctx, false); err != nil {
		t.Fatal(err)
	}
	since := time.Now()
	// The sync before since does not count.
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if err := s.WaitSynced(short, since); err == nil {
		t.Fatal("WaitSynced returned before a sync after since")
	}
	done := make(chan error, 1)
	go func() { done <- s.WaitSynced(ctx, since) }()
	if err := s.syncOnce(ctx, false); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WaitSynced did not return after a sync")
	}
}

func TestSyncerProgrammed(t *testing.T) {
	tr := NewTracker("node-a", TranslateOptions{}, nil)
	dp := &recordingDataplane{}
	s := NewSyncer(tr, dp, 0, 0)
	ctx := context.Background()
	if s.Programmed() {
		t.Fatal("programmed before any sync")
	}
	tr.SetServicesSynced()
	tr.SetEndpointSlicesSynced()
	tr.OnServiceUpsert(svc("demo", "web"))
	if err := s.syncOnce(ctx, false); err != nil || !s.Programmed() {
		t.Fatalf("after a good sync: programmed %v, err %v", s.Programmed(), err)
	}
	// A failed sync of a change: not programmed until one succeeds.
	dp.fail = fmt.Errorf("kernel said no")
	tr.OnServiceUpsert(svc("demo", "api"))
	if err := s.syncOnce(ctx, false); err == nil || s.Programmed() {
		t.Fatalf("after a failed sync: programmed %v, err %v", s.Programmed(), err)
	}
	dp.fail = nil
	if err := s.syncOnce(ctx, false); err != nil || !s.Programmed() {
		t.Fatalf("after the retry: programmed %v, err %v", s.Programmed(), err)
	}
	// A periodic sync without changes keeps it programmed.
	if err := s.syncOnce(ctx, true); err != nil || !s.Programmed() {
		t.Fatalf("after a periodic sync: programmed %v, err %v", s.Programmed(), err)
	}
}
