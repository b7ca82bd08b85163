package nftnetns

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/test/agentspec"
	"github.com/switchyard/switchyard/test/netnstest"
)

// The connection rebalancer (switchyard.io/rebalance) end to end with the
// agent binary on the nftables dataplane: long-lived client connections,
// each sending a request every 100 ms, spread evenly over 2 backends; the
// Service scales to 4; the rebalancer sheds connections (conntrack mark,
// turned into a reset by the dataplane's reset rules; or, with
// --bpf-socket-lb, sock_diag on the translated sockets) and the clients
// reconnect, until the connections are even on 4 backends again. New
// connections go to a random backend (no steering yet), so later rounds
// shed again for the reconnects that landed on busy backends: the test
// reports the resets against the minimum rather than asking for it.

const (
	// rebalanceClients are the long-lived connections to the opted-in
	// Service; bystanderClients those to a Service without the opt-in
	// on the same backends, which must never be reset.
	rebalanceClients = 60
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
	ann := map[string]string{
		dataplane.AnnotationRebalance:          "true",
		dataplane.AnnotationRebalanceTolerance: fmt.Sprint(rebalanceTolerance),
		dataplane.AnnotationRebalanceMaxResets: fmt.Sprint(rebalanceMaxResets),
		dataplane.AnnotationRebalanceMinAge:    "1s",
	}
	if dryRun {
		ann[dataplane.AnnotationRebalanceDryRun] = "true"
	}
	return ann
}

// writeAnnotated writes s (its Service and EndpointSlice, as
// Agent.WriteService does) with annotations on the Service.
func writeAnnotated(t *testing.T, a *agentspec.Agent, s agentspec.Service, ann map[string]string) {
	t.Helper()
	if len(ann) == 0 {
		a.WriteService(s)
		return
	}
	if s.Scheduler != "" {
		t.Fatal("writeAnnotated: the Service already has an annotations block (Scheduler)")
	}
	head := fmt.Sprintf("kind: Service\nmetadata:\n  name: %s\n  namespace: %s\n", s.Name, agentspec.Namespace)
	doc := s.YAML()
	if strings.Count(doc, head) != 1 {
		t.Fatalf("writeAnnotated: no Service metadata %q in:\n%s", head, doc)
	}
	var b strings.Builder
	b.WriteString(head + "  annotations:\n")
	for _, k := range slices.Sorted(maps.Keys(ann)) {
		fmt.Fprintf(&b, "    %s: %q\n", k, ann[k])
	}
	a.Write(s.Name+".yaml", strings.Replace(doc, head, b.String(), 1))
}

// portName is the Service port's name as the agent's metrics label it.
func portName(s agentspec.Service) string {
	return agentspec.Namespace + "/" + s.Name + ":p/" + strings.ToLower(s.Proto())
}

// clientStats is one client's record; guarded by fleet.mu.
type clientStats struct {
	// backend answered the last request on the current connection; ""
	// while the client has no connection.
	backend string
	// answered: requests answered; lost: connections that failed under
	// an exchange (a reset, EOF, a timeout) and were replaced; dialErrs:
	// reconnects that failed.
	answered, lost, dialErrs int
}

// fleet is a set of clients, each holding one connection to a Service
// from the client namespace and sending a request every requestInterval;
// on an error it reconnects at once and retries the same request, and the
// request fails only when maxAttempts attempts could not get it answered.
type fleet struct {
	name string
	topo *agentspec.Topology
	addr string
	// source checks the source a backend saw on conn.
	source func(conn net.Conn, be agentspec.Backend, seen netip.AddrPort) error
	stop   chan struct{}
	wg     sync.WaitGroup

	mu      sync.Mutex
	allowed map[string]bool // backend IDs the Service has
	clients []*clientStats
	// failed are requests not answered after maxAttempts; bad are
	// answers from a backend the Service does not have or with the
	// wrong source; errs counts the errors seen, by kind.
	failed, bad []string
	errs        map[string]int
}

// masqueradedSource: the nftables dataplane masquerades the client (it
// is outside --cluster-cidr): the backend sees the node's address on its
// link.
func masqueradedSource(_ net.Conn, be agentspec.Backend, seen netip.AddrPort) error {
	if seen.Addr() != agentspec.Masqueraded(be) {
		return fmt.Errorf("%s saw source %s, want the node's %s (masqueraded)", be.ID, seen, agentspec.Masqueraded(be))
	}
	return nil
}

