package nftnetns

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/agentapi"
	"github.com/switchyard/switchyard/test/agentspec"
	"github.com/switchyard/switchyard/test/connfleet"
	"github.com/switchyard/switchyard/test/netnstest"
)

// The connection rebalancer (switchyard.io/rebalance) end to end with the
// agent binary on the nftables dataplane: long-lived client connections,
// each sending a request every 100 ms, spread evenly over 2 backends; the
// Service scales to 4; the rebalancer sheds connections (conntrack mark,
// turned into a reset by the dataplane's reset rules; or, with
// --bpf-socket-lb, sock_diag on the translated sockets) and the clients
// reconnect, until the connections are even on 4 backends again. The
// clients are test/connfleet's, as in `make bench-rebalance` (the same
// scenario at 1000 connections, test/rebalancebench). Reconnects that
// land on busy backends make later rounds shed again, so the test
// reports the resets against the minimum rather than asking for it.

const (
	// rebalanceClients are the long-lived connections to the opted-in
	// Service; bystanderClients those to a Service without the opt-in
	// on the same backends, which must never be reset.
	rebalanceClients = 100
	bystanderClients = 8
	// rebalanceTolerance and rebalanceMaxResets are the Service's knobs.
	rebalanceTolerance = 0.10
	rebalanceMaxResets = 50
	// requestInterval: each client's pace on its connection.
	requestInterval = 100 * time.Millisecond
	// attemptTimeout bounds one dial and one exchange; maxAttempts the
	// reconnect-and-retry attempts of one request (the first included).
	attemptTimeout = 2 * time.Second
	maxAttempts    = 4
	// maxClientRequests bounds each client's loop (some 60 s at its pace).
	maxClientRequests = 600
	// balanceDeadline bounds the wait for the rebalanced state after the
	// scale-up.
	balanceDeadline = 40 * time.Second
)

// rebalanceAnnotations are the annotations of an opted-in Service.
func rebalanceAnnotations(dryRun bool) map[string]string {
	return agentspec.RebalanceAnnotations(rebalanceTolerance, rebalanceMaxResets, time.Second, dryRun)
}

// newFleet makes the clients (test/connfleet) of Service s at this
// file's pace; see agentspec.NewFleet.
func newFleet(t *testing.T, name string, topo *agentspec.Topology, s agentspec.Service, source agentspec.SourceCheck) *connfleet.Fleet {
	t.Helper()
	return agentspec.NewFleet(t, connfleet.Config{Name: name, Interval: requestInterval, AttemptTimeout: attemptTimeout,
		MaxAttempts: maxAttempts, MaxRequests: maxClientRequests}, topo, s, source)
}

// rebalanceMode is the mechanism that sheds in a run of rebalanceScaleUp.
type rebalanceMode struct {
	mechanism string // the resets_total label: "conntrack" or "socketlb"
	other     string // the mechanism that must close nothing
	// socketLB runs the agent with --bpf-socket-lb on a test cgroup the
	// test process enters.
	socketLB bool
	source   agentspec.SourceCheck
}

// TestNFTAgentRebalance: a ClusterIP Service opted in to rebalancing
// (tolerance 0.1, 50 resets/s, min age 1 s) with 100 long-lived client
// connections spread evenly over 2 backends scales to 4: the rebalancer
// marks conntrack flows, the nftables dataplane's reset rules reset them,
// and the clients, reconnecting at once, end up within max/mean <= 1.1 on
// the 4 backends without a request failing; the resets are at least the
// minimum the scale-up needs; a Service without the opt-in on the same
// backends (8 connections) is never touched.
func TestNFTAgentRebalance(t *testing.T) {
	requireAgent(t)
	probeNFTables(t)
	rebalanceScaleUp(t, rebalanceMode{mechanism: "conntrack", other: "socketlb", source: agentspec.MasqueradedSource})
}

