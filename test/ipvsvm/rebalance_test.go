package ipvsvm

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/switchyard/switchyard/conntrack"
	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/iptables"
	"github.com/switchyard/switchyard/ipvs"
	"github.com/switchyard/switchyard/test/agentspec"
	"github.com/switchyard/switchyard/test/netnstest"
	"github.com/switchyard/switchyard/test/vm/guest"
)

// The connection rebalancer (switchyard.io/rebalance) with the agent
// binary on the IPVS dataplane. The agent marks the conntrack entries of
// the connections it sheds (net.ipv4.vs.conntrack=1 gives IPVS flows
// entries: original destination the virtual IP, reply source the real
// server); package iptables' SWITCHYARD-RESET-MARKED, hooked first from
// filter INPUT, FORWARD and OUTPUT, turns the next packet of either end
// into a TCP reset before IPVS sees it; the clients reconnect, and IPVS's
// wlc scheduler (ipvs.RebalanceScheduler, for opted-in Services) sends
// them to the least-loaded backends. The scenario follows
// test/nftnetns/rebalance_test.go (the nftables dataplane's), with fewer
// clients for a TCG VM.

const (
	// rbClients are the long-lived connections to the opted-in Service;
	// rbBystanders those to a Service without the opt-in on the same
	// backends, which must never be reset.
	rbClients    = 40
	rbBystanders = 8
	// rbTolerance and rbMaxResets are the Service's knobs.
	rbTolerance = 0.10
	rbMaxResets = 50
	// rbInterval: each client's pace on its connection.
	rbInterval = 100 * time.Millisecond
	// rbAttemptTimeout bounds one dial and one exchange; rbMaxAttempts
	// the reconnect-and-retry attempts of one request (the first
	// included).
	rbAttemptTimeout = 3 * time.Second
	rbMaxAttempts    = 4
	// rbMaxRequests bounds each client's loop (some 5 minutes at its
	// pace).
	rbMaxRequests = 3000
	// rbProgramDeadline bounds the wait for IPVS to have the new real
	// servers after the scale-up; rbBalanceDeadline the wait for the
	// rebalanced state after that.
	rbProgramDeadline = 90 * time.Second
	rbBalanceDeadline = 90 * time.Second
)

// rbAnnotations are the annotations of an opted-in Service.
func rbAnnotations() map[string]string {
	return map[string]string{
		dataplane.AnnotationRebalance:          "true",
		dataplane.AnnotationRebalanceTolerance: fmt.Sprint(rbTolerance),
		dataplane.AnnotationRebalanceMaxResets: fmt.Sprint(rbMaxResets),
		dataplane.AnnotationRebalanceMinAge:    "1s",
	}
}

// rbWriteAnnotated writes s (its Service and EndpointSlice, as
// Agent.WriteService does) with annotations on the Service.
func rbWriteAnnotated(t *testing.T, a *agentspec.Agent, s agentspec.Service, ann map[string]string) {
	t.Helper()
	if s.Scheduler != "" {
		t.Fatal("rbWriteAnnotated: the Service already has an annotations block (Scheduler)")
	}
	head := fmt.Sprintf("kind: Service\nmetadata:\n  name: %s\n  namespace: %s\n", s.Name, agentspec.Namespace)
	doc := s.YAML()
	if strings.Count(doc, head) != 1 {
		t.Fatalf("rbWriteAnnotated: no Service metadata %q in:\n%s", head, doc)
	}
	var b strings.Builder
	b.WriteString(head + "  annotations:\n")
	for _, k := range slices.Sorted(maps.Keys(ann)) {
		fmt.Fprintf(&b, "    %s: %q\n", k, ann[k])
	}
	a.Write(s.Name+".yaml", strings.Replace(doc, head, b.String(), 1))
}

// rbPortName is the Service port's name as the agent's metrics label it.
func rbPortName(s agentspec.Service) string {
	return agentspec.Namespace + "/" + s.Name + ":p/" + strings.ToLower(s.Proto())
}