// translatedSource: the socket load balancer connected the client's
// socket straight to the backend, which sees the socket's own address.
func translatedSource(conn net.Conn, be agentspec.Backend, seen netip.AddrPort) error {
	if local := conn.LocalAddr().String(); seen.String() != local {
		return fmt.Errorf("%s saw source %s, want the client's own %s (translated)", be.ID, seen, local)
	}
	return nil
}

func newFleet(t *testing.T, name string, topo *agentspec.Topology, s agentspec.Service,
	source func(net.Conn, agentspec.Backend, netip.AddrPort) error) *fleet {
	f := &fleet{name: name, topo: topo, addr: s.Addr(), source: source, stop: make(chan struct{}),
		allowed: map[string]bool{}, errs: map[string]int{}}
	f.allow(s.Backends)
	t.Cleanup(f.halt)
	return f
}

// allow lets the Service's backends answer (before they are written).
func (f *fleet) allow(bes []agentspec.Backend) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, be := range bes {
		f.allowed[be.ID] = true
	}
}

// exchange sends one request on conn and checks the answer: from a
// backend the Service has, with the expected source. It returns the
// backend's ID; bad is set for a wrong answer (not worth a retry).
func (f *fleet) exchange(conn net.Conn, msg string) (id string, bad bool, err error) {
	reply, err := netnstest.Exchange(conn, msg, attemptTimeout)
	if err != nil {
		return "", false, err
	}
	id, remote, err := netnstest.ReplyID(reply)
	if err != nil {
		return "", true, err
	}
	be, ok := f.topo.Backend(id)
	f.mu.Lock()
	ok = ok && f.allowed[id]
	f.mu.Unlock()
	if !ok {
		return "", true, fmt.Errorf("reply %q from a backend the Service does not have", reply)
	}
	seen, err := netip.ParseAddrPort(remote)
	if err == nil {
		err = f.source(conn, be, seen)
	}
	if err != nil {
		return "", true, fmt.Errorf("reply %q: %w", reply, err)
	}
	return id, false, nil
}

// establish opens n connections spread exactly evenly over the backends
// (a connection to a backend ahead of the others is closed and dialed
// again, at most 20 dials a connection) and starts a client on each.
func (f *fleet) establish(t *testing.T, n int, backends []agentspec.Backend) {
	t.Helper()
	counts := map[string]int{}
	for _, be := range backends {
		counts[be.ID] = 0
	}
	for dials := 0; len(f.clients) < n; dials++ {
		if dials == 20*n {
			t.Fatalf("%s: %d connections after %d dials (%v), want %d spread evenly", f.name, len(f.clients), dials, counts, n)
		}
		conn, err := netnstest.Dial(f.topo.Client, "tcp", f.addr, attemptTimeout)
		if err != nil {
			t.Fatalf("%s: %v", f.name, err)
		}
		id, _, err := f.exchange(conn, "hello")
		if err != nil {
			conn.Close()
			t.Fatalf("%s: first exchange: %v", f.name, err)
		}
		if counts[id] > slices.Min(slices.Collect(maps.Values(counts))) {
			conn.Close()
			continue
		}
		counts[id]++
		st := &clientStats{backend: id}
		f.mu.Lock()
		f.clients = append(f.clients, st)
		f.mu.Unlock()
		f.wg.Add(1)
		go f.run(len(f.clients)-1, st, conn)
	}
}

// errKind names an error for the tally.
func errKind(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNRESET):
		return "ECONNRESET"
	case errors.Is(err, syscall.ECONNABORTED):
		return "ECONNABORTED"
	case errors.Is(err, syscall.EPIPE):
		return "EPIPE"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "ECONNREFUSED"
	case errors.Is(err, io.EOF):
		return "EOF"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return err.Error()
}

