package ipvsvm

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/switchyard/switchyard/conntrack"
	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/iptables"
	"github.com/switchyard/switchyard/ipvs"
	"github.com/switchyard/switchyard/test/agentspec"
	"github.com/switchyard/switchyard/test/connfleet"
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
	return agentspec.RebalanceAnnotations(rbTolerance, rbMaxResets, time.Second, false)
}

// newRBFleet makes the clients (test/connfleet, via agentspec.NewFleet)
// of Service s from the client namespace, each holding one connection
// and sending a request every rbInterval; every answer must come from a
// backend the Service has and show the node's address on that backend's
// link as the source (the client is outside the cluster CIDR:
// masqueraded).
func newRBFleet(t *testing.T, name string, topo *agentspec.Topology, s agentspec.Service) *connfleet.Fleet {
	t.Helper()
	return agentspec.NewFleet(t, connfleet.Config{Name: name, Interval: rbInterval, AttemptTimeout: rbAttemptTimeout,
		MaxAttempts: rbMaxAttempts, MaxRequests: rbMaxRequests}, topo, s, agentspec.MasqueradedSource)
}

// rbEstablish opens n connections of f spread exactly evenly over bes;
// every dial and first exchange must succeed.
func rbEstablish(t *testing.T, f *connfleet.Fleet, n int, bes []agentspec.Backend) {
	t.Helper()
	agentspec.Establish(t, f, n, bes)
	for kind, count := range f.Snapshot().Errs {
		if strings.HasPrefix(kind, "establish: ") {
			t.Fatalf("%s: %d failed dials or first exchanges while establishing: %s", f.Name(), count, kind)
		}
	}
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
	webPort, byPort := agentspec.PortName(web), agentspec.PortName(by)
	a.WriteAnnotated(web, rbAnnotations())
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
	rbEstablish(t, clients, rbClients, two)
	rbEstablish(t, bystanders, rbBystanders, two)

	// IPVS flows as the agent's flow index needs them: conntrack entries
	// with the virtual IP as original destination and the real server as
	// reply source.
	expectIPVSFlows(t, web, two, rbClients)

	// Evenly spread: the rebalancer measures them and leaves them be.
	text := env.MustMetrics(t)
	balancedBefore, _ := agentspec.RebalanceMetric(text, "rounds_total", `outcome="balanced",`, webPort)
	a.WaitRebalanceRounds(webPort, "balanced", balancedBefore, 1, agentspec.Deadline)
	text = env.MustMetrics(t)
	if v, ok := agentspec.RebalanceMetric(text, "imbalance_ratio", "", webPort); !ok || v != 1 {
		t.Errorf("imbalance ratio with %d connections evenly on 2 backends: %v (present %v), want 1", rbClients, v, ok)
	}
	ids := agentspec.BackendIDs(four)
	before := clients.Snapshot()
	if before.Lost > 0 || before.Failed > 0 {
		t.Errorf("connections lost before the scale-up (nothing to rebalance): %v", before)
	}
	if v, _ := agentspec.RebalanceMetric(text, "resets_total", `mechanism="conntrack",`, webPort); v != 0 {
		t.Errorf("resets before the scale-up (connections even): %v", v)
	}
	minimum := connfleet.MinimumResets(before.Of(ids...), rbTolerance)
	t.Logf("before the scale-up: %v; minimum resets for 2 -> 4 backends at tolerance %v: %d", before.PerBackend(), rbTolerance, minimum)

	// Scale up.
	agentspec.Allow(t, clients, four)
	agentspec.Allow(t, bystanders, four)
	web.Backends, by.Backends = four, four
	scaled := time.Now()
	a.WriteAnnotated(web, rbAnnotations())
	a.WriteService(by)
	// IPVS gets the new real servers only after the iptables parts
	// synced: dozens of iptables execs, slow in a TCG VM busy with the
	// clients' traffic (several seconds a sync).
	for _, s := range []agentspec.Service{web, by} {
		env.DP.(*ipvsDataplane).WaitRealServers(t, a, s.Frontends()[0], wantRealServers(s, s.Frontends()[0], a.NodeName()), rbProgramDeadline)
	}
	programmed := time.Since(scaled)

	// The clients see their connections even on 4 backends.
	var balanced connfleet.Snapshot
	a.Eventually("the clients' connections within max/mean <= 1.1 on 4 backends", rbBalanceDeadline, func() (bool, string) {
		balanced = clients.Snapshot()
		counts := balanced.Of(ids...)
		return balanced.Unconnected == 0 && connfleet.Balanced(counts, rbTolerance),
			fmt.Sprintf("counts %v (ratio %.2f); %v", counts, connfleet.Imbalance(counts), balanced)
	})
	took := time.Since(scaled)
	// And the rebalancer agrees: rounds find the Service balanced. (The
	// clients' view may be even for a moment while rounds still shed:
	// IPVS keeps the entries of connections reset on the client side
	// only until their backend end sends, and wlc counts them; see
	// TestVMRebalanceResetPath.)
	text = env.MustMetrics(t)
	from, _ := agentspec.RebalanceMetric(text, "rounds_total", `outcome="balanced",`, webPort)
	a.WaitRebalanceRounds(webPort, "balanced", from, 2, rbBalanceDeadline)
	text = env.MustMetrics(t)
	resets, _ := agentspec.RebalanceMetric(text, "resets_total", `mechanism="conntrack",`, webPort)
	if v, ok := agentspec.RebalanceMetric(text, "imbalance_ratio", "", webPort); !ok || v > 1+rbTolerance+1e-9 {
		t.Errorf("switchyard_rebalance_imbalance_ratio = %v (present %v) once balanced, want <= %v", v, ok, 1+rbTolerance)
	}
	rounds := agentspec.RebalanceSeries(text, webPort)
	ipvsConns := map[string]int{}
	for addr, rs := range realServers(t, key(web.Frontends()[0])) {
		ipvsConns[addr.String()] = rs.ActiveConns
	}
	t.Logf("IPVS active connections per real server of %s once balanced: %v", webPort, ipvsConns)
	shedLines := regexp.MustCompile(`.*"Rebalanced connections".*`).FindAllString(a.Current().Log(), -1)
	clients.Stop()
	bystanders.Stop()
	final, bys := clients.Snapshot(), bystanders.Snapshot()
	t.Logf("IPVS had the 4 real servers %v after the scale-up", programmed.Round(10*time.Millisecond))
	t.Logf("balanced %v after the scale-up: clients %v (ratio %.2f); %v conntrack resets (minimum %d) in %d rounds that shed; clients lost %d connections in all (errors %v), %d requests answered; bystander: %v",
		took.Round(10*time.Millisecond), balanced.PerBackend(), connfleet.Imbalance(balanced.Of(ids...)), resets, minimum, len(shedLines),
		final.Lost, final.Errs, final.Answered, bys)
	t.Logf("rebalancer metrics of %s:\n  %s\nrounds that shed:\n  %s", webPort, strings.Join(rounds, "\n  "), strings.Join(shedLines, "\n  "))

	if final.Failed > 0 || final.Bad > 0 {
		t.Errorf("%d requests failed after reconnecting, %d wrong answers (want none): %v", final.Failed, final.Bad, final.Examples)
	}
	if final.Answered < 10*rbClients || bys.Answered < 10*rbBystanders {
		t.Errorf("requests answered: %d by %d clients, %d by %d bystanders; want at least 10 a client", final.Answered, rbClients, bys.Answered, rbBystanders)
	}
	if resets <= 0 || resets < float64(minimum) {
		t.Errorf("switchyard_rebalance_resets_total{mechanism=\"conntrack\"} = %v, want at least the minimum %d", resets, minimum)
	}
	// Every connection a client lost is one the rebalancer shed (it
	// counts a shed before the client can see it).
	text = env.MustMetrics(t)
	if resets, _ = agentspec.RebalanceMetric(text, "resets_total", `mechanism="conntrack",`, webPort); float64(final.Lost) > resets {
		t.Errorf("the clients lost %d connections, more than the %v the rebalancer shed: %v", final.Lost, resets, final)
	}
	if v, _ := agentspec.RebalanceMetric(text, "errors_total", `mechanism="conntrack",`, webPort); v != 0 {
		t.Errorf("switchyard_rebalance_errors_total{mechanism=\"conntrack\"} = %v, want 0", v)
	}
	// The bystander was never touched, nor measured.
	if bys.Lost > 0 || bys.DialErrs > 0 || bys.Failed > 0 || bys.Bad > 0 || bys.Unconnected > 0 {
		t.Errorf("the Service without the opt-in was touched: %v; %v", bys, bys.Examples)
	}
	if got := bys.Of(ids...); got[0]+got[1] != rbBystanders || got[2]+got[3] != 0 {
		t.Errorf("the Service without the opt-in: connections per backend %v, want all %d still on the first 2", got, rbBystanders)
	}
	if s := agentspec.RebalanceSeries(text, byPort); len(s) > 0 {
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
	srv := netnstest.StartConnServer(t, be.NS, netip.AddrPortFrom(be.Addr, agentspec.TargetPort).String(), be.ID)
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
		*netnstest.Held
		flow conntrack.Flow
	}
	hold := func(name string, next netnstest.NextPacket) *held {
		t.Helper()
		hc, err := netnstest.HoldConn(t, topo.Client, push.Addr(), name, next, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if hc.ID != be.ID || hc.Seen.Addr() != agentspec.Masqueraded(be) {
			t.Fatalf("%s: answered by %s seeing %s, want %s seeing the node's %s", hc.Name, hc.ID, hc.Seen, be.ID, agentspec.Masqueraded(be))
		}
		h := &held{Held: hc}
		if h.Srv = srv.Conn(h.Seen); h.Srv == nil {
			t.Fatalf("%s: the server has no connection from %s", h.Name, h.Seen)
		}
		flows, err := ct.ListFlows()
		if err != nil {
			t.Fatal(err)
		}
		local := netip.MustParseAddrPort(h.C.LocalAddr().String())
		i := slices.IndexFunc(flows, func(f conntrack.Flow) bool { return f.Protocol == dataplane.TCP && f.Orig.Src == local })
		if i < 0 {
			t.Fatalf("%s: no conntrack entry (net.ipv4.vs.conntrack=1?)", h.Name)
		}
		h.flow = flows[i]
		wantDst, wantReply := netip.AddrPortFrom(push.ClusterIP, push.Port), netip.AddrPortFrom(be.Addr, agentspec.TargetPort)
		if h.flow.Orig.Dst != wantDst || h.flow.Reply.Src != wantReply || h.flow.TCPState != "ESTABLISHED" {
			t.Fatalf("%s: entry %s (%s), want original destination %s and reply source %s, ESTABLISHED", h.Name, h.flow, h.flow.TCPState, wantDst, wantReply)
		}
		t.Logf("%s: conntrack %s %s", h.Name, h.flow, h.flow.TCPState)
		return h
	}
	clientFirst := hold("client sends first", netnstest.ClientSends)
	backendFirst := hold("backend sends first", netnstest.ServerSends)
	unmarked := hold("unmarked", netnstest.Unmarked)
	if n, err := ct.MarkFlows([]conntrack.Flow{clientFirst.flow, backendFirst.flow}, mark, mark); n != 2 || err != nil {
		t.Fatalf("MarkFlows = %d, %v; want 2, nil", n, err)
	}

	deadline := time.Now().Add(15 * time.Second)
	// The client's request: reset before IPVS forwards it; the backend
	// when it next sends. The backend's push: reset on its way back,
	// before IPVS de-NATs it; the client when it next sends.
	for _, h := range []*held{clientFirst, backendFirst} {
		if err := h.ExpectReset(deadline, netnstest.SenderThenOther); err != nil {
			t.Errorf("%s: %v", h.Name, err)
		}
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
		t.Logf("%s: entry after the resets: %s", h.Name, state)
		if h != unmarked && i >= 0 && flows[i].TCPState == "ESTABLISHED" {
			t.Errorf("%s: entry still ESTABLISHED after the resets (the rebalancer would count it)", h.Name)
		}
		if h == unmarked && (i < 0 || flows[i].TCPState != "ESTABLISHED" || flows[i].Mark != 0) {
			t.Errorf("%s: unmarked entry: %s", h.Name, state)
		}
	}
	// IPVS did not see the resets (they happen before it, to one end
	// each): its entries stay until an end's own packet tells it.
	for addr, rs := range realServers(t, key(push.Frontends()[0])) {
		t.Logf("IPVS real server %s after the resets: %d active, %d inactive connections (3 held, 2 reset)", addr, rs.ActiveConns, rs.InactiveConns)
	}
	// The unmarked connection keeps going, masqueraded (as checked when
	// it was opened).
	if err := unmarked.ExpectAlive(1, 5*time.Second); err != nil {
		t.Errorf("%s: %v", unmarked.Name, err)
	}
	// New connections go through.
	hold("a new connection after the resets", netnstest.Unmarked)
}