// TestNFTAgentRebalanceSocketLB: the same with --bpf-socket-lb (a test
// cgroup and a private bpf file system, as TestNFTAgentSocketLB): the
// clients' sockets are connected straight to the backends, and the
// rebalancer closes them with sock_diag in the client's namespace.
func TestNFTAgentRebalanceSocketLB(t *testing.T) {
	requireAgent(t)
	probeNFTables(t)
	rebalanceScaleUp(t, rebalanceMode{mechanism: "socketlb", other: "conntrack", socketLB: true, source: agentspec.TranslatedSource})
}

func rebalanceScaleUp(t *testing.T, mode rebalanceMode) {
	// The cgroup and bpf file system first: their cleanup runs after
	// the agent's (stop, --cleanup), as in TestNFTAgentSocketLB.
	var cg *netnstest.Cgroup
	var pin string
	if mode.socketLB {
		cg = netnstest.NewCgroup(t, "sy-rebal")
		pin = netnstest.NewBPFFS(t) + "/switchyard"
	}
	env := newNFTEnv(t)
	topo := env.NewTopology(t, 4)
	a := env.NewAgent(t)
	if mode.socketLB {
		a.PinPath = pin
		a.ExtraArgs = []string{"--bpf-socket-lb", "--bpf-cgroup-path", cg.Path}
		// The clients' sockets (opened by this process from now on) are
		// the ones the programs translate; the echo servers listen
		// since NewTopology, outside the cgroup.
		cg.Enter(t)
	}
	two, four := topo.Backends[:2], topo.Backends
	web := agentspec.Service{Name: "web", ClusterIP: netip.MustParseAddr("10.96.0.90"), Port: 80, Backends: two}
	by := agentspec.Service{Name: "bystander", ClusterIP: netip.MustParseAddr("10.96.0.91"), Port: 80, Backends: two}
	webPort, byPort := agentspec.PortName(web), agentspec.PortName(by)
	a.WriteAnnotated(web, rebalanceAnnotations(false))
	a.WriteService(by)
	a.Start()
	a.WaitLog(`"Rebalancer ready for Services that opt in".*` + mode.mechanism)
	env.DP.WaitProgrammed(t, a, web, by)

	clients := newFleet(t, "web", topo, web, mode.source)
	bystanders := newFleet(t, "bystander", topo, by, mode.source)
	agentspec.Establish(t, clients, rebalanceClients, two)
	agentspec.Establish(t, bystanders, bystanderClients, two)

	// Evenly spread: the rebalancer measures them and leaves them be.
	text := env.MustMetrics(t)
	balancedBefore, _ := agentspec.RebalanceMetric(text, "rounds_total", `outcome="balanced",`, webPort)
	a.WaitRebalanceRounds(webPort, "balanced", balancedBefore, 1, agentspec.Deadline)
	text = env.MustMetrics(t)
	if v, ok := agentspec.RebalanceMetric(text, "imbalance_ratio", "", webPort); !ok || v != 1 {
		t.Errorf("imbalance ratio with %d connections evenly on 2 backends: %v (present %v), want 1", rebalanceClients, v, ok)
	}
	ids := agentspec.BackendIDs(four)
	before := clients.Snapshot()
	if before.Lost > 0 || before.Failed > 0 {
		t.Errorf("connections lost before the scale-up (nothing to rebalance): %v", before)
	}
	for _, m := range []string{mode.mechanism, mode.other} {
		if v, _ := agentspec.RebalanceMetric(text, "resets_total", `mechanism="`+m+`",`, webPort); v != 0 {
			t.Errorf("%s resets before the scale-up (connections even): %v", m, v)
		}
	}
	minimum := connfleet.MinimumResets(before.Of(ids...), rebalanceTolerance)
	t.Logf("before the scale-up: %v; minimum resets for 2 -> 4 backends at tolerance %v: %d (%d for an exactly even spread)",
		before.PerBackend(), rebalanceTolerance, minimum, connfleet.MinimumResets(before.Of(ids...), 0))

	// Scale up.
	agentspec.Allow(t, clients, four)
	agentspec.Allow(t, bystanders, four)
	web.Backends, by.Backends = four, four
	scaled := time.Now()
	a.WriteAnnotated(web, rebalanceAnnotations(false))
	a.WriteService(by)
	env.DP.WaitProgrammed(t, a, web, by)

	// The clients see their connections even on 4 backends.
	var balanced connfleet.Snapshot
	a.Eventually("the clients' connections within max/mean <= 1.1 on 4 backends", balanceDeadline, func() (bool, string) {
		balanced = clients.Snapshot()
		counts := balanced.Of(ids...)
		return balanced.Unconnected == 0 && connfleet.Balanced(counts, rebalanceTolerance),
			fmt.Sprintf("counts %v (ratio %.2f); %v", counts, connfleet.Imbalance(counts), balanced)
	})
	took := time.Since(scaled)
	// And the rebalancer agrees: rounds find the Service balanced.
	text = env.MustMetrics(t)
	from, _ := agentspec.RebalanceMetric(text, "rounds_total", `outcome="balanced",`, webPort)
	a.WaitRebalanceRounds(webPort, "balanced", from, 2, agentspec.Deadline)
	text = env.MustMetrics(t)
	resets, _ := agentspec.RebalanceMetric(text, "resets_total", `mechanism="`+mode.mechanism+`",`, webPort)
	if v, ok := agentspec.RebalanceMetric(text, "imbalance_ratio", "", webPort); !ok || v > 1+rebalanceTolerance+1e-9 {
		t.Errorf("switchyard_rebalance_imbalance_ratio = %v (present %v) once balanced, want <= %v", v, ok, 1+rebalanceTolerance)
	}
	rounds := agentspec.RebalanceSeries(text, webPort)
	shedLines := regexp.MustCompile(`.*"Rebalanced connections".*`).FindAllString(a.Current().Log(), -1)
	clients.Stop()
	bystanders.Stop()
	final, bys := clients.Snapshot(), bystanders.Snapshot()
	t.Logf("balanced %v after the scale-up: clients %v (ratio %.2f); %v %s resets (minimum %d: %.2fx the minimum) in %d rounds that shed; clients lost %d connections in all (errors %v), %d requests answered; bystander: %v",
		took.Round(10*time.Millisecond), balanced.PerBackend(), connfleet.Imbalance(balanced.Of(ids...)), resets, mode.mechanism, minimum, resets/float64(minimum), len(shedLines),
		final.Lost, final.Errs, final.Answered, bys)
	t.Logf("rebalancer metrics of %s:\n  %s\nrounds that shed:\n  %s", webPort, strings.Join(rounds, "\n  "), strings.Join(shedLines, "\n  "))

	if final.Failed > 0 || final.Bad > 0 {
		t.Errorf("%d requests failed after reconnecting, %d wrong answers (want none): %v", final.Failed, final.Bad, final.Examples)
	}
	if final.Answered < 10*rebalanceClients || bys.Answered < 10*bystanderClients {
		t.Errorf("requests answered: %d by %d clients, %d by %d bystanders; want at least 10 a client", final.Answered, rebalanceClients, bys.Answered, bystanderClients)
	}
	if resets <= 0 || resets < float64(minimum) {
		t.Errorf("switchyard_rebalance_resets_total{mechanism=%q} = %v, want at least the minimum %d", mode.mechanism, resets, minimum)
	}
	// Steering sends the reconnects to the backends the plan fills, so
	// later rounds shed (almost) nothing more: the first round's plan is
	// the minimum.
	if resets > 1.25*float64(minimum) {
		t.Errorf("switchyard_rebalance_resets_total{mechanism=%q} = %v, more than 1.25x the minimum %d: reconnects were not steered", mode.mechanism, resets, minimum)
	}
	// Every connection a client lost is one the rebalancer closed (it
	// counts a close before the client can see it).
	text = env.MustMetrics(t)
	if resets, _ = agentspec.RebalanceMetric(text, "resets_total", `mechanism="`+mode.mechanism+`",`, webPort); float64(final.Lost) > resets {
		t.Errorf("the clients lost %d connections, more than the %v the rebalancer closed: %v", final.Lost, resets, final)
	}
	if v, _ := agentspec.RebalanceMetric(text, "resets_total", `mechanism="`+mode.other+`",`, webPort); v != 0 {
		t.Errorf("%s closed %v connections; only %s sees these", mode.other, v, mode.mechanism)
	}
	for _, m := range []string{"conntrack", "socketlb"} {
		if v, _ := agentspec.RebalanceMetric(text, "errors_total", `mechanism="`+m+`",`, webPort); v != 0 {
			t.Errorf("switchyard_rebalance_errors_total{mechanism=%q} = %v, want 0", m, v)
		}
	}
	// yardctl conntrack's view (the agent API) has the last round: the
	// Service balanced, the resets counted, every backend measured.
	report, err := agentapi.NewClient(filepath.Join(a.StateDir, "api.sock")).Conntrack(context.Background(), agentspec.Namespace, web.Name)
	if err != nil {
		t.Fatalf("agent API conntrack: %v", err)
	}
	var view *agentapi.ConntrackRebalance
	for _, s := range report.Services {
		if s.Service == webPort {
			view = s.Rebalance
		}
	}
	if view == nil {
		t.Errorf("agent API conntrack: no rebalance view of %s in %+v", webPort, report.Services)
	} else {
		measured := 0
		for _, b := range view.Backends {
			measured += b.Connections
		}
		if view.Outcome != "balanced" || float64(view.Resets) != resets || len(view.Backends) != 4 || measured != rebalanceClients || view.Ratio > 1+rebalanceTolerance+1e-9 {
			t.Errorf("agent API rebalance view %+v, want balanced, %v resets, 4 backends measuring %d connections", *view, resets, rebalanceClients)
		}
	}
	// The bystander was never touched, nor measured.
	if bys.Lost > 0 || bys.DialErrs > 0 || bys.Failed > 0 || bys.Bad > 0 || bys.Unconnected > 0 {
		t.Errorf("the Service without the opt-in was touched: %v; %v", bys, bys.Examples)
	}
	if got := bys.Of(ids...); got[2]+got[3] != 0 {
		t.Errorf("the Service without the opt-in has connections on the new backends: %v", got)
	}
	if s := agentspec.RebalanceSeries(text, byPort); len(s) > 0 {
		t.Errorf("rebalancer metrics for the Service without the opt-in: %v", s)
	}
}