// run is one client's loop; conn is its first connection.
func (f *fleet) run(idx int, st *clientStats, conn net.Conn) {
	defer f.wg.Done()
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	// Spread the clients' requests over the interval.
	next := time.Now().Add(time.Duration(idx) * requestInterval / rebalanceClients)
	for i := range maxClientRequests {
		select {
		case <-f.stop:
			return
		case <-time.After(time.Until(next)):
		}
		next = next.Add(requestInterval)
		msg := fmt.Sprintf("%s-%d-%d", f.name, idx, i)
		var lastErr error
		answered := false
		for attempt := 0; attempt < maxAttempts && !answered; attempt++ {
			if conn == nil {
				c, err := netnstest.Dial(f.topo.Client, "tcp", f.addr, attemptTimeout)
				if err != nil {
					lastErr = err
					f.mu.Lock()
					st.dialErrs++
					f.errs["dial: "+errKind(err)]++
					f.mu.Unlock()
					continue
				}
				conn = c
			}
			id, bad, err := f.exchange(conn, msg)
			f.mu.Lock()
			switch {
			case bad:
				f.bad = append(f.bad, fmt.Sprintf("client %d request %s: %v", idx, msg, err))
				f.mu.Unlock()
				return
			case err != nil:
				lastErr = err
				st.lost++
				st.backend = ""
				f.errs[errKind(err)]++
				conn.Close()
				conn = nil
			default:
				st.answered++
				st.backend = id
				answered = true
			}
			f.mu.Unlock()
		}
		if !answered {
			f.mu.Lock()
			f.failed = append(f.failed, fmt.Sprintf("client %d request %s: %d attempts, last: %v", idx, msg, maxAttempts, lastErr))
			f.mu.Unlock()
		}
		select {
		case <-f.stop:
			return
		default:
		}
	}
}

// halt stops the clients and waits for them (bounded by one attempt
// each); idempotent.
func (f *fleet) halt() {
	select {
	case <-f.stop:
	default:
		close(f.stop)
	}
	f.wg.Wait()
}

// snapshot is the fleet's state at one moment.
type snapshot struct {
	perBackend               map[string]int
	unconnected              int
	answered, lost, dialErrs int
	failed, bad              []string
	errs                     map[string]int
}

func (f *fleet) snapshot() snapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := snapshot{perBackend: map[string]int{}, failed: slices.Clone(f.failed), bad: slices.Clone(f.bad), errs: maps.Clone(f.errs)}
	for _, c := range f.clients {
		if c.backend == "" {
			s.unconnected++
		} else {
			s.perBackend[c.backend]++
		}
		s.answered += c.answered
		s.lost += c.lost
		s.dialErrs += c.dialErrs
	}
	return s
}

// counts are the connections per backend of bes, in their order.
func (s snapshot) counts(bes []agentspec.Backend) []int {
	out := make([]int, len(bes))
	for i, be := range bes {
		out[i] = s.perBackend[be.ID]
	}
	return out
}

func (s snapshot) String() string {
	return fmt.Sprintf("per backend %v, %d reconnecting; %d answered, %d connections lost, %d failed dials, errors %v",
		s.perBackend, s.unconnected, s.answered, s.lost, s.dialErrs, s.errs)
}

// imbalance is max/mean of counts (0 without connections).
func imbalance(counts []int) float64 {
	total := 0
	for _, n := range counts {
		total += n
	}
	if total == 0 {
		return 0
	}
	return float64(slices.Max(counts)) / (float64(total) / float64(len(counts)))
}

// minimumResets is the fewest connections to shed so that counts, with
// the shed ones reconnected to the least-loaded backends, reach max/mean
// <= 1+tol: each backend keeps at most max(ceil(mean),
// floor((1+tol)*mean)) (whole connections), the rest must go.
func minimumResets(counts []int, tol float64) int {
	total := 0
	for _, n := range counts {
		total += n
	}
	mean := float64(total) / float64(len(counts))
	limit := max(int(math.Ceil(mean-1e-9)), int(math.Floor((1+tol)*mean+1e-9)))
	need := 0
	for _, n := range counts {
		need += max(0, n-limit)
	}
	return need
}

// rebalanceSeries are the switchyard_rebalance_* samples of a Service
// port in metrics text.
func rebalanceSeries(text, port string) []string {
	rx := regexp.MustCompile(`(?m)^switchyard_rebalance_\w+\{[^}]*service="` + regexp.QuoteMeta(port) + `"[^}]*\} \S+$`)
	return rx.FindAllString(text, -1)
}

// rebalanceMetric is one switchyard_rebalance_* sample of a Service port
// (labels besides service as `k="v",` in Prometheus order), 0 when absent.
func rebalanceMetric(text, name, labels, port string) (float64, bool) {
	return sample(text, fmt.Sprintf(`switchyard_rebalance_%s{%sservice="%s"}`, name, labels, port))
}

