package ipvsvm

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/ipvs"
	"github.com/switchyard/switchyard/test/netnstest"
	"github.com/switchyard/switchyard/test/vm/guest"
)

// End-to-end tests of the agent binary: /bin/switchyard runs as a child
// process in standalone mode (--manifests), programs the VM's root
// namespace (the node) with IPVS, ipsets and iptables, and every test
// checks real traffic with the echo servers' replies (backend ID and the
// source address the backend saw). Backends are inside --cluster-cidr
// (10.244.0.0/16), the client namespace (10.99.0.2) is outside it.

// TestVMAgentTraffic runs one agent with a ClusterIP Service (web) and a
// NodePort Service (np) and checks the traffic paths:
//   - ClusterIP round robin from the client namespace and from the node.
//     Both sources are outside --cluster-cidr, so the backends see the
//     node's address, not the client's (or the service IP the node picks).
//   - Hairpin: a backend reaching its own Service sees the node's address
//     when IPVS sends it to itself (else its reply would skip de-NAT), and
//     keeps its own address when it lands on the other backend (pod to pod
//     inside --cluster-cidr).
//   - NodePort on the node's address from the client namespace reaches the
//     backends, which see the node's address (masquerade mark for node-port
//     traffic), not the client's.
func TestVMAgentTraffic(t *testing.T) {
	guest.Required(t)
	topo := newAgentTopology(t, 2)
	topo.startEcho(t, "tcp", 8080)
	a := newAgent(t)
	web := svcSpec{Name: "web", ClusterIP: clusterIP, Port: 80, Backends: topo.Backends}
	np := svcSpec{Name: "np", ClusterIP: netip.MustParseAddr("10.96.0.11"), Port: 80, NodePort: agentNodePort, Backends: topo.Backends}
	a.writeService(web)
	a.writeService(np)
	a.start()
	a.waitVS(web.key(), weights(8080, 1, topo.Backends...))
	npKey := ipvs.Key{IP: nodeAddr, Protocol: dataplane.TCP, Port: agentNodePort}
	a.waitVS(npKey, weights(8080, 1, topo.Backends...))

	t.Run("ClusterIP", func(t *testing.T) {
		fromClient := requestAll(t, topo.Client, web.addr(), 6)
		expectEven(t, "from the client namespace", countIDs(fromClient), 3)
		expectSources(t, "from the client namespace", topo, fromClient, nodeSideAddr)
		fromNode := requestAll(t, nil, web.addr(), 6)
		expectEven(t, "from the node", countIDs(fromNode), 3)
		expectSources(t, "from the node", topo, fromNode, nodeSideAddr)

		if addrs, ok := dummyAddrs(t); !ok || strings.Join(addrs, ",") != "10.96.0.10/32,10.96.0.11/32" {
			t.Errorf("%s addresses %v (present %v), want the two ClusterIPs", ipvs.DefaultLinkName, addrs, ok)
		}
		if out := mustCommand(t, "ipset", "list", "SWITCHYARD-CLUSTER-IP"); !strings.Contains(out, "10.96.0.10,tcp:80") {
			t.Errorf("SWITCHYARD-CLUSTER-IP lacks the ClusterIP:\n%s", out)
		}
	})

	t.Run("Hairpin", func(t *testing.T) {
		self := topo.Backends[0]
		rs := requestAll(t, self.NS, web.addr(), 6)
		expectEven(t, "from "+self.ID, countIDs(rs), 3)
		expectSources(t, "from "+self.ID, topo, rs, func(be backend) netip.Addr {
			if be.ID == self.ID {
				return nodeSideAddr(self) // hairpin: masqueraded
			}
			return self.Addr // inside the cluster CIDR: kept
		})
	})

	t.Run("NodePort", func(t *testing.T) {
		rs := requestAll(t, topo.Client, netip.AddrPortFrom(nodeAddr, agentNodePort).String(), 4)
		expectEven(t, "NodePort from the client namespace", countIDs(rs), 2)
		expectSources(t, "NodePort from the client namespace", topo, rs, nodeSideAddr)
		for _, r := range rs {
			if r.Src == topo.ClientAddr {
				t.Errorf("%s saw the client's address: NodePort traffic not masqueraded", r.ID)
			}
		}
		if out := mustCommand(t, "ipset", "list", "SWITCHYARD-NODE-PORT-TCP"); !strings.Contains(out, "tcp:30080") {
			t.Errorf("SWITCHYARD-NODE-PORT-TCP lacks the NodePort:\n%s", out)
		}
	})
}