// TestNFTAgentRebalanceNotOptedIn: Services without the opt-in, or in a
// dry run, keep their connections through a scale-up from 2 to 4
// backends: no client sees an error, every connection stays on the 2
// first backends (the imbalance stays), and nothing is closed. The dry
// run's metrics show the plan it would carry out: exactly the minimum.
func TestNFTAgentRebalanceNotOptedIn(t *testing.T) {
	requireAgent(t)
	probeNFTables(t)
	env := newNFTEnv(t)
	topo := env.NewTopology(t, 4)
	a := env.NewAgent(t)
	two, four := topo.Backends[:2], topo.Backends
	plain := agentspec.Service{Name: "plain", ClusterIP: netip.MustParseAddr("10.96.0.92"), Port: 80, Backends: two}
	dry := agentspec.Service{Name: "dry", ClusterIP: netip.MustParseAddr("10.96.0.93"), Port: 80, Backends: two}
	plainPort, dryPort := agentspec.PortName(plain), agentspec.PortName(dry)
	a.WriteService(plain)
	a.WriteAnnotated(dry, rebalanceAnnotations(true))
	a.Start()
	a.WaitLog(`"Rebalancer ready for Services that opt in".*conntrack`)
	env.DP.WaitProgrammed(t, a, plain, dry)

	const n = 24
	plainClients := newFleet(t, "plain", topo, plain, agentspec.MasqueradedSource)
	dryClients := newFleet(t, "dry", topo, dry, agentspec.MasqueradedSource)
	agentspec.Establish(t, plainClients, n, two)
	agentspec.Establish(t, dryClients, n, two)
	text := env.MustMetrics(t)
	balanced, _ := agentspec.RebalanceMetric(text, "rounds_total", `outcome="balanced",`, dryPort)
	a.WaitRebalanceRounds(dryPort, "balanced", balanced, 1, agentspec.Deadline)
	text = env.MustMetrics(t)
	dryRuns, _ := agentspec.RebalanceMetric(text, "rounds_total", `outcome="dry-run",`, dryPort)
	ids := agentspec.BackendIDs(four)
	minimum := connfleet.MinimumResets(dryClients.Snapshot().Of(ids...), rebalanceTolerance)

	agentspec.Allow(t, plainClients, four)
	agentspec.Allow(t, dryClients, four)
	plain.Backends, dry.Backends = four, four
	a.WriteService(plain)
	a.WriteAnnotated(dry, rebalanceAnnotations(true))
	env.DP.WaitProgrammed(t, a, plain, dry)
	// Past the settling time, three rounds plan to shed and do not.
	a.WaitRebalanceRounds(dryPort, "dry-run", dryRuns, 3, agentspec.Deadline)
	// New connections reach the new backends meanwhile.
	env.Spread(t, "new connections after the scale-up", topo.Client, "tcp", plain.Addr(), 4, four...)

	// The metrics before the clients close their connections.
	text = env.MustMetrics(t)
	plainClients.Stop()
	dryClients.Stop()
	for _, f := range []*connfleet.Fleet{plainClients, dryClients} {
		s := f.Snapshot()
		if s.Lost > 0 || s.DialErrs > 0 || s.Unconnected > 0 || s.Failed > 0 || s.Bad > 0 {
			t.Errorf("%s: connections were touched: %v; %v", f.Name(), s, s.Examples)
		}
		counts := s.Of(ids...)
		if counts[0]+counts[1] != n || counts[2]+counts[3] != 0 || connfleet.Imbalance(counts) != 2 {
			t.Errorf("%s: connections per backend %v, want all %d still on the first 2 (max/mean 2)", f.Name(), counts, n)
		}
		if s.Answered < 10*n {
			t.Errorf("%s: %d requests answered over the test, want at least 10 a client", f.Name(), s.Answered)
		}
		t.Logf("%s after the scale-up: %v", f.Name(), s)
	}
	if s := agentspec.RebalanceSeries(text, plainPort); len(s) > 0 {
		t.Errorf("rebalancer metrics for the Service without the opt-in: %v", s)
	}
	t.Logf("dry run's rebalancer metrics:\n  %s", strings.Join(agentspec.RebalanceSeries(text, dryPort), "\n  "))
	for _, m := range []string{"conntrack", "socketlb"} {
		if v, _ := agentspec.RebalanceMetric(text, "resets_total", `mechanism="`+m+`",`, dryPort); v != 0 {
			t.Errorf("dry run: switchyard_rebalance_resets_total{mechanism=%q} = %v, want none", m, v)
		}
	}
	if v, ok := agentspec.RebalanceMetric(text, "planned_resets", "", dryPort); !ok || v != float64(minimum) {
		t.Errorf("dry run: switchyard_rebalance_planned_resets = %v (present %v), want the minimum %d", v, ok, minimum)
	}
	if v, ok := agentspec.RebalanceMetric(text, "imbalance_ratio", "", dryPort); !ok || v != 2 {
		t.Errorf("dry run: switchyard_rebalance_imbalance_ratio = %v (present %v), want 2 (all on 2 of 4 backends)", v, ok)
	}
	log := a.Current().Log()
	if strings.Contains(log, `"Rebalanced connections"`) {
		t.Errorf("the agent shed connections with no Service opted in for real:\n%s", log)
	}
	if !strings.Contains(log, `"Rebalancer dry run: would shed connections" service="`+dryPort+`"`) {
		t.Errorf("no dry-run line for %s in the agent's log", dryPort)
	}
}
