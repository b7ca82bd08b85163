package conntrack

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/switchyard/switchyard/dataplane"
)

func flow(proto dataplane.Protocol, client, frontend, endpoint string) Flow {
	c, fe, e := netip.MustParseAddrPort(client), netip.MustParseAddrPort(frontend), netip.MustParseAddrPort(endpoint)
	return Flow{Protocol: proto, Orig: Tuple{Src: c, Dst: fe}, Reply: Tuple{Src: e, Dst: c}}
}

func changed(names ...string) dataplane.Changes {
	ch := dataplane.Changes{Services: map[dataplane.ServiceName]struct{}{}}
	for _, n := range names {
		ch.Services[dataplane.ServiceName{Namespace: "ns", Name: n}] = struct{}{}
	}
	return ch
}

// TestCleanerSyncs drives a Cleaner through several syncs the way the sync
// loop does, with one State mutated in place between them (as the tracker
// does), and checks both the filters and which flows of the Fake's table
// they removed.
func TestCleanerSyncs(t *testing.T) {
	ctx := context.Background()
	const (
		e1 = "10.244.1.1:5353"
		e2 = "10.244.1.2:5353"
		e3 = "10.244.1.3:5353"
	)
	dns := port("dns", dataplane.UDP, "10.96.0.10", nodePort(30053))
	web := port("web", dataplane.TCP, "10.96.0.20")
	st := state(svc{dns, []dataplane.Endpoint{ep(e1), ep(e2)}}, svc{web, []dataplane.Endpoint{ep(e1)}})

	ct := NewFake(
		flow(dataplane.UDP, "10.0.0.2:40001", "10.96.0.10:53", e1),
		flow(dataplane.UDP, "10.0.0.2:40002", "10.96.0.10:53", e2),
		flow(dataplane.UDP, "10.0.0.2:40003", "192.168.0.10:30053", e1),
		flow(dataplane.TCP, "10.0.0.2:40004", "10.96.0.20:53", e1),
		// Made while the agent was down: to an endpoint gone since, and
		// one black-holed (never DNAT'd, the reply comes from the VIP).
		flow(dataplane.UDP, "10.0.0.2:40005", "10.96.0.10:53", e3),
		flow(dataplane.UDP, "10.0.0.2:40006", "10.96.0.10:53", "10.96.0.10:53"),
	)
	nodeIPs := []netip.Addr{netip.MustParseAddr("192.168.0.10")}
	c := NewCleaner(ct, func() []netip.Addr { return nodeIPs })
	chain := dataplane.Chain{okDataplane{}, c}

	step := func(name string, ch dataplane.Changes, wantFilters []string, wantDeleted int) {
		t.Helper()
		ct.Reset()
		before := len(ct.Flows)
		if err := chain.Sync(ctx, st, ch); err != nil {
			t.Fatalf("%s: Sync: %v", name, err)
		}
		var want []Filter
		for _, s := range wantFilters {
			want = append(want, flt(t, s))
		}
		if got := ct.ClearedFilters(); !slices.Equal(got, want) {
			t.Errorf("%s: cleared %s, want %s", name, filterList(got), filterList(want))
		}
		if want == nil && len(ct.Cleared) != 0 {
			t.Errorf("%s: ClearFlows called with nothing to clear", name)
		}
		if got := before - len(ct.Flows); got != wantDeleted {
			t.Errorf("%s: %d flows deleted, want %d; left: %v", name, got, wantDeleted, ct.Flows)
		}
	}

	// First sync: the Cleaner knows no history, so it reconciles the table:
	// flows to live endpoints stay (an agent restart must not reset UDP
	// sessions), the two that are not DNAT'd to a reachable endpoint go.
	step("first", dataplane.Changes{Full: true},
		[]string{"udp 10.96.0.10 53 10.96.0.10", "udp 10.96.0.10 53 10.244.1.3"}, 2)

	ct.Flows = []Flow{
		flow(dataplane.UDP, "10.0.0.2:40001", "10.96.0.10:53", e1),
		flow(dataplane.UDP, "10.0.0.2:40002", "10.96.0.10:53", e2),
		flow(dataplane.UDP, "10.0.0.2:40003", "192.168.0.10:30053", e1),
		flow(dataplane.TCP, "10.0.0.2:40004", "10.96.0.20:53", e1),
	}
	step("nothing changed", changed(), nil, 0)

	// The tracker edits the State in place: e1 goes away from both
	// Services. Only the UDP one clears; its flows to e2 stay.
	st.Endpoints[dns.Name] = []dataplane.Endpoint{ep(e2)}
	st.Endpoints[web.Name] = nil
	step("e1 removed", changed("dns", "web"),
		[]string{"udp 10.96.0.10 53 10.244.1.1", "udp 192.168.0.10 30053 10.244.1.1"}, 2)

	// In-place edit of the endpoint slice itself (same backing array).
	st.Endpoints[dns.Name][0].Ready, st.Endpoints[dns.Name][0].Serving = false, false
	step("e2 not ready: no endpoints", changed("dns"),
		[]string{"udp 10.96.0.10 53 10.244.1.2", "udp 192.168.0.10 30053 10.244.1.2"}, 1)

	// A partial sync that does not name dns clears nothing for it.
	step("unrelated partial sync", changed("web"), nil, 0)

	ct.Flows = append(ct.Flows, flow(dataplane.UDP, "10.0.0.2:40010", "10.96.0.10:53", "10.96.0.10:53")) // black-holed
	st.Endpoints[dns.Name] = []dataplane.Endpoint{ep(e3)}
	step("first endpoint again", changed("dns"),
		[]string{"udp 10.96.0.10 53", "udp 192.168.0.10 30053"}, 1)

	// Node address change: the NodePort moves to the new address.
	nodeIPs = []netip.Addr{netip.MustParseAddr("192.168.0.11")}
	step("node IP changed", changed(),
		[]string{"udp 192.168.0.10 30053", "udp 192.168.0.11 30053"}, 0)

	// In-place edit of the ServicePort (frontends) is seen as well.
	dns.ClusterIPs = []netip.Addr{netip.MustParseAddr("10.96.0.99")}
	step("cluster IP changed", changed("dns"),
		[]string{"udp 10.96.0.10 53", "udp 10.96.0.99 53"}, 0)

	delete(st.Services, dns.Name)
	delete(st.Endpoints, dns.Name)
	step("deleted", changed("dns"), []string{"udp 10.96.0.99 53", "udp 192.168.0.11 30053"}, 0)

	if err := c.Cleanup(ctx); err != nil {
		t.Errorf("Cleanup: %v", err)
	}
}

