package rebalance

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/switchyard/switchyard/dataplane"
)

// fakeMech serves fixed connections and records what it is asked to shed.
type fakeMech struct {
	name    string
	conns   map[dataplane.ServicePortName][]Conn
	err     error
	shedIDs []string
}

func (f *fakeMech) Name() string { return f.name }
func (f *fakeMech) Collect(context.Context, *dataplane.State, time.Time) (map[dataplane.ServicePortName][]Conn, error) {
	return f.conns, f.err
}
func (f *fakeMech) Shed(_ context.Context, cs []Conn) (int, error) {
	for _, c := range cs {
		f.shedIDs = append(f.shedIDs, c.ID)
	}
	return len(cs), nil
}

type fakeObserver struct {
	rounds  map[dataplane.ServicePortName]Plan
	closed  map[string]int
	forgot  []dataplane.ServicePortName
	toClose int
}

func (o *fakeObserver) Round(n dataplane.ServicePortName, p Plan, toClose int, _ bool) {
	o.rounds[n] = p
	o.toClose += toClose
}
func (o *fakeObserver) Closed(n dataplane.ServicePortName, m string, c int, _ error) {
	o.closed[n.Name+"/"+m] += c
}
func (o *fakeObserver) Forget(n dataplane.ServicePortName) { o.forgot = append(o.forgot, n) }

func svcState(names ...string) (*dataplane.State, []dataplane.ServicePortName) {
	st := dataplane.NewState()
	var out []dataplane.ServicePortName
	for _, n := range names {
		spn := dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: "ns", Name: n}, Protocol: dataplane.TCP}
		st.Services[spn] = &dataplane.ServicePort{Name: spn, Port: 80, ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.1")}}
		for i := 1; i <= 4; i++ {
			st.Endpoints[spn] = append(st.Endpoints[spn], dataplane.Endpoint{Addr: be(i), Ready: true, Serving: true})
		}
		out = append(out, spn)
	}
	return st, out
}

func TestRunnerShedsOnlyOptedInServices(t *testing.T) {
	st, names := svcState("opted", "plain")
	opted, plain := names[0], names[1]
	st.Services[opted].Rebalance = &dataplane.RebalanceSpec{Tolerance: 0.1, MaxResetsPerS: 1000, MinAge: time.Second}
	skewed := append(conns(1, 50), conns(2, 50)...)
	sockets := &fakeMech{name: "socketlb", conns: map[dataplane.ServicePortName][]Conn{opted: skewed[:60], plain: skewed}}
	flows := &fakeMech{name: "conntrack", conns: map[dataplane.ServicePortName][]Conn{opted: skewed[60:], plain: skewed}}
	broken := &fakeMech{name: "broken", err: errors.New("netlink: no buffer space")}
	obs := &fakeObserver{rounds: map[dataplane.ServicePortName]Plan{}, closed: map[string]int{}}
	r := NewRunner(Timing{Settle: time.Second}, obs, sockets, flows, broken, nil)
	t0 := time.Unix(1000, 0)
	r.Once(context.Background(), st, t0)
	if obs.toClose != 0 {
		t.Fatalf("closed %d while settling", obs.toClose)
	}
	r.Once(context.Background(), st, t0.Add(2*time.Second))
	// 100 connections on 2 of 4 backends: cap 27, 23 from each.
	if p := obs.rounds[opted]; len(p.Shed) != 46 || p.Before[be(1)] != 50 {
		t.Fatalf("opted plan: %d to shed, before %v", len(p.Shed), p.Before)
	}
	if _, ok := obs.rounds[plain]; ok {
		t.Errorf("a Service without opt-in got a round")
	}
	if got := obs.closed["opted/socketlb"] + obs.closed["opted/conntrack"]; got != 46 || obs.closed["plain/socketlb"] != 0 || obs.closed["plain/conntrack"] != 0 {
		t.Errorf("closed %v", obs.closed)
	}
	// Each mechanism got its own connections back, unprefixed.
	for _, id := range append(sockets.shedIDs, flows.shedIDs...) {
		if len(id) < 2 || id[0] != 'b' {
			t.Errorf("shed ID %q reached a mechanism with its prefix or empty", id)
		}
	}
	// Opt-out: the port is forgotten, nothing more happens.
	st.Services[opted].Rebalance = nil
	r.Once(context.Background(), st, t0.Add(3*time.Second))
	if len(obs.forgot) != 1 || obs.forgot[0] != opted {
		t.Errorf("forgotten %v", obs.forgot)
	}
}