// TestVMAgentSchedulerAnnotation: adding switchyard.io/ipvs-scheduler to
// the manifest changes the kernel's scheduler in place; removing it goes
// back to the default.
func TestVMAgentSchedulerAnnotation(t *testing.T) {
	guest.Required(t)
	topo := newAgentTopology(t, 2)
	topo.startEcho(t, "tcp", 8080)
	a := newAgent(t)
	web := svcSpec{Name: "web", ClusterIP: clusterIP, Port: 80, Backends: topo.Backends}
	a.writeService(web)
	a.start()
	a.waitVS(web.key(), weights(8080, 1, topo.Backends...))
	waitScheduler := func(want string) {
		t.Helper()
		a.eventually("scheduler "+want, agentDeadline, func() (bool, string) {
			got, err := scheduler(web.key())
			if err != nil {
				return false, err.Error()
			}
			return got == want, "scheduler " + got
		})
	}
	waitScheduler("rr")

	web.Scheduler = "lc"
	a.writeService(web)
	waitScheduler("lc")
	if got := countIDs(requestAll(t, topo.Client, web.addr(), 4)); got["be0"]+got["be1"] != 4 {
		t.Errorf("replies with lc: %v", got)
	}
	a.waitLog(`"Updated virtual server" virtualServer="10\.96\.0\.10:80/TCP" scheduler="lc"`)

	web.Scheduler = ""
	a.writeService(web)
	waitScheduler("rr")
	expectEven(t, "back to rr", countIDs(requestAll(t, topo.Client, web.addr(), 4)), 2)
}

// TestVMAgentGracefulDrain: removing the endpoint an open TCP connection
// uses from the EndpointSlice file sets its real server to weight 0: the
// connection keeps working, new connections go to the other backend, the
// drain survives an agent restart, and once the connection is closed the
// agent deletes the real server.
func TestVMAgentGracefulDrain(t *testing.T) {
	guest.Required(t)
	topo := newAgentTopology(t, 2)
	topo.startEcho(t, "tcp", 8080)
	a := newAgent(t)
	web := svcSpec{Name: "web", ClusterIP: clusterIP, Port: 80, Backends: topo.Backends}
	a.writeService(web)
	a.start()
	a.waitVS(web.key(), weights(8080, 1, topo.Backends...))

	conn, err := netnstest.Dial(topo.Client, "tcp", web.addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	reply, err := netnstest.Exchange(conn, "hello", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	used, ok := topo.backendByID(parseReply(t, reply).ID)
	if !ok {
		t.Fatalf("unexpected reply %q", reply)
	}
	other := topo.Backends[0]
	if other.ID == used.ID {
		other = topo.Backends[1]
	}

	web.Backends = []backend{other}
	a.writeService(web)
	want := weights(8080, 1, other)
	want[netip.AddrPortFrom(used.Addr, 8080)] = 0
	a.waitVS(web.key(), want)
	if rs := realServers(t, web.key())[netip.AddrPortFrom(used.Addr, 8080)]; rs.ActiveConns != 1 {
		t.Errorf("draining real server %+v, want 1 active connection", rs)
	}
	// The state file is written at the end of the sync that set weight 0,
	// a moment after the kernel shows it: poll, bounded.
	stateFile := filepath.Join(a.stateDir, ipvs.StateFileName)
	var drainState []byte
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		drainState, err = os.ReadFile(stateFile)
		if err == nil && strings.Contains(string(drainState), netip.AddrPortFrom(used.Addr, 8080).String()) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("state file does not record the drain: %v\n%s", err, drainState)
		}
	}
	for i := range 3 {
		r, err := netnstest.Exchange(conn, "again", 5*time.Second)
		if err != nil || parseReply(t, r).ID != used.ID {
			t.Fatalf("open connection during drain, exchange %d: %q %v", i, r, err)
		}
	}
	if got := countIDs(requestAll(t, topo.Client, web.addr(), 4)); got[other.ID] != 4 {
		t.Errorf("new connections during drain went to %v, want all on %s", got, other.ID)
	}
	// A later (periodic, full) sync keeps it draining, and so does a
	// restarted agent: same weight, same drain start in the state file.
	a.waitSyncs(a.current().syncs() + 1)
	if err := a.stop(syscall.SIGTERM); err != nil {
		t.Errorf("agent exit: %v", err)
	}
	a.start()
	a.waitSyncs(0)
	a.waitVS(web.key(), want)
	if b, err := os.ReadFile(stateFile); err != nil || string(b) != string(drainState) {
		t.Errorf("state file after restart: %v\n%s\nwant\n%s", err, b, drainState)
	}
	if r, err := netnstest.Exchange(conn, "after restart", 5*time.Second); err != nil || parseReply(t, r).ID != used.ID {
		t.Fatalf("open connection after the agent restarted: %q %v", r, err)
	}

	// RST: IPVS keeps the entry in CLOSE for 10 s (TIME_WAIT would be 2
	// minutes), counted as inactive; then the agent deletes the server.
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	conn.Close()
	closed := time.Now()
	a.eventually("drained real server deleted", 40*time.Second, func() (bool, string) {
		got, err := realServerWeights(web.key())
		if err != nil {
			return false, err.Error()
		}
		return mapsEqual(got, weights(8080, 1, other)), "have " + formatWeights(got)
	})
	t.Logf("real server deleted %v after the connection closed", time.Since(closed).Round(100*time.Millisecond))
	a.waitLog(`"Deleted real server" virtualServer="10\.96\.0\.10:80/TCP" realServer="` + regexp.QuoteMeta(netip.AddrPortFrom(used.Addr, 8080).String()) + `" reason="no connections left"`)
}