// TestCleanerRetries: a failed ClearFlows returns an error, and its filters
// come back with the next Sync until they clear or run out of attempts.
func TestCleanerRetries(t *testing.T) {
	ctx := context.Background()
	dns := port("dns", dataplane.UDP, "10.96.0.10")
	st := state(svc{dns, []dataplane.Endpoint{ep("10.244.1.1:53"), ep("10.244.1.2:53")}})
	ct := NewFake()
	c := NewCleaner(ct, nil)
	if err := c.Sync(ctx, st, dataplane.Changes{Full: true}); err != nil {
		t.Fatal(err)
	}
	ct.Reset()

	boom := errors.New("netlink: boom")
	ct.Err = boom
	st.Endpoints[dns.Name] = []dataplane.Endpoint{ep("10.244.1.2:53")}
	if err := c.Sync(ctx, st, changed("dns")); !errors.Is(err, boom) {
		t.Fatalf("Sync with failing conntrack = %v, want %v", err, boom)
	}
	// Next sync has no new change; the failed filter is retried.
	ct.Err = nil
	if err := c.Sync(ctx, st, changed()); err != nil {
		t.Fatal(err)
	}
	want := []Filter{flt(t, "udp 10.96.0.10 53 10.244.1.1")}
	if got := ct.ClearedFilters(); !slices.Equal(got, want) {
		t.Errorf("retry cleared %s, want %s", filterList(got), filterList(want))
	}
	// Cleared: not retried again.
	ct.Reset()
	if err := c.Sync(ctx, st, changed()); err != nil || len(ct.Cleared) != 0 {
		t.Errorf("after a successful retry: err=%v cleared=%v", err, ct.Cleared)
	}

	// A persistent failure gives up after maxAttempts syncs.
	ct.Err = boom
	st.Endpoints[dns.Name] = nil
	for i := range maxAttempts {
		ch := changed()
		if i == 0 {
			ch = changed("dns")
		}
		if err := c.Sync(ctx, st, ch); err == nil {
			t.Fatalf("attempt %d: Sync succeeded with a failing conntrack", i)
		}
	}
	ct.Err = nil
	if err := c.Sync(ctx, st, changed()); err != nil || len(ct.Cleared) != 0 {
		t.Errorf("after giving up: err=%v cleared=%v", err, ct.Cleared)
	}
}

func TestFakeRejectsContradictoryFilters(t *testing.T) {
	fl := flow(dataplane.UDP, "10.0.0.2:40001", "10.96.0.10:53", "10.244.1.1:53")
	ct := NewFake(fl)
	for _, bad := range [][]Filter{
		{flt(t, "udp 10.96.0.10 53"), {Protocol: dataplane.UDP, OrigDst: netip.MustParseAddr("10.96.0.10"), ReplySrc: netip.MustParseAddr("fd00::1")}},
		{flt(t, "udp 10.96.0.10 53"), flt(t, "udp 10.96.0.10 53")},
		{{Protocol: dataplane.UDP}},
	} {
		n, err := ct.ClearFlows(bad)
		if !errors.Is(err, ErrInvalidFilter) || n != 0 {
			t.Errorf("ClearFlows(%s) = %d, %v; want 0, ErrInvalidFilter", filterList(bad), n, err)
		}
	}
	if len(ct.Flows) != 1 || len(ct.Cleared) != 0 {
		t.Errorf("a rejected call changed the fake: flows %v, cleared %v", ct.Flows, ct.Cleared)
	}
	if n, err := ct.ClearFlows([]Filter{flt(t, "udp * 53 10.244.1.1")}); n != 1 || err != nil {
		t.Errorf("ClearFlows = %d, %v; want 1, nil", n, err)
	}
}

// okDataplane stands for the real dataplane the Cleaner is chained after.
type okDataplane struct{}

func (okDataplane) Name() string                                                    { return "ok" }
func (okDataplane) Sync(context.Context, *dataplane.State, dataplane.Changes) error { return nil }
func (okDataplane) Cleanup(context.Context) error                                   { return nil }