// mustMetrics reads /metrics or fails the test.
func mustMetrics(t *testing.T, env *agentspec.Env) string {
	t.Helper()
	text, err := metricsText(env)
	if err != nil {
		t.Fatalf("/metrics: %v", err)
	}
	return text
}

// waitRounds waits until the rebalancer has counted n more rounds of
// outcome for port than from.
func waitRounds(t *testing.T, env *agentspec.Env, a *agentspec.Agent, port, outcome string, from float64, n int) {
	t.Helper()
	a.Eventually(fmt.Sprintf("%d more rebalancer rounds %q of %s", n, outcome, port), agentspec.Deadline, func() (bool, string) {
		text, err := metricsText(env)
		if err != nil {
			return false, err.Error()
		}
		got, _ := rebalanceMetric(text, "rounds_total", `outcome="`+outcome+`",`, port)
		return got >= from+float64(n), fmt.Sprintf("%v rounds (from %v); series: %v", got, from, rebalanceSeries(text, port))
	})
}

// rebalanceMode is the mechanism that sheds in a run of rebalanceScaleUp.
type rebalanceMode struct {
	mechanism string // the resets_total label: "conntrack" or "socketlb"
	other     string // the mechanism that must close nothing
	// socketLB runs the agent with --bpf-socket-lb on a test cgroup the
	// test process enters.
	socketLB bool
	source   func(net.Conn, agentspec.Backend, netip.AddrPort) error
}

// TestNFTAgentRebalance: a ClusterIP Service opted in to rebalancing
// (tolerance 0.1, 50 resets/s, min age 1 s) with 60 long-lived client
// connections spread evenly over 2 backends scales to 4: the rebalancer
// marks conntrack flows, the nftables dataplane's reset rules reset them,
// and the clients, reconnecting at once, end up within max/mean <= 1.1 on
// the 4 backends without a request failing; the resets are at least the
// minimum the scale-up needs; a Service without the opt-in on the same
// backends (8 connections) is never touched.
func TestNFTAgentRebalance(t *testing.T) {
	requireAgent(t)
	probeNFTables(t)
	rebalanceScaleUp(t, rebalanceMode{mechanism: "conntrack", other: "socketlb", source: masqueradedSource})
}