// TestVMAgentRestart: SIGTERM leaves the dataplane in place (traffic keeps
// flowing with the agent down); a new agent adopts it without changing
// anything, and a TCP connection opened before survives both that and a
// SIGKILL + restart.
func TestVMAgentRestart(t *testing.T) {
	guest.Required(t)
	topo := newAgentTopology(t, 2)
	topo.startEcho(t, "tcp", 8080)
	a := newAgent(t)
	web := svcSpec{Name: "web", ClusterIP: clusterIP, Port: 80, Backends: topo.Backends}
	np := svcSpec{Name: "np", ClusterIP: netip.MustParseAddr("10.96.0.11"), Port: 80, NodePort: agentNodePort, Backends: topo.Backends[1:]}
	a.writeService(web)
	a.writeService(np)
	a.start()
	a.waitVS(web.key(), weights(8080, 1, topo.Backends...))
	npKey := ipvs.Key{IP: nodeAddr, Protocol: dataplane.TCP, Port: agentNodePort}
	a.waitVS(npKey, weights(8080, 1, topo.Backends[1]))
	a.waitSyncs(a.current().syncs()) // one more: settled

	conn, err := netnstest.Dial(topo.Client, "tcp", web.addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	first, err := netnstest.Exchange(conn, "before", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	expectConn := func(when string) {
		t.Helper()
		if got, err := netnstest.Exchange(conn, "again", 5*time.Second); err != nil || got != first {
			t.Fatalf("connection %s: %q %v, want %q", when, got, err, first)
		}
	}
	expectTraffic := func(when string) {
		t.Helper()
		rs := requestAll(t, topo.Client, web.addr(), 4)
		expectEven(t, "ClusterIP "+when, countIDs(rs), 2)
		expectSources(t, "ClusterIP "+when, topo, rs, nodeSideAddr)
		rs = requestAll(t, topo.Client, netip.AddrPortFrom(nodeAddr, agentNodePort).String(), 2)
		expectSources(t, "NodePort "+when, topo, rs, nodeSideAddr)
	}
	before := nodeSnapshot(t)

	if err := a.stop(syscall.SIGTERM); err != nil {
		t.Errorf("agent exit after SIGTERM: %v", err)
	}
	if !strings.Contains(a.current().log.String(), "Stopping; the dataplane stays programmed") {
		t.Error("no stop message after SIGTERM")
	}
	expectSameSnapshot(t, "after SIGTERM", before, nodeSnapshot(t))
	expectTraffic("with the agent stopped")
	expectConn("with the agent stopped")

	adopted := func(when string) {
		t.Helper()
		r := a.start()
		a.waitSyncs(0)
		expectSameSnapshot(t, when, before, nodeSnapshot(t))
		log := r.log.String()
		for _, write := range []string{"Added virtual server", "Updated virtual server", "Deleted virtual server",
			"Deleted real server", "Draining real server", "Inserted hook", "Deleted duplicate or stale hook"} {
			if strings.Contains(log, `"`+write+`"`) {
				t.Errorf("%s: the new agent logged %q", when, write)
			}
		}
		m := regexp.MustCompile(`"Synced iptables and ipsets".*`).FindString(log)
		for _, c := range []string{"memberAdds", "memberDels", "setCreates", "setGrows", "ruleWrites", "chainCreates"} {
			if !strings.Contains(m, " "+c+"=0") {
				t.Errorf("%s: first iptables sync wrote something: %s", when, m)
				break
			}
		}
		expectConn(when)
		expectTraffic(when)
	}
	adopted("after a restart following SIGTERM")

	if err := a.stop(syscall.SIGKILL); err == nil {
		t.Error("SIGKILL: agent exited cleanly?")
	}
	expectConn("with the agent killed")
	adopted("after a restart following SIGKILL")
	expectSameSnapshot(t, "at the end", before, nodeSnapshot(t))
}

// TestVMAgentRepairsDrift deletes, behind the running agent's back, a
// virtual server (netlink), a service address, an ipset member, a rule in a
// SWITCHYARD chain and a hook rule (iptables binaries). Each is restored
// within a bounded time (--sync-period 2s) and the node ends exactly as it
// was.
func TestVMAgentRepairsDrift(t *testing.T) {
	guest.Required(t)
	topo := newAgentTopology(t, 2)
	topo.startEcho(t, "tcp", 8080)
	a := newAgent(t)
	web := svcSpec{Name: "web", ClusterIP: clusterIP, Port: 80, Backends: topo.Backends}
	np := svcSpec{Name: "np", ClusterIP: netip.MustParseAddr("10.96.0.11"), Port: 80, NodePort: agentNodePort, Backends: topo.Backends}
	a.writeService(web)
	a.writeService(np)
	a.start()
	a.waitVS(web.key(), weights(8080, 1, topo.Backends...))
	a.waitVS(ipvs.Key{IP: nodeAddr, Protocol: dataplane.TCP, Port: agentNodePort}, weights(8080, 1, topo.Backends...))
	a.waitSyncs(a.current().syncs())
	want := nodeSnapshot(t)

	repaired := func(what string, tamper func()) {
		t.Helper()
		tamper() // fails the test if there was nothing to delete
		start := time.Now()
		var last string
		a.eventually(what+" repaired", agentDeadline, func() (bool, string) {
			last = nodeSnapshot(t)
			return last == want, "node differs"
		})
		t.Logf("%s: repaired after %v", what, time.Since(start).Round(100*time.Millisecond))
		rs := requestAll(t, topo.Client, web.addr(), 2)
		expectSources(t, "after repairing "+what, topo, rs, nodeSideAddr)
	}

	repaired("deleted virtual server", func() {
		if err := withHandle(func(h *ipvs.KernelHandle) error { return h.DeleteVirtualServer(web.key()) }); err != nil {
			t.Fatal(err)
		}
	})
	repaired("deleted ipset member", func() {
		mustCommand(t, "ipset", "del", "SWITCHYARD-CLUSTER-IP", "10.96.0.10,tcp:80")
	})
	repaired("deleted SWITCHYARD chain rule", func() {
		n := ruleNumber(t, "nat", "SWITCHYARD-SERVICES", "cluster IP traffic from outside the cluster CIDR")
		mustCommand(t, "iptables", "-t", "nat", "-D", "SWITCHYARD-SERVICES", n)
	})
	repaired("deleted hook rule", func() {
		n := ruleNumber(t, "nat", "POSTROUTING", "switchyard postrouting rules")
		mustCommand(t, "iptables", "-t", "nat", "-D", "POSTROUTING", n)
	})
	repaired("deleted real server, service address and chain content", func() {
		if err := withHandle(func(h *ipvs.KernelHandle) error {
			return h.DeleteRealServer(np.key(), netip.AddrPortFrom(topo.Backends[0].Addr, 8080))
		}); err != nil {
			t.Fatal(err)
		}
		deleteAddr(t, ipvs.DefaultLinkName, clusterIP)
		mustCommand(t, "iptables", "-t", "nat", "-F", "SWITCHYARD-POSTROUTING")
	})
}

// TestVMAgentForeignObjects: objects of other programs (an IPVS virtual
// server on another address and one on a NodePort a Service wants, an
// iptables chain FOREIGN with a rule and jumps to it from built-in chains,
// an ipset foreign-set) survive every sync, a rule put in front of the
// agent's hook, and `switchyard --cleanup`.
func TestVMAgentForeignObjects(t *testing.T) {
	guest.Required(t)
	topo := newAgentTopology(t, 2)
	topo.startEcho(t, "tcp", 8080)
	a := newAgent(t)
	f := addForeignObjects(t, a, topo.Backends[1])
	want := f.snapshot(t)

	web := svcSpec{Name: "web", ClusterIP: clusterIP, Port: 80, Backends: topo.Backends}
	// clash wants the NodePort the foreign virtual server holds.
	clash := svcSpec{Name: "clash", ClusterIP: netip.MustParseAddr("10.96.0.11"), Port: 80, NodePort: 30081, Backends: topo.Backends[:1]}
	a.writeService(web)
	a.writeService(clash)
	a.start()
	a.waitVS(web.key(), weights(8080, 1, topo.Backends...))
	a.waitVS(clash.key(), weights(8080, 1, topo.Backends[0]))
	a.waitLog(`"A virtual server switchyard does not own holds a wanted key; leaving it alone" virtualServer="10\.99\.0\.1:30081/TCP"`)
	expectSameSnapshot(t, "after the first sync", want, f.snapshot(t))

	// Partial syncs (manifest edits) and periodic full ones.
	web.Backends = topo.Backends[1:]
	a.writeService(web)
	a.waitVS(web.key(), weights(8080, 1, topo.Backends[1]))
	a.remove("clash.yaml")
	a.eventually("clash removed", agentDeadline, func() (bool, string) {
		_, err := scheduler(clash.key())
		return ipvs.IsNotFound(err), "still there"
	})
	a.waitSyncs(a.current().syncs() + 1)
	expectSameSnapshot(t, "after edits and periodic syncs", want, f.snapshot(t))

	// A foreign rule put in front of the agent's hook: the agent moves its
	// hook back to the top and leaves the foreign rule.
	mustCommand(t, "iptables", "-t", "nat", "-I", "POSTROUTING", "1", "-m", "comment", "--comment", "foreign-first", "-j", "FOREIGN")
	a.eventually("switchyard hook first in POSTROUTING again", agentDeadline, func() (bool, string) {
		rules := chainRules(t, "nat", "POSTROUTING")
		return len(rules) > 0 && strings.Contains(rules[0], "switchyard postrouting rules"), strings.Join(rules, "; ")
	})
	if !strings.Contains(strings.Join(chainRules(t, "nat", "POSTROUTING"), "\n"), "foreign-first") {
		t.Error("the agent removed the foreign rule put in front of its hook")
	}
	mustCommand(t, "iptables", "-t", "nat", "-D", "POSTROUTING", "-m", "comment", "--comment", "foreign-first", "-j", "FOREIGN")
	expectSameSnapshot(t, "after moving the hook", want, f.snapshot(t))

	if err := a.stop(syscall.SIGTERM); err != nil {
		t.Errorf("agent exit: %v", err)
	}
	if out, err := a.runCleanup(); err != nil {
		t.Fatalf("switchyard --cleanup: %v\n%s", err, out)
	}
	expectSameSnapshot(t, "after --cleanup", want, f.snapshot(t))
	a.expectNoSwitchyardObjects("after --cleanup")
}

// TestVMAgentCleanup: `switchyard --cleanup`, run as its own process after
// the agent stopped, removes every switchyard object (dummy link, virtual
// servers on service and node addresses, SWITCHYARD chains, hook rules,
// sets, state file) and is harmless when run again.
func TestVMAgentCleanup(t *testing.T) {
	guest.Required(t)
	topo := newAgentTopology(t, 2)
	topo.startEcho(t, "tcp", 8080)
	a := newAgent(t)
	web := svcSpec{Name: "web", ClusterIP: clusterIP, Port: 80, Backends: topo.Backends}
	np := svcSpec{Name: "np", ClusterIP: netip.MustParseAddr("10.96.0.11"), Port: 80, NodePort: agentNodePort, Backends: topo.Backends}
	a.writeService(web)
	a.writeService(np)
	a.start()
	a.waitVS(web.key(), weights(8080, 1, topo.Backends...))
	a.waitVS(ipvs.Key{IP: nodeAddr, Protocol: dataplane.TCP, Port: agentNodePort}, weights(8080, 1, topo.Backends...))
	if err := a.stop(syscall.SIGTERM); err != nil {
		t.Errorf("agent exit: %v", err)
	}
	expectEven(t, "with the agent stopped", countIDs(requestAll(t, topo.Client, web.addr(), 2)), 1)

	for i := range 2 { // the second run finds nothing to do
		out, err := a.runCleanup()
		if err != nil || !strings.Contains(out, "Cleanup done") {
			t.Fatalf("switchyard --cleanup #%d: %v\n%s", i+1, err, out)
		}
		a.expectNoSwitchyardObjects("after --cleanup")
	}
	if _, err := netnstest.Request(topo.Client, "tcp", web.addr(), "x", 2*time.Second); err == nil {
		t.Error("the ClusterIP still answers after --cleanup")
	}
}

// TestVMAgentBadInput: a file that does not parse and an invalid Service
// are logged and skipped; a bad scheduler annotation is logged and the
// default used; the valid Service keeps working throughout, also while its
// own file is broken (its last good version stays).
func TestVMAgentBadInput(t *testing.T) {
	guest.Required(t)
	topo := newAgentTopology(t, 2)
	topo.startEcho(t, "tcp", 8080)
	a := newAgent(t)
	web := svcSpec{Name: "web", ClusterIP: clusterIP, Port: 80, Backends: topo.Backends}
	odd := svcSpec{Name: "odd", ClusterIP: netip.MustParseAddr("10.96.0.13"), Port: 80, Scheduler: "fastest", Backends: topo.Backends}
	invalid := svcSpec{Name: "invalid", ClusterIP: netip.MustParseAddr("10.96.0.12"), Port: 80, Backends: topo.Backends}
	a.writeService(web)
	a.writeService(odd)
	a.write("broken.yaml", "kind: Service\nmetadata: {name: [oops\n")
	a.write("invalid.yaml", strings.Replace(invalid.yaml(), "    port: 80\n", "    port: 70000\n", 1))
	a.start()
	a.waitVS(web.key(), weights(8080, 1, topo.Backends...))
	a.waitVS(odd.key(), weights(8080, 1, topo.Backends...))
	a.waitLog(`"Manifest problem" problem=".*broken\.yaml: parse-error`)
	a.waitLog(`"Manifest problem" problem=".*invalid\.yaml: Service e2e/invalid: invalid-object`)
	a.waitLog(`"Object corrected" .*reason="invalid-scheduler"`)
	if s, err := scheduler(odd.key()); err != nil || s != "rr" {
		t.Errorf("scheduler of the Service with a bad annotation: %q %v, want the default rr", s, err)
	}
	for _, vs := range listVS(t) {
		if vs.Key.IP == invalid.ClusterIP {
			t.Errorf("invalid Service programmed: %s", vs.Key)
		}
	}
	expectEven(t, "web next to bad input", countIDs(requestAll(t, topo.Client, web.addr(), 4)), 2)

	// web's own file breaks: its last good objects stay.
	syncs := a.current().syncs()
	a.write("web.yaml", "apiVersion: v1\nkind: Service\nspec: {ports: [\n")
	a.waitLog(`"Manifest problem" problem=".*web\.yaml: parse-error`)
	a.waitSyncs(syncs + 1)
	a.waitVS(web.key(), weights(8080, 1, topo.Backends...))
	expectEven(t, "web with its file broken", countIDs(requestAll(t, topo.Client, web.addr(), 4)), 2)

	// Fixed again, with one backend: followed as usual. be0 drains (weight
	// 0) while the requests above linger in TIME_WAIT.
	web.Backends = topo.Backends[1:]
	a.writeService(web)
	drained := weights(8080, 1, topo.Backends[1])
	drained[netip.AddrPortFrom(topo.Backends[0].Addr, 8080)] = 0
	a.waitVS(web.key(), drained)
	if got := countIDs(requestAll(t, topo.Client, web.addr(), 2)); got["be1"] != 2 {
		t.Errorf("web after the fix: %v, want be1 only", got)
	}
}