// rbMetricsText is the agent's /metrics (the agent runs in the VM's root
// namespace, as this test).
func rbMetricsText() (string, error) {
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := hc.Get("http://127.0.0.1:10249/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return string(b), err
}

func rbMustMetrics(t *testing.T) string {
	t.Helper()
	text, err := rbMetricsText()
	if err != nil {
		t.Fatalf("/metrics: %v", err)
	}
	return text
}

// rbSeries are the switchyard_rebalance_* samples of a Service port.
func rbSeries(text, port string) []string {
	rx := regexp.MustCompile(`(?m)^switchyard_rebalance_\w+\{[^}]*service="` + regexp.QuoteMeta(port) + `"[^}]*\} \S+$`)
	return rx.FindAllString(text, -1)
}

// rbMetric is one switchyard_rebalance_* sample of a Service port (labels
// besides service as `k="v",` in Prometheus order), 0 when absent.
func rbMetric(text, name, labels, port string) (float64, bool) {
	series := fmt.Sprintf(`switchyard_rebalance_%s{%sservice="%s"}`, name, labels, port)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(text)
	if m == nil {
		return 0, false
	}
	v, err := strconv.ParseFloat(m[1], 64)
	return v, err == nil
}

// rbWaitRounds waits until the rebalancer has counted n more rounds of
// outcome for port than from.
func rbWaitRounds(t *testing.T, a *agentspec.Agent, port, outcome string, from float64, n int, timeout time.Duration) {
	t.Helper()
	a.Eventually(fmt.Sprintf("%d more rebalancer rounds %q of %s", n, outcome, port), timeout, func() (bool, string) {
		text, err := rbMetricsText()
		if err != nil {
			return false, err.Error()
		}
		got, _ := rbMetric(text, "rounds_total", `outcome="`+outcome+`",`, port)
		return got >= from+float64(n), fmt.Sprintf("%v rounds (from %v); series: %v", got, from, rbSeries(text, port))
	})
}

// rbClient is one client's record; guarded by rbFleet.mu.
type rbClient struct {
	// backend answered the last request on the current connection; ""
	// while the client has no connection.
	backend string
	// answered: requests answered; lost: connections that failed under
	// an exchange (a reset, EOF, a timeout) and were replaced; dialErrs:
	// reconnects that failed.
	answered, lost, dialErrs int
}

// rbFleet is a set of clients, each holding one connection to a Service
// from the client namespace and sending a request every rbInterval; on an
// error it reconnects at once and retries the same request, and the
// request fails only when rbMaxAttempts attempts could not get it
// answered. Every answer must come from a backend the Service has and
// show the node's address on that backend's link as the source (the
// client is outside the cluster CIDR: masqueraded).
type rbFleet struct {
	name string
	topo *agentspec.Topology
	addr string
	stop chan struct{}
	wg   sync.WaitGroup

	mu      sync.Mutex
	allowed map[string]bool // backend IDs the Service has
	clients []*rbClient
	// failed are requests not answered after rbMaxAttempts; bad are
	// answers from a backend the Service does not have or with the
	// wrong source; errs counts the errors seen, by kind.
	failed, bad []string
	errs        map[string]int
}

func newRBFleet(t *testing.T, name string, topo *agentspec.Topology, s agentspec.Service) *rbFleet {
	f := &rbFleet{name: name, topo: topo, addr: s.Addr(), stop: make(chan struct{}), allowed: map[string]bool{}, errs: map[string]int{}}
	f.allow(s.Backends)
	t.Cleanup(f.halt)
	return f
}

// allow lets the Service's backends answer (before they are written).
func (f *rbFleet) allow(bes []agentspec.Backend) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, be := range bes {
		f.allowed[be.ID] = true
	}
}

// exchange sends one request on conn and checks the answer. It returns
// the backend's ID; bad is set for a wrong answer (not worth a retry).
func (f *rbFleet) exchange(conn net.Conn, msg string) (id string, bad bool, err error) {
	reply, err := netnstest.Exchange(conn, msg, rbAttemptTimeout)
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
	if seen, err := netip.ParseAddrPort(remote); err != nil || seen.Addr() != agentspec.Masqueraded(be) {
		return "", true, fmt.Errorf("reply %q: %s saw source %s, want the node's %s (masqueraded)", reply, be.ID, remote, agentspec.Masqueraded(be))
	}
	return id, false, nil
}