// TestNFTAgentRebalanceSocketLB: the same with --bpf-socket-lb (a test
// cgroup and a private bpf file system, as TestNFTAgentSocketLB): the
// clients' sockets are connected straight to the backends, and the
// rebalancer closes them with sock_diag in the client's namespace.
func TestNFTAgentRebalanceSocketLB(t *testing.T) {
	requireAgent(t)
	probeNFTables(t)
	rebalanceScaleUp(t, rebalanceMode{mechanism: "socketlb", other: "conntrack", socketLB: true, source: translatedSource})
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
	webPort, byPort := portName(web), portName(by)
	writeAnnotated(t, a, web, rebalanceAnnotations(false))
	a.WriteService(by)
	a.Start()
	a.WaitLog(`"Rebalancer ready for Services that opt in".*` + mode.mechanism)
	env.DP.WaitProgrammed(t, a, web, by)

	clients := newFleet(t, "web", topo, web, mode.source)
	bystanders := newFleet(t, "bystander", topo, by, mode.source)
	clients.establish(t, rebalanceClients, two)
	bystanders.establish(t, bystanderClients, two)

	// Evenly spread: the rebalancer measures them and leaves them be.
	text := mustMetrics(t, env)
	balancedBefore, _ := rebalanceMetric(text, "rounds_total", `outcome="balanced",`, webPort)
	waitRounds(t, env, a, webPort, "balanced", balancedBefore, 1)
	text = mustMetrics(t, env)
	if v, ok := rebalanceMetric(text, "imbalance_ratio", "", webPort); !ok || v != 1 {
		t.Errorf("imbalance ratio with %d connections evenly on 2 backends: %v (present %v), want 1", rebalanceClients, v, ok)
	}
	before := clients.snapshot()
	if before.lost > 0 || len(before.failed) > 0 {
		t.Errorf("connections lost before the scale-up (nothing to rebalance): %v", before)
	}
	for _, m := range []string{mode.mechanism, mode.other} {
		if v, _ := rebalanceMetric(text, "resets_total", `mechanism="`+m+`",`, webPort); v != 0 {
			t.Errorf("%s resets before the scale-up (connections even): %v", m, v)
		}
	}
	minimum := minimumResets(append(before.counts(two), 0, 0), rebalanceTolerance)
	t.Logf("before the scale-up: %v; minimum resets for 2 -> 4 backends at tolerance %v: %d", before.perBackend, rebalanceTolerance, minimum)

	// Scale up.
	clients.allow(four)
	bystanders.allow(four)
	web.Backends, by.Backends = four, four
	scaled := time.Now()
	writeAnnotated(t, a, web, rebalanceAnnotations(false))
	a.WriteService(by)
	env.DP.WaitProgrammed(t, a, web, by)

	// The clients see their connections even on 4 backends.
	var balanced snapshot
	a.Eventually("the clients' connections within max/mean <= 1.1 on 4 backends", balanceDeadline, func() (bool, string) {
		balanced = clients.snapshot()
		counts := balanced.counts(four)
		return balanced.unconnected == 0 && imbalance(counts) <= 1+rebalanceTolerance+1e-9,
			fmt.Sprintf("counts %v (ratio %.2f); %v", counts, imbalance(counts), balanced)
	})
	took := time.Since(scaled)
	// And the rebalancer agrees: rounds find the Service balanced.
	text = mustMetrics(t, env)
	from, _ := rebalanceMetric(text, "rounds_total", `outcome="balanced",`, webPort)
	waitRounds(t, env, a, webPort, "balanced", from, 2)
	text = mustMetrics(t, env)
	resets, _ := rebalanceMetric(text, "resets_total", `mechanism="`+mode.mechanism+`",`, webPort)
	if v, ok := rebalanceMetric(text, "imbalance_ratio", "", webPort); !ok || v > 1+rebalanceTolerance+1e-9 {
		t.Errorf("switchyard_rebalance_imbalance_ratio = %v (present %v) once balanced, want <= %v", v, ok, 1+rebalanceTolerance)
	}
	rounds := rebalanceSeries(text, webPort)
	shedLines := regexp.MustCompile(`.*"Rebalanced connections".*`).FindAllString(a.Current().Log(), -1)
	clients.halt()
	bystanders.halt()
	final, bys := clients.snapshot(), bystanders.snapshot()
	t.Logf("balanced %v after the scale-up: clients %v (ratio %.2f); %v %s resets (minimum %d) in %d rounds that shed; clients lost %d connections in all (errors %v), %d requests answered; bystander: %v",
		took.Round(10*time.Millisecond), balanced.perBackend, imbalance(balanced.counts(four)), resets, mode.mechanism, minimum, len(shedLines),
		final.lost, final.errs, final.answered, bys)
	t.Logf("rebalancer metrics of %s:\n  %s\nrounds that shed:\n  %s", webPort, strings.Join(rounds, "\n  "), strings.Join(shedLines, "\n  "))

	if len(final.failed) > 0 || len(final.bad) > 0 {
		t.Errorf("%d requests failed after reconnecting, %d wrong answers (want none): %v %v", len(final.failed), len(final.bad), final.failed, final.bad)
	}
	if final.answered < 10*rebalanceClients || bys.answered < 10*bystanderClients {
		t.Errorf("requests answered: %d by %d clients, %d by %d bystanders; want at least 10 a client", final.answered, rebalanceClients, bys.answered, bystanderClients)
	}
	if resets <= 0 || resets < float64(minimum) {
		t.Errorf("switchyard_rebalance_resets_total{mechanism=%q} = %v, want at least the minimum %d", mode.mechanism, resets, minimum)
	}
	// Every connection a client lost is one the rebalancer closed (it
	// counts a close before the client can see it).
	text = mustMetrics(t, env)
	if resets, _ = rebalanceMetric(text, "resets_total", `mechanism="`+mode.mechanism+`",`, webPort); float64(final.lost) > resets {
		t.Errorf("the clients lost %d connections, more than the %v the rebalancer closed: %v", final.lost, resets, final)
	}
	if v, _ := rebalanceMetric(text, "resets_total", `mechanism="`+mode.other+`",`, webPort); v != 0 {
		t.Errorf("%s closed %v connections; only %s sees these", mode.other, v, mode.mechanism)
	}
	for _, m := range []string{"conntrack", "socketlb"} {
		if v, _ := rebalanceMetric(text, "errors_total", `mechanism="`+m+`",`, webPort); v != 0 {
			t.Errorf("switchyard_rebalance_errors_total{mechanism=%q} = %v, want 0", m, v)
		}
	}
	// The bystander was never touched, nor measured.
	if bys.lost > 0 || bys.dialErrs > 0 || len(bys.failed) > 0 || len(bys.bad) > 0 || bys.unconnected > 0 {
		t.Errorf("the Service without the opt-in was touched: %v failed %v bad %v", bys, bys.failed, bys.bad)
	}
	if got := bys.counts(four); got[2]+got[3] != 0 {
		t.Errorf("the Service without the opt-in has connections on the new backends: %v", got)
	}
	if s := rebalanceSeries(text, byPort); len(s) > 0 {
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
	plainPort, dryPort := portName(plain), portName(dry)
	a.WriteService(plain)
	writeAnnotated(t, a, dry, rebalanceAnnotations(true))
	a.Start()
	a.WaitLog(`"Rebalancer ready for Services that opt in".*conntrack`)
	env.DP.WaitProgrammed(t, a, plain, dry)

	const n = 24
	plainClients := newFleet(t, "plain", topo, plain, masqueradedSource)
	dryClients := newFleet(t, "dry", topo, dry, masqueradedSource)
	plainClients.establish(t, n, two)
	dryClients.establish(t, n, two)
	text := mustMetrics(t, env)
	balanced, _ := rebalanceMetric(text, "rounds_total", `outcome="balanced",`, dryPort)
	waitRounds(t, env, a, dryPort, "balanced", balanced, 1)
	text = mustMetrics(t, env)
	dryRuns, _ := rebalanceMetric(text, "rounds_total", `outcome="dry-run",`, dryPort)
	minimum := minimumResets(append(dryClients.snapshot().counts(two), 0, 0), rebalanceTolerance)

	plainClients.allow(four)
	dryClients.allow(four)
	plain.Backends, dry.Backends = four, four
	a.WriteService(plain)
	writeAnnotated(t, a, dry, rebalanceAnnotations(true))
	env.DP.WaitProgrammed(t, a, plain, dry)
	// Past the settling time, three rounds plan to shed and do not.
	waitRounds(t, env, a, dryPort, "dry-run", dryRuns, 3)
	// New connections reach the new backends meanwhile.
	env.Spread(t, "new connections after the scale-up", topo.Client, "tcp", plain.Addr(), 4, four...)

	// The metrics before the clients close their connections.
	text = mustMetrics(t, env)
	plainClients.halt()
	dryClients.halt()
	for _, f := range []*fleet{plainClients, dryClients} {
		s := f.snapshot()
		if s.lost > 0 || s.dialErrs > 0 || s.unconnected > 0 || len(s.failed) > 0 || len(s.bad) > 0 {
			t.Errorf("%s: connections were touched: %v failed %v bad %v", f.name, s, s.failed, s.bad)
		}
		counts := s.counts(four)
		if counts[0]+counts[1] != n || counts[2]+counts[3] != 0 || imbalance(counts) != 2 {
			t.Errorf("%s: connections per backend %v, want all %d still on the first 2 (max/mean 2)", f.name, counts, n)
		}
		if s.answered < 10*n {
			t.Errorf("%s: %d requests answered over the test, want at least 10 a client", f.name, s.answered)
		}
		t.Logf("%s after the scale-up: %v", f.name, s)
	}
	if s := rebalanceSeries(text, plainPort); len(s) > 0 {
		t.Errorf("rebalancer metrics for the Service without the opt-in: %v", s)
	}
	t.Logf("dry run's rebalancer metrics:\n  %s", strings.Join(rebalanceSeries(text, dryPort), "\n  "))
	for _, m := range []string{"conntrack", "socketlb"} {
		if v, _ := rebalanceMetric(text, "resets_total", `mechanism="`+m+`",`, dryPort); v != 0 {
			t.Errorf("dry run: switchyard_rebalance_resets_total{mechanism=%q} = %v, want none", m, v)
		}
	}
	if v, ok := rebalanceMetric(text, "planned_resets", "", dryPort); !ok || v != float64(minimum) {
		t.Errorf("dry run: switchyard_rebalance_planned_resets = %v (present %v), want the minimum %d", v, ok, minimum)
	}
	if v, ok := rebalanceMetric(text, "imbalance_ratio", "", dryPort); !ok || v != 2 {
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