func TestRunnerDryRunClosesNothing(t *testing.T) {
	st, names := svcState("dry")
	st.Services[names[0]].Rebalance = &dataplane.RebalanceSpec{Tolerance: 0.1, MaxResetsPerS: 1000, DryRun: true}
	m := &fakeMech{name: "conntrack", conns: map[dataplane.ServicePortName][]Conn{names[0]: conns(1, 40)}}
	obs := &fakeObserver{rounds: map[dataplane.ServicePortName]Plan{}, closed: map[string]int{}}
	r := NewRunner(Timing{Settle: time.Nanosecond}, obs, m)
	t0 := time.Unix(1000, 0)
	r.Once(context.Background(), st, t0)
	r.Once(context.Background(), st, t0.Add(time.Second))
	if len(m.shedIDs) != 0 || len(obs.rounds[names[0]].Shed) != 29 {
		t.Errorf("dry run: shed %d, planned %d (want 0 and 29: cap 11 of a mean of 10)", len(m.shedIDs), len(obs.rounds[names[0]].Shed))
	}
}

// fakeSteerer records each Steer call into a shared log.
type fakeSteerer struct {
	log   *[]string
	calls []map[dataplane.ServicePortName]map[netip.AddrPort]int
}

func (s *fakeSteerer) Steer(_ context.Context, w map[dataplane.ServicePortName]map[netip.AddrPort]int) error {
	*s.log = append(*s.log, "steer")
	s.calls = append(s.calls, w)
	return nil
}

// loggingMech is a fakeMech that also logs its Shed calls.
type loggingMech struct {
	*fakeMech
	log *[]string
}

func (m loggingMech) Shed(ctx context.Context, cs []Conn) (int, error) {
	*m.log = append(*m.log, "shed")
	return m.fakeMech.Shed(ctx, cs)
}

func TestRunnerSteersBeforeShedding(t *testing.T) {
	st, names := svcState("opted", "dry", "plain")
	opted, dry := names[0], names[1]
	st.Services[opted].Rebalance = &dataplane.RebalanceSpec{Tolerance: 0.1, MaxResetsPerS: 1000}
	st.Services[dry].Rebalance = &dataplane.RebalanceSpec{Tolerance: 0.1, MaxResetsPerS: 1000, DryRun: true}
	var log []string
	skewed := append(conns(1, 50), conns(2, 50)...)
	m := loggingMech{&fakeMech{name: "conntrack", conns: map[dataplane.ServicePortName][]Conn{opted: skewed, dry: skewed, names[2]: skewed}}, &log}
	s := &fakeSteerer{log: &log}
	r := NewRunner(Timing{Settle: time.Nanosecond}, nil, m)
	r.SteerWith(s)
	t0 := time.Unix(1000, 0)
	r.Once(context.Background(), st, t0)
	r.Once(context.Background(), st, t0.Add(time.Second))
	if fmt.Sprint(log) != "[steer steer shed]" {
		t.Fatalf("calls %v, want the settling round's steer, then steer before shed", log)
	}
	// Only the opted-in port that is not a dry run is steered: the 46
	// shed (23 from each old backend) go to the new backends.
	w := s.calls[1]
	if len(w) != 1 || fmt.Sprint(counts(w[opted], 4)) != "[0 0 23 23]" {
		t.Errorf("weights %v, want only %s with [0 0 23 23]", w, opted)
	}
	// Every port opts out: steering is cleared.
	st.Services[opted].Rebalance, st.Services[dry].Rebalance = nil, nil
	r.Once(context.Background(), st, t0.Add(2*time.Second))
	if last := s.calls[len(s.calls)-1]; len(last) != 0 {
		t.Errorf("after opting out: weights %v, want none", last)
	}
}

// countingMech counts Collect calls (rounds that ran).
type countingMech struct {
	fakeMech
	mu     sync.Mutex
	rounds int
}

func (m *countingMech) Collect(ctx context.Context, st *dataplane.State, now time.Time) (map[dataplane.ServicePortName][]Conn, error) {
	m.mu.Lock()
	m.rounds++
	m.mu.Unlock()
	return m.fakeMech.Collect(ctx, st, now)
}

func TestRunnerWaitsForTheDataplane(t *testing.T) {
	st, names := svcState("opted")
	st.Services[names[0]].Rebalance = &dataplane.RebalanceSpec{Tolerance: 0.1, MaxResetsPerS: 10}
	m := &countingMech{fakeMech: fakeMech{name: "conntrack"}}
	r := NewRunner(Timing{}, nil, m)
	var programmed atomic.Bool
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		r.Run(ctx, time.Millisecond, func(f func(*dataplane.State)) { f(st) }, programmed.Load)
		close(done)
	}()
	time.Sleep(50 * time.Millisecond)
	m.mu.Lock()
	skipped := m.rounds
	m.mu.Unlock()
	programmed.Store(true)
	deadline := time.Now().Add(5 * time.Second)
	for {
		m.mu.Lock()
		n := m.rounds
		m.mu.Unlock()
		if n > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-done
	if skipped != 0 {
		t.Errorf("%d rounds ran while the dataplane was not programmed", skipped)
	}
	if m.rounds == 0 {
		t.Error("no round ran once the dataplane was programmed")
	}
}