// establish opens n connections spread exactly evenly over the backends
// (a connection to a backend ahead of the others is closed and dialed
// again, at most 20 dials a connection) and starts a client on each.
func (f *rbFleet) establish(t *testing.T, n int, backends []agentspec.Backend) {
	t.Helper()
	counts := map[string]int{}
	for _, be := range backends {
		counts[be.ID] = 0
	}
	for dials := 0; len(f.clients) < n; dials++ {
		if dials == 20*n {
			t.Fatalf("%s: %d connections after %d dials (%v), want %d spread evenly", f.name, len(f.clients), dials, counts, n)
		}
		conn, err := netnstest.Dial(f.topo.Client, "tcp", f.addr, rbAttemptTimeout)
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
		st := &rbClient{backend: id}
		f.mu.Lock()
		f.clients = append(f.clients, st)
		f.mu.Unlock()
		f.wg.Add(1)
		go f.run(len(f.clients)-1, st, conn)
	}
}

// rbErrKind names an error for the tally.
func rbErrKind(err error) string {
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
func (f *rbFleet) run(idx int, st *rbClient, conn net.Conn) {
	defer f.wg.Done()
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	// Spread the clients' requests over the interval.
	next := time.Now().Add(time.Duration(idx) * rbInterval / rbClients)
	for i := range rbMaxRequests {
		select {
		case <-f.stop:
			return
		case <-time.After(time.Until(next)):
		}
		next = next.Add(rbInterval)
		if d := time.Until(next); d < -rbInterval {
			next = time.Now() // behind (a slow VM): do not burst
		}
		msg := fmt.Sprintf("%s-%d-%d", f.name, idx, i)
		var lastErr error
		answered := false
		for attempt := 0; attempt < rbMaxAttempts && !answered; attempt++ {
			if conn == nil {
				c, err := netnstest.Dial(f.topo.Client, "tcp", f.addr, rbAttemptTimeout)
				if err != nil {
					lastErr = err
					f.mu.Lock()
					st.dialErrs++
					f.errs["dial: "+rbErrKind(err)]++
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
				f.errs[rbErrKind(err)]++
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
			f.failed = append(f.failed, fmt.Sprintf("client %d request %s: %d attempts, last: %v", idx, msg, rbMaxAttempts, lastErr))
			f.mu.Unlock()
		}
	}
}

// halt stops the clients and waits for them (bounded by one request's
// attempts each); idempotent.
func (f *rbFleet) halt() {
	select {
	case <-f.stop:
	default:
		close(f.stop)
	}
	f.wg.Wait()
}

// rbSnapshot is a fleet's state at one moment.
type rbSnapshot struct {
	perBackend               map[string]int
	unconnected              int
	answered, lost, dialErrs int
	failed, bad              []string
	errs                     map[string]int
}

func (f *rbFleet) snapshot() rbSnapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := rbSnapshot{perBackend: map[string]int{}, failed: slices.Clone(f.failed), bad: slices.Clone(f.bad), errs: maps.Clone(f.errs)}
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
func (s rbSnapshot) counts(bes []agentspec.Backend) []int {
	out := make([]int, len(bes))
	for i, be := range bes {
		out[i] = s.perBackend[be.ID]
	}
	return out
}

func (s rbSnapshot) String() string {
	return fmt.Sprintf("per backend %v, %d reconnecting; %d answered, %d connections lost, %d failed dials, errors %v",
		s.perBackend, s.unconnected, s.answered, s.lost, s.dialErrs, s.errs)
}

// rbImbalance is max/mean of counts (0 without connections).
func rbImbalance(counts []int) float64 {
	total := 0
	for _, n := range counts {
		total += n
	}
	if total == 0 {
		return 0
	}
	return float64(slices.Max(counts)) / (float64(total) / float64(len(counts)))
}

// rbMinimumResets is the fewest connections to shed so that counts, with
// the shed ones reconnected to the least-loaded backends, reach max/mean
// <= 1+tol: each backend keeps at most max(ceil(mean),
// floor((1+tol)*mean)) (whole connections), the rest must go.
func rbMinimumResets(counts []int, tol float64) int {
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

// TestVMRebalance: a ClusterIP Service opted in to rebalancing (tolerance
// 0.1, 50 resets/s, min age 1 s) with 40 long-lived client connections
// (from the client namespace, forwarded through the node by IPVS) spread
// evenly over 2 backends scales to 4 (its EndpointSlice rewritten): the
// agent marks conntrack flows, package iptables' reset rules reset them,
// and the clients, reconnecting at once (wlc sends them to the new
// backends), end up within max/mean <= 1.1 on the 4 backends without a
// request failing; the resets are at least the minimum the scale-up needs;
// a Service without the opt-in on the same backends (8 connections, rr) is
// never touched.
func TestVMRebalance(t *testing.T) {
	guest.Required(t)
	env := newIPVSEnv(t)
	topo := env.NewTopology(t, 4)
	a := env.NewAgent(t)
	two, four := topo.Backends[:2], topo.Backends
	web := agentspec.Service{Name: "web", ClusterIP: netip.MustParseAddr("10.96.0.90"), Port: 80, Backends: two}
	by := agentspec.Service{Name: "bystander", ClusterIP: netip.MustParseAddr("10.96.0.91"), Port: 80, Backends: two}
	webPort, byPort := rbPortName(web), rbPortName(by)
	rbWriteAnnotated(t, a, web, rbAnnotations())
	a.WriteService(by)
	a.Start()
	a.WaitLog(`"Rebalancer ready for Services that opt in".*conntrack`)
	env.DP.WaitProgrammed(t, a, web, by)
	if s, err := scheduler(key(web.Frontends()[0])); err != nil || s != ipvs.RebalanceScheduler {
		t.Errorf("opted-in Service's scheduler: %q (%v), want %q", s, err, ipvs.RebalanceScheduler)
	}
	if s, err := scheduler(key(by.Frontends()[0])); err != nil || s == ipvs.RebalanceScheduler {
		t.Errorf("bystander's scheduler: %q (%v), want the default, not %q", s, err, ipvs.RebalanceScheduler)
	}

	clients := newRBFleet(t, "web", topo, web)
	bystanders := newRBFleet(t, "bystander", topo, by)
	clients.establish(t, rbClients, two)
	bystanders.establish(t, rbBystanders, two)

	// IPVS flows as the agent's flow index needs them: conntrack entries
	// with the virtual IP as original destination and the real server as
	// reply source.
	expectIPVSFlows(t, web, two, rbClients)

	// Evenly spread: the rebalancer measures them and leaves them be.
	text := rbMustMetrics(t)
	balancedBefore, _ := rbMetric(text, "rounds_total", `outcome="balanced",`, webPort)
	rbWaitRounds(t, a, webPort, "balanced", balancedBefore, 1, agentspec.Deadline)
	text = rbMustMetrics(t)
	if v, ok := rbMetric(text, "imbalance_ratio", "", webPort); !ok || v != 1 {
		t.Errorf("imbalance ratio with %d connections evenly on 2 backends: %v (present %v), want 1", rbClients, v, ok)
	}
	before := clients.snapshot()
	if before.lost > 0 || len(before.failed) > 0 {
		t.Errorf("connections lost before the scale-up (nothing to rebalance): %v", before)
	}
	if v, _ := rbMetric(text, "resets_total", `mechanism="conntrack",`, webPort); v != 0 {
		t.Errorf("resets before the scale-up (connections even): %v", v)
	}
	minimum := rbMinimumResets(append(before.counts(two), 0, 0), rbTolerance)
	t.Logf("before the scale-up: %v; minimum resets for 2 -> 4 backends at tolerance %v: %d", before.perBackend, rbTolerance, minimum)

	// Scale up.
	clients.allow(four)
	bystanders.allow(four)
	web.Backends, by.Backends = four, four
	scaled := time.Now()
	rbWriteAnnotated(t, a, web, rbAnnotations())
	a.WriteService(by)
	// IPVS gets the new real servers only after the iptables parts
	// synced: dozens of iptables execs, slow in a TCG VM busy with the
	// clients' traffic (several seconds a sync).
	for _, s := range []agentspec.Service{web, by} {
		env.DP.(*ipvsDataplane).WaitRealServers(t, a, s.Frontends()[0], wantRealServers(s, s.Frontends()[0], a.NodeName()), rbProgramDeadline)
	}
	programmed := time.Since(scaled)

	// The clients see their connections even on 4 backends.
	var balanced rbSnapshot
	a.Eventually("the clients' connections within max/mean <= 1.1 on 4 backends", rbBalanceDeadline, func() (bool, string) {
		balanced = clients.snapshot()
		counts := balanced.counts(four)
		return balanced.unconnected == 0 && rbImbalance(counts) <= 1+rbTolerance+1e-9,
			fmt.Sprintf("counts %v (ratio %.2f); %v", counts, rbImbalance(counts), balanced)
	})
	took := time.Since(scaled)
	// And the rebalancer agrees: rounds find the Service balanced. (The
	// clients' view may be even for a moment while rounds still shed:
	// IPVS keeps the entries of connections reset on the client side
	// only until their backend end sends, and wlc counts them; see
	// TestVMRebalanceResetPath.)
	text = rbMustMetrics(t)
	from, _ := rbMetric(text, "rounds_total", `outcome="balanced",`, webPort)
	rbWaitRounds(t, a, webPort, "balanced", from, 2, rbBalanceDeadline)
	text = rbMustMetrics(t)
	resets, _ := rbMetric(text, "resets_total", `mechanism="conntrack",`, webPort)
	if v, ok := rbMetric(text, "imbalance_ratio", "", webPort); !ok || v > 1+rbTolerance+1e-9 {
		t.Errorf("switchyard_rebalance_imbalance_ratio = %v (present %v) once balanced, want <= %v", v, ok, 1+rbTolerance)
	}
	rounds := rbSeries(text, webPort)
	ipvsConns := map[string]int{}
	for addr, rs := range realServers(t, key(web.Frontends()[0])) {
		ipvsConns[addr.String()] = rs.ActiveConns
	}
	t.Logf("IPVS active connections per real server of %s once balanced: %v", webPort, ipvsConns)
	shedLines := regexp.MustCompile(`.*"Rebalanced connections".*`).FindAllString(a.Current().Log(), -1)
	clients.halt()
	bystanders.halt()
	final, bys := clients.snapshot(), bystanders.snapshot()
	t.Logf("IPVS had the 4 real servers %v after the scale-up", programmed.Round(10*time.Millisecond))
	t.Logf("balanced %v after the scale-up: clients %v (ratio %.2f); %v conntrack resets (minimum %d) in %d rounds that shed; clients lost %d connections in all (errors %v), %d requests answered; bystander: %v",
		took.Round(10*time.Millisecond), balanced.perBackend, rbImbalance(balanced.counts(four)), resets, minimum, len(shedLines),
		final.lost, final.errs, final.answered, bys)
	t.Logf("rebalancer metrics of %s:\n  %s\nrounds that shed:\n  %s", webPort, strings.Join(rounds, "\n  "), strings.Join(shedLines, "\n  "))

	if len(final.failed) > 0 || len(final.bad) > 0 {
		t.Errorf("%d requests failed after reconnecting, %d wrong answers (want none): %v %v", len(final.failed), len(final.bad), final.failed, final.bad)
	}
	if final.answered < 10*rbClients || bys.answered < 10*rbBystanders {
		t.Errorf("requests answered: %d by %d clients, %d by %d bystanders; want at least 10 a client", final.answered, rbClients, bys.answered, rbBystanders)
	}
	if resets <= 0 || resets < float64(minimum) {
		t.Errorf("switchyard_rebalance_resets_total{mechanism=\"conntrack\"} = %v, want at least the minimum %d", resets, minimum)
	}
	// Every connection a client lost is one the rebalancer shed (it
	// counts a shed before the client can see it).
	text = rbMustMetrics(t)
	if resets, _ = rbMetric(text, "resets_total", `mechanism="conntrack",`, webPort); float64(final.lost) > resets {
		t.Errorf("the clients lost %d connections, more than the %v the rebalancer shed: %v", final.lost, resets, final)
	}
	if v, _ := rbMetric(text, "errors_total", `mechanism="conntrack",`, webPort); v != 0 {
		t.Errorf("switchyard_rebalance_errors_total{mechanism=\"conntrack\"} = %v, want 0", v)
	}
	// The bystander was never touched, nor measured.
	if bys.lost > 0 || bys.dialErrs > 0 || len(bys.failed) > 0 || len(bys.bad) > 0 || bys.unconnected > 0 {
		t.Errorf("the Service without the opt-in was touched: %v failed %v bad %v", bys, bys.failed, bys.bad)
	}
	if got := bys.counts(four); got[0]+got[1] != rbBystanders || got[2]+got[3] != 0 {
		t.Errorf("the Service without the opt-in: connections per backend %v, want all %d still on the first 2", got, rbBystanders)
	}
	if s := rbSeries(text, byPort); len(s) > 0 {
		t.Errorf("rebalancer metrics for the Service without the opt-in: %v", s)
	}
}

// expectIPVSFlows checks that the root namespace's conntrack table has
// an ESTABLISHED entry per connection to s: original destination the
// virtual IP and port, reply source a real server of bes (what
// agentapi.NewFlowIndex matches); at least n of them.
func expectIPVSFlows(t *testing.T, s agentspec.Service, bes []agentspec.Backend, n int) {
	t.Helper()
	ct, err := conntrack.NewNetlink(netns.None())
	if err != nil {
		t.Fatal(err)
	}
	defer ct.Close()
	flows, err := ct.ListFlows()
	if err != nil {
		t.Fatal(err)
	}
	vip := netip.AddrPortFrom(s.ClusterIP, s.Port)
	real := map[netip.AddrPort]bool{}
	for _, ep := range agentspec.Endpoints(bes) {
		real[ep] = true
	}
	got := 0
	var other []string
	for _, f := range flows {
		if f.Protocol != dataplane.TCP || f.Orig.Dst != vip || f.TCPState != "ESTABLISHED" {
			continue
		}
		if real[f.Reply.Src] && f.Orig.Src.Addr() == agentspec.ClientAddr {
			got++
		} else {
			other = append(other, f.String())
		}
	}
	if got < n || len(other) > 0 {
		t.Fatalf("conntrack entries to %s: %d with a real server as reply source (want %d), others: %v", vip, got, n, other)
	}
	t.Logf("conntrack: %d ESTABLISHED entries to %s with a real server of %v as reply source", got, vip, agentspec.Endpoints(bes))
}

// rbPushServer is a TCP server in a backend namespace that answers each
// line with "ID REMOTE" (as the echo servers) and keeps its connections,
// so a test can push data on one and see how it ended.
type rbPushServer struct {
	id string
	ln net.Listener

	mu    sync.Mutex
	conns map[string]*rbServerConn // by the peer's address
	wg    sync.WaitGroup
}

type rbServerConn struct {
	c    net.Conn
	done chan struct{} // closed when reading ended
	err  error         // the read error; set before done is closed
}

func startRBPushServer(t *testing.T, ns *netnstest.NS, addr, id string) *rbPushServer {
	t.Helper()
	s := &rbPushServer{id: id, conns: map[string]*rbServerConn{}}
	if err := ns.Do(func() error {
		var err error
		// No keepalive probes: they would reset a server end the rules
		// had not reset, given time.
		s.ln, err = (&net.ListenConfig{KeepAlive: -1}).Listen(context.Background(), "tcp", addr)
		return err
	}); err != nil {
		t.Fatalf("listen %s in %s: %v", addr, ns.Name(), err)
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := s.ln.Accept()
			if err != nil {
				return
			}
			sc := &rbServerConn{c: c, done: make(chan struct{})}
			s.mu.Lock()
			s.conns[c.RemoteAddr().String()] = sc
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer close(sc.done)
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					if _, sc.err = r.ReadString('\n'); sc.err != nil {
						return
					}
					if _, sc.err = c.Write([]byte(s.id + " " + c.RemoteAddr().String() + "\n")); sc.err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		s.ln.Close()
		s.mu.Lock()
		for _, sc := range s.conns {
			sc.c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *rbPushServer) conn(peer string) *rbServerConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns[peer]
}

// waitReset waits (until deadline) for the server's end to end with a
// reset.
func (sc *rbServerConn) waitReset(deadline time.Time) error {
	select {
	case <-sc.done:
	case <-time.After(time.Until(deadline)):
		return errors.New("server end still open")
	}
	if !errors.Is(sc.err, syscall.ECONNRESET) {
		return fmt.Errorf("server end ended with %v, want a reset", sc.err)
	}
	return nil
}

// rbReadReset reads from c until deadline and checks it gets a reset.
func rbReadReset(c net.Conn, deadline time.Time) error {
	if err := c.SetReadDeadline(deadline); err != nil {
		return err
	}
	buf := make([]byte, 256)
	for {
		n, err := c.Read(buf)
		switch {
		case errors.Is(err, syscall.ECONNRESET):
			return nil
		case err != nil:
			return fmt.Errorf("read ended with %v, want a reset", err)
		case n > 0:
			return fmt.Errorf("read %q, want a reset", buf[:n])
		}
	}
}

// TestVMRebalanceResetPath: where the reset happens with IPVS. The agent
// hooks SWITCHYARD-RESET-MARKED first in filter INPUT, FORWARD and
// OUTPUT. Connections through a Service (client namespace -> IPVS ->
// backend namespace, masqueraded) have conntrack entries with the virtual
// IP as original destination and the real server as reply source; with
// the reset bit set on them (as the rebalancer does, iptables.Proxier's
// mark): a client's next request (to the virtual IP, filter INPUT before
// IPVS at LOCAL_IN) resets the client, and the backend when it next
// sends; a backend's next packet (its reply path, filter FORWARD before
// IPVS de-NATs it) resets the backend, and the client when it next
// sends; the entries leave ESTABLISHED; an unmarked connection keeps
// working, masqueraded.
func TestVMRebalanceResetPath(t *testing.T) {
	guest.Required(t)
	env := newIPVSEnv(t)
	topo := env.NewTopology(t, 0)
	// A backend whose server can push: 10.244.210.2 behind the node's
	// 10.244.210.1 on sy-r0.
	be := agentspec.Backend{ID: "push", NS: netnstest.New(t, "sy-push"), Addr: netip.MustParseAddr("10.244.210.2")}
	netnstest.Veth(t, nil, be.NS, "sy-r0", "eth0", netip.PrefixFrom(be.NodeSide(), 24), netip.PrefixFrom(be.Addr, 24))
	netnstest.AddRoute(t, be.NS, netip.MustParsePrefix("0.0.0.0/0"), be.NodeSide())
	srv := startRBPushServer(t, be.NS, netip.AddrPortFrom(be.Addr, agentspec.TargetPort).String(), be.ID)
	topo.Backends = append(topo.Backends, be)

	a := env.NewAgent(t)
	push := agentspec.Service{Name: "push", ClusterIP: netip.MustParseAddr("10.96.0.92"), Port: 80, Backends: []agentspec.Backend{be}}
	a.WriteService(push)
	a.Start()
	env.DP.WaitProgrammed(t, a, push)
	a.Eventually("reset hooks first in filter INPUT, FORWARD and OUTPUT", agentspec.Deadline, func() (bool, string) {
		var detail []string
		ok := true
		for _, chain := range []string{"INPUT", "FORWARD", "OUTPUT"} {
			rules := chainRules(t, "filter", chain)
			if len(rules) == 0 || !strings.HasSuffix(rules[0], "-j SWITCHYARD-RESET-MARKED") {
				ok = false
			}
			detail = append(detail, strings.Join(rules, "; "))
		}
		return ok, strings.Join(detail, " | ")
	})
	t.Logf("filter INPUT: %v\nfilter FORWARD: %v\nfilter OUTPUT: %v\nSWITCHYARD-RESET-MARKED: %v",
		chainRules(t, "filter", "INPUT"), chainRules(t, "filter", "FORWARD"), chainRules(t, "filter", "OUTPUT"),
		chainRules(t, "filter", "SWITCHYARD-RESET-MARKED"))

	ct, err := conntrack.NewNetlink(netns.None())
	if err != nil {
		t.Fatal(err)
	}
	defer ct.Close()
	// The mark the agent's reset rules act on (the rebalancer must set the
	// same).
	mark := iptables.Config{}.ResetMark()

	type held struct {
		name string
		c    net.Conn
		srv  *rbServerConn
		flow conntrack.Flow
	}
	hold := func(name string) *held {
		t.Helper()
		c, err := netnstest.Dial(topo.Client, "tcp", push.Addr(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if err := c.(*net.TCPConn).SetKeepAlive(false); err != nil {
			t.Fatal(err)
		}
		reply, err := netnstest.Exchange(c, "hello", 5*time.Second)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := c.SetDeadline(time.Time{}); err != nil {
			t.Fatal(err)
		}
		id, remote, err := netnstest.ReplyID(reply)
		if err != nil || id != be.ID || netip.MustParseAddrPort(remote).Addr() != agentspec.Masqueraded(be) {
			t.Fatalf("%s: reply %q (%v), want %s seeing the node's %s", name, reply, err, be.ID, agentspec.Masqueraded(be))
		}
		h := &held{name: name + " " + c.LocalAddr().String(), c: c, srv: srv.conn(remote)}
		if h.srv == nil {
			t.Fatalf("%s: the server has no connection from %s", h.name, remote)
		}
		flows, err := ct.ListFlows()
		if err != nil {
			t.Fatal(err)
		}
		local := netip.MustParseAddrPort(c.LocalAddr().String())
		i := slices.IndexFunc(flows, func(f conntrack.Flow) bool { return f.Protocol == dataplane.TCP && f.Orig.Src == local })
		if i < 0 {
			t.Fatalf("%s: no conntrack entry (net.ipv4.vs.conntrack=1?)", h.name)
		}
		h.flow = flows[i]
		wantDst, wantReply := netip.AddrPortFrom(push.ClusterIP, push.Port), netip.AddrPortFrom(be.Addr, agentspec.TargetPort)
		if h.flow.Orig.Dst != wantDst || h.flow.Reply.Src != wantReply || h.flow.TCPState != "ESTABLISHED" {
			t.Fatalf("%s: entry %s (%s), want original destination %s and reply source %s, ESTABLISHED", h.name, h.flow, h.flow.TCPState, wantDst, wantReply)
		}
		t.Logf("%s: conntrack %s %s", h.name, h.flow, h.flow.TCPState)
		return h
	}
	clientFirst, backendFirst, unmarked := hold("client sends first"), hold("backend sends first"), hold("unmarked")
	if n, err := ct.MarkFlows([]conntrack.Flow{clientFirst.flow, backendFirst.flow}, mark, mark); n != 2 || err != nil {
		t.Fatalf("MarkFlows = %d, %v; want 2, nil", n, err)
	}

	deadline := time.Now().Add(15 * time.Second)
	// The client's request: reset before IPVS forwards it.
	if _, err := clientFirst.c.Write([]byte("next\n")); err != nil {
		t.Fatalf("%s: write: %v", clientFirst.name, err)
	}
	if err := rbReadReset(clientFirst.c, deadline); err != nil {
		t.Errorf("%s: the client: %v", clientFirst.name, err)
	}
	if _, err := clientFirst.srv.c.Write([]byte("pushed\n")); err != nil {
		t.Errorf("%s: server write: %v", clientFirst.name, err)
	}
	if err := clientFirst.srv.waitReset(deadline); err != nil {
		t.Errorf("%s: the backend, when it sent: %v", clientFirst.name, err)
	}
	// The backend's push: reset on its way back, before IPVS de-NATs it.
	if _, err := backendFirst.srv.c.Write([]byte("pushed\n")); err != nil {
		t.Errorf("%s: server write: %v", backendFirst.name, err)
	}
	if err := backendFirst.srv.waitReset(deadline); err != nil {
		t.Errorf("%s: the backend: %v", backendFirst.name, err)
	}
	if _, err := backendFirst.c.Write([]byte("next\n")); err != nil {
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("%s: write: %v", backendFirst.name, err)
		}
	} else if err := rbReadReset(backendFirst.c, deadline); err != nil {
		t.Errorf("%s: the client, when it sent: %v", backendFirst.name, err)
	}

	flows, err := ct.ListFlows()
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []*held{clientFirst, backendFirst, unmarked} {
		i := slices.IndexFunc(flows, func(f conntrack.Flow) bool { return f.Protocol == dataplane.TCP && f.Orig == h.flow.Orig })
		state := "gone"
		if i >= 0 {
			state = fmt.Sprintf("%s mark %#x", flows[i].TCPState, flows[i].Mark)
		}
		t.Logf("%s: entry after the resets: %s", h.name, state)
		if h != unmarked && i >= 0 && flows[i].TCPState == "ESTABLISHED" {
			t.Errorf("%s: entry still ESTABLISHED after the resets (the rebalancer would count it)", h.name)
		}
		if h == unmarked && (i < 0 || flows[i].TCPState != "ESTABLISHED" || flows[i].Mark != 0) {
			t.Errorf("%s: unmarked entry: %s", h.name, state)
		}
	}
	// IPVS did not see the resets (they happen before it, to one end
	// each): its entries stay until an end's own packet tells it.
	for addr, rs := range realServers(t, key(push.Frontends()[0])) {
		t.Logf("IPVS real server %s after the resets: %d active, %d inactive connections (3 held, 2 reset)", addr, rs.ActiveConns, rs.InactiveConns)
	}
	reply, err := netnstest.Exchange(unmarked.c, "again", 5*time.Second)
	if err != nil {
		t.Fatalf("%s: %v", unmarked.name, err)
	}
	if id, remote, err := netnstest.ReplyID(reply); err != nil || id != be.ID || netip.MustParseAddrPort(remote).Addr() != agentspec.Masqueraded(be) {
		t.Errorf("%s: answered %q, want %s seeing the node's %s", unmarked.name, reply, be.ID, agentspec.Masqueraded(be))
	}
	// New connections go through.
	hold("a new connection after the resets")
}
