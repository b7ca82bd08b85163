package main

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"k8s.io/client-go/tools/record"

	"github.com/switchyard/switchyard/conntrack"
	"github.com/switchyard/switchyard/conntrack/rebalance"
	"github.com/switchyard/switchyard/dataplane"
)

func TestFlowMechanismAttributesAndMarks(t *testing.T) {
	st := dataplane.NewState()
	web := dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: "ns", Name: "web"}, Protocol: dataplane.TCP}
	st.Services[web] = &dataplane.ServicePort{Name: web, Port: 80, NodePort: 30080, ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")}}
	flow := func(src, dst, backend, state string, mark uint32) conntrack.Flow {
		return conntrack.Flow{Protocol: dataplane.TCP, TCPState: state, Mark: mark,
			Orig:  conntrack.Tuple{Src: netip.MustParseAddrPort(src), Dst: netip.MustParseAddrPort(dst)},
			Reply: conntrack.Tuple{Src: netip.MustParseAddrPort(backend), Dst: netip.MustParseAddrPort(src)}}
	}
	ct := conntrack.NewFake(
		flow("10.0.0.1:40000", "10.96.0.10:80", "10.244.0.1:8080", "ESTABLISHED", 0),
		flow("10.0.0.1:40001", "192.168.0.1:30080", "10.244.0.2:8080", "ESTABLISHED", 0), // NodePort
		flow("10.0.0.1:40002", "10.96.0.10:80", "10.244.0.1:8080", "TIME_WAIT", 0),
		flow("10.0.0.1:40003", "10.96.0.10:80", "10.244.0.1:8080", "ESTABLISHED", 0x8000), // being reset
		flow("10.0.0.1:40004", "10.96.0.99:80", "10.244.0.1:8080", "ESTABLISHED", 0),      // no Service
		flow("10.0.0.1:40005", "10.244.0.1:8080", "10.244.0.1:8080", "ESTABLISHED", 0),    // not DNATed
	)
	table := &fakeFlowTable{ct: ct, timeout: map[string]time.Duration{"10.0.0.1:40000>10.96.0.10:80": 590 * time.Second}}
	m := &flowMechanism{flows: table, marker: ct, mark: 0x8000, firstSeen: map[string]time.Time{},
		timeouts: conntrack.TCPTimeouts{Established: 600 * time.Second, Unacknowledged: 300 * time.Second}}
	t0 := time.Unix(1000, 0)
	got, err := m.Collect(context.Background(), st, t0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got[web]) != 3 || len(got) != 1 {
		t.Fatalf("collected %v, want the three established DNATed flows of web", got)
	}
	closing := 0
	for _, c := range got[web] {
		if c.Closing {
			closing++
		}
	}
	if closing != 1 {
		t.Errorf("%d flows reported closing, want the marked one", closing)
	}
	// Idle times come from rereading the opted-in flows (only those).
	for _, c := range got[web] {
		if want := map[string]time.Duration{"10.0.0.1:40000>10.96.0.10:80": 10 * time.Second}[c.ID]; c.Idle != want {
			t.Errorf("%s idle %v, want %v", c.ID, c.Idle, want)
		}
	}
	if table.reread != 3 {
		t.Errorf("%d flows reread, want web's 3 established", table.reread)
	}
	// Ages count from the first round that saw a flow.
	got, _ = m.Collect(context.Background(), st, t0.Add(7*time.Second))
	if got[web][0].Age != 7*time.Second {
		t.Errorf("age %v after 7s", got[web][0].Age)
	}
	var open []rebalance.Conn
	for _, c := range got[web] {
		if !c.Closing {
			open = append(open, c)
		}
	}
	n, err := m.Shed(context.Background(), open[:1])
	if err != nil || n != 1 {
		t.Fatalf("shed: %d, %v", n, err)
	}
	flows, _ := ct.ListFlows()
	marked := 0
	for _, f := range flows {
		if f.Mark&0x8000 != 0 {
			marked++
		}
	}
	if marked != 2 {
		t.Errorf("%d flows carry the reset mark, want 2 (the one shed and the one already marked)", marked)
	}
}

// fakeFlowTable serves a conntrack.Fake as the event-fed table, with
// fresh timers (by flow ID) on rereads.
type fakeFlowTable struct {
	ct      *conntrack.Fake
	timeout map[string]time.Duration
	reread  int
}

func (f *fakeFlowTable) Flows() []conntrack.Flow {
	flows, _ := f.ct.ListFlows()
	return flows
}

func (f *fakeFlowTable) GetFlows(flows []conntrack.Flow) ([]conntrack.Flow, error) {
	f.reread += len(flows)
	out := make([]conntrack.Flow, len(flows))
	for i, fl := range flows {
		fl.Timeout = f.timeout[flowID(fl)]
		out[i] = fl
	}
	return out, nil
}

type nopObserver struct{ rounds int }

func (o *nopObserver) Round(dataplane.ServicePortName, rebalance.Plan, int, bool) { o.rounds++ }
func (*nopObserver) Closed(dataplane.ServicePortName, string, int, error)         {}
func (*nopObserver) Forget(dataplane.ServicePortName)                             {}

func TestEventObserverEventOnShedding(t *testing.T) {
	rec := record.NewFakeRecorder(10)
	inner := &nopObserver{}
	o := eventObserver{Observer: inner, recorder: rec, node: "node-a"}
	web := dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: "ns", Name: "web"}, Port: "http", Protocol: dataplane.TCP}
	a, b := netip.MustParseAddrPort("10.244.0.1:8080"), netip.MustParseAddrPort("10.244.0.2:8080")
	plan := rebalance.Plan{Ratio: 2, RatioAfter: 1, Shed: make([]rebalance.Conn, 5),
		Before: map[netip.AddrPort]int{a: 10, b: 0}, After: map[netip.AddrPort]int{a: 5, b: 5}}
	o.Round(web, plan, 0, false) // balanced, settling or dry run: no Event
	o.Round(web, plan, 5, false)
	if inner.rounds != 2 {
		t.Errorf("metrics observer saw %d rounds, want 2", inner.rounds)
	}
	close(rec.Events)
	var got []string
	for e := range rec.Events {
		got = append(got, e)
	}
	want := "Normal Rebalancing node node-a, port ns/web:http/tcp: closing 5 connections (plan 5) so they even out: max/mean 2.00 -> 1.00; per backend 10.244.0.1:8080=10 10.244.0.2:8080=0 -> 10.244.0.1:8080=5 10.244.0.2:8080=5"
	if len(got) != 1 || got[0] != want {
		t.Errorf("events %q, want [%q]", got, want)
	}
}
