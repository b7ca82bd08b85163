package agentspec

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard/switchyard/test/netnstest"
)

// Scenario is one end-to-end behaviour of the agent.
type Scenario struct {
	Name string
	Run  func(t *testing.T, env *Env)
}

// Scenarios lists the spec. Each scenario builds its own topology and
// agent on env (make a new Env per scenario).
func Scenarios() []Scenario {
	return []Scenario{
		{"Traffic", Traffic},
		{"EndpointChanges", EndpointChanges},
		{"NoEndpointsReject", NoEndpointsReject},
		{"ExternalTrafficPolicyLocal", ExternalTrafficPolicyLocal},
		{"InternalTrafficPolicyLocal", InternalTrafficPolicyLocal},
		{"SessionAffinityClientIP", SessionAffinityClientIP},
		{"LoadBalancerSourceRanges", LoadBalancerSourceRanges},
		{"SchedulerAnnotation", SchedulerAnnotation},
		{"GracefulDrain", GracefulDrain},
		{"Restart", Restart},
		{"RepairsDrift", RepairsDrift},
		{"ForeignObjects", ForeignObjects},
		{"Cleanup", Cleanup},
		{"BadInput", BadInput},
		{"HostPort", HostPort},
		{"Observability", Observability},
		{"AgentAPI", AgentAPI},
	}
}

// IPVS is what the IPVS-only scenarios read from the kernel; a Dataplane
// supporting FeatureIPVSScheduler or FeatureGracefulDrain implements it.
type IPVS interface {
	// Scheduler is the scheduler of fe's virtual server.
	Scheduler(fe Frontend) (string, error)
	// ActiveConns is the active connection count of real server rs of
	// fe's virtual server.
	ActiveConns(t *testing.T, fe Frontend, rs netip.AddrPort) int
	// WaitRealServers waits until fe's virtual server has exactly want
	// (address -> weight).
	WaitRealServers(t *testing.T, a *Agent, fe Frontend, want map[netip.AddrPort]int, timeout time.Duration)
	// StateFile is the agent's IPVS state file.
	StateFile(a *Agent) string
}

func (e *Env) ipvs(t *testing.T) IPVS {
	t.Helper()
	x, ok := e.DP.(IPVS)
	if !ok {
		t.Fatalf("the %s dataplane claims an IPVS feature but does not implement agentspec.IPVS", e.DP.Name())
	}
	return x
}

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

// Addresses of the Services the scenarios use.
var (
	webIP   = ip("10.96.0.10")
	npIP    = ip("10.96.0.11")
	lbIP    = ip("10.96.0.12")
	extIP   = ip("10.96.0.13")
	dnsIP   = ip("10.96.0.53")
	emptyIP = ip("10.96.0.20")
	// LoadBalancerIngress and ExternalIP are the node's other frontends.
	LoadBalancerIngress = ip("198.51.100.10")
	ExternalIP          = ip("203.0.113.10")
)

// NodePort is the NodePort of the scenarios' NodePort Services.
const NodePort = 30080

// Traffic runs one agent with a Service of each kind and checks the
// traffic paths and the source address each backend sees:
//   - ClusterIP from the client namespace and from the node reaches every
//     endpoint. Both sources are outside --cluster-cidr, so the backends
//     see the node's address (SNAT), not the client's.
//   - ClusterIP from a pod (inside --cluster-cidr) keeps the pod's address.
//   - Hairpin: a backend reaching its own Service sees the node's address
//     when it lands on itself (else its reply would skip de-NAT), and keeps
//     its own address on the other backend (pod to pod).
//   - NodePort on the node's address, a load-balancer ingress IP and an
//     external IP are masqueraded, from the client and from a pod alike.
//   - A UDP Service, masqueraded from the client, not from a pod.
func Traffic(t *testing.T, env *Env) {
	topo := env.NewTopology(t, 2)
	pod := env.AddPod(t, topo)
	a := env.NewAgent(t)
	bes := topo.Backends
	web := Service{Name: "web", ClusterIP: webIP, Port: 80, Backends: bes}
	np := Service{Name: "np", ClusterIP: npIP, Port: 80, NodePort: NodePort, Backends: bes}
	lb := Service{Name: "lb", ClusterIP: lbIP, Port: 80, LoadBalancerIP: LoadBalancerIngress, Backends: bes}
	ext := Service{Name: "ext", ClusterIP: extIP, Port: 80, ExternalIPs: []netip.Addr{ExternalIP}, Backends: bes}
	dns := Service{Name: "dns", ClusterIP: dnsIP, Port: 53, Protocol: "UDP", Backends: bes}
	all := []Service{web, np, lb, ext, dns}
	a.WriteService(all...)
	a.Start()
	env.DP.WaitProgrammed(t, a, all...)
	env.DP.CheckKernel(t, all)

	t.Run("ClusterIP", func(t *testing.T) {
		rs := env.Spread(t, "from the client namespace", topo.Client, "tcp", web.Addr(), 6, bes...)
		ExpectSources(t, "from the client namespace", topo, rs, Masqueraded)
		rs = env.Spread(t, "from the node", env.Node, "tcp", web.Addr(), 6, bes...)
		ExpectSources(t, "from the node", topo, rs, Masqueraded)
	})
	t.Run("ClusterIPFromPod", func(t *testing.T) {
		rs := env.Spread(t, "from a pod", pod, "tcp", web.Addr(), 6, bes...)
		ExpectSources(t, "from a pod", topo, rs, From(PodAddr))
	})
	t.Run("Hairpin", func(t *testing.T) {
		self := bes[0]
		rs := env.Spread(t, "from "+self.ID, self.NS, "tcp", web.Addr(), 6, bes...)
		ExpectSources(t, "from "+self.ID, topo, rs, func(be Backend) netip.Addr {
			if be.ID == self.ID {
				return Masqueraded(self) // hairpin
			}
			return self.Addr // inside the cluster CIDR: kept
		})
	})
	t.Run("NodePort", func(t *testing.T) {
		rs := env.Spread(t, "NodePort from the client namespace", topo.Client, "tcp", np.NodePortAddr(), 4, bes...)
		ExpectSources(t, "NodePort from the client namespace", topo, rs, Masqueraded)
		for _, r := range rs {
			if r.Src == ClientAddr {
				t.Errorf("%s saw the client's address: NodePort traffic not masqueraded", r.ID)
			}
		}
	})
	t.Run("LoadBalancerIP", func(t *testing.T) {
		addr := netip.AddrPortFrom(LoadBalancerIngress, lb.Port).String()
		rs := env.Spread(t, "load-balancer IP from the client namespace", topo.Client, "tcp", addr, 4, bes...)
		ExpectSources(t, "load-balancer IP from the client namespace", topo, rs, Masqueraded)
		rs = env.Spread(t, "load-balancer IP from a pod", pod, "tcp", addr, 4, bes...)
		ExpectSources(t, "load-balancer IP from a pod", topo, rs, Masqueraded)
	})
	t.Run("ExternalIP", func(t *testing.T) {
		addr := netip.AddrPortFrom(ExternalIP, ext.Port).String()
		rs := env.Spread(t, "external IP from the client namespace", topo.Client, "tcp", addr, 4, bes...)
		ExpectSources(t, "external IP from the client namespace", topo, rs, Masqueraded)
		rs = env.Spread(t, "external IP from a pod", pod, "tcp", addr, 4, bes...)
		ExpectSources(t, "external IP from a pod", topo, rs, Masqueraded)
	})
	t.Run("UDP", func(t *testing.T) {
		rs := env.Spread(t, "UDP from the client namespace", topo.Client, "udp", dns.Addr(), 4, bes...)
		ExpectSources(t, "UDP from the client namespace", topo, rs, Masqueraded)
		rs = env.Spread(t, "UDP from a pod", pod, "udp", dns.Addr(), 4, bes...)
		ExpectSources(t, "UDP from a pod", topo, rs, From(PodAddr))
	})
}

// EndpointChanges: endpoints removed from and added to the EndpointSlice
// file take effect and traffic follows. A TCP connection open on the
// removed endpoint keeps working (IPVS drains the real server at weight 0;
// nftables leaves it to conntrack) while new connections go to the others.
func EndpointChanges(t *testing.T, env *Env) {
	topo := env.NewTopology(t, 3)
	a := env.NewAgent(t)
	bes := topo.Backends
	web := Service{Name: "web", ClusterIP: webIP, Port: 80, NodePort: NodePort, Backends: bes[:2]}
	a.WriteService(web)
	a.Start()
	env.DP.WaitProgrammed(t, a, web)
	env.Spread(t, "two endpoints", topo.Client, "tcp", web.Addr(), 4, bes[:2]...)

	// Added: a third endpoint.
	web.Backends = bes
	a.WriteService(web)
	env.DP.WaitProgrammed(t, a, web)
	env.Spread(t, "after adding "+bes[2].ID, topo.Client, "tcp", web.Addr(), 6, bes...)
	env.Spread(t, "NodePort after adding "+bes[2].ID, topo.Client, "tcp", web.NodePortAddr(), 6, bes...)

	// Removed: the endpoint an open connection uses.
	used, conn := HoldConnection(t, topo, topo.Client, web.Addr())
	var others []Backend
	for _, be := range bes {
		if be.ID != used.ID {
			others = append(others, be)
		}
	}
	web.Backends, web.Draining = others, []Backend{used}
	a.WriteService(web)
	env.DP.WaitProgrammed(t, a, web)
	for i := range 3 {
		r, err := netnstest.Exchange(conn, "again", 5*time.Second)
		if err != nil || ParseReply(t, r).ID != used.ID {
			t.Fatalf("connection open on the removed endpoint, exchange %d: %q %v", i, r, err)
		}
	}
	rs := env.Spread(t, "after removing "+used.ID, topo.Client, "tcp", web.Addr(), 4, others...)
	ExpectSources(t, "after removing "+used.ID, topo, rs, Masqueraded)
	env.Spread(t, "NodePort after removing "+used.ID, topo.Client, "tcp", web.NodePortAddr(), 4, others...)

	// Back again.
	web.Backends, web.Draining = bes, nil
	a.WriteService(web)
	env.DP.WaitProgrammed(t, a, web)
	env.Spread(t, "after adding "+used.ID+" back", topo.Client, "tcp", web.Addr(), 6, bes...)
	if r, err := netnstest.Exchange(conn, "still", 5*time.Second); err != nil || ParseReply(t, r).ID != used.ID {
		t.Errorf("connection open through the changes: %q %v", r, err)
	}
}

// NoEndpointsReject: a Service without endpoints (TCP, UDP, NodePort)
// refuses new connections at once (TCP reset or ICMP port unreachable)
// instead of leaving them to time out, from the client, a pod and the node;
// a Service whose last endpoint goes does the same; one that gets an
// endpoint serves.
func NoEndpointsReject(t *testing.T, env *Env) {
	topo := env.NewTopology(t, 2)
	pod := env.AddPod(t, topo)
	a := env.NewAgent(t)
	bes := topo.Backends
	web := Service{Name: "web", ClusterIP: webIP, Port: 80, NodePort: NodePort, Backends: bes}
	empty := Service{Name: "empty", ClusterIP: emptyIP, Port: 80, NodePort: 30099}
	emptyUDP := Service{Name: "empty-udp", ClusterIP: ip("10.96.0.21"), Port: 53, Protocol: "UDP"}
	a.WriteService(web, empty, emptyUDP)
	a.Start()
	env.DP.WaitProgrammed(t, a, web, empty, emptyUDP)
	env.DP.CheckKernel(t, []Service{web, empty, emptyUDP})

	ExpectRefused(t, "no endpoints, from the client", topo.Client, "tcp", empty.Addr())
	ExpectRefused(t, "no endpoints, from a pod", pod, "tcp", empty.Addr())
	ExpectRefused(t, "no endpoints, from the node", env.Node, "tcp", empty.Addr())
	ExpectRefused(t, "no endpoints, NodePort", topo.Client, "tcp", empty.NodePortAddr())
	ExpectRefused(t, "no endpoints, UDP", topo.Client, "udp", emptyUDP.Addr())

	// The last endpoints go (after serving, so IPVS drains them).
	env.Spread(t, "before removing the endpoints", topo.Client, "tcp", web.Addr(), 4, bes...)
	env.Spread(t, "NodePort before removing the endpoints", topo.Client, "tcp", web.NodePortAddr(), 4, bes...)
	web.Backends, web.Draining = nil, bes
	a.WriteService(web)
	env.DP.WaitProgrammed(t, a, web)
	ExpectRefused(t, "last endpoint removed", topo.Client, "tcp", web.Addr())
	ExpectRefused(t, "last endpoint removed, NodePort", topo.Client, "tcp", web.NodePortAddr())

	// An endpoint arrives.
	empty.Backends = bes[:1]
	emptyUDP.Backends = bes[1:]
	a.WriteService(empty, emptyUDP)
	env.DP.WaitProgrammed(t, a, empty, emptyUDP)
	Only(t, "first endpoint added", topo.Client, "tcp", empty.Addr(), 2, bes[0])
	Only(t, "first endpoint added, NodePort", topo.Client, "tcp", empty.NodePortAddr(), 2, bes[0])
	Only(t, "first endpoint added, UDP", topo.Client, "udp", emptyUDP.Addr(), 2, bes[1])
}

// SchedulerAnnotation (IPVS): adding switchyard.io/ipvs-scheduler to the
// manifest changes the kernel's scheduler in place; removing it goes back
// to the default.
func SchedulerAnnotation(t *testing.T, env *Env) {
	env.Require(t, FeatureIPVSScheduler, "the annotation picks an IPVS scheduler")
	ipvs := env.ipvs(t)
	topo := env.NewTopology(t, 2)
	a := env.NewAgent(t)
	web := Service{Name: "web", ClusterIP: webIP, Port: 80, Backends: topo.Backends}
	fe := web.Frontends()[0]
	a.WriteService(web)
	a.Start()
	env.DP.WaitProgrammed(t, a, web)
	waitScheduler := func(want string) {
		t.Helper()
		a.Eventually("scheduler "+want, Deadline, func() (bool, string) {
			got, err := ipvs.Scheduler(fe)
			if err != nil {
				return false, err.Error()
			}
			return got == want, "scheduler " + got
		})
	}
	waitScheduler("rr")

	web.Scheduler = "lc"
	a.WriteService(web)
	waitScheduler("lc")
	if got := CountIDs(RequestAll(t, topo.Client, "tcp", web.Addr(), 4)); got["be0"]+got["be1"] != 4 {
		t.Errorf("replies with lc: %v", got)
	}
	a.WaitLog(`"Updated virtual server" virtualServer="10\.96\.0\.10:80/TCP" scheduler="lc"`)

	web.Scheduler = ""
	a.WriteService(web)
	waitScheduler("rr")
	env.Spread(t, "back to rr", topo.Client, "tcp", web.Addr(), 4, topo.Backends...)
}

// GracefulDrain (IPVS): removing the endpoint an open TCP connection uses
// from the EndpointSlice file sets its real server to weight 0: the
// connection keeps working, new connections go to the other backend, the
// drain survives an agent restart (state file), and once the connection is
// closed the agent deletes the real server.
func GracefulDrain(t *testing.T, env *Env) {
	env.Require(t, FeatureGracefulDrain, "removed endpoints drain at weight 0 with their start time in a state file")
	ipvs := env.ipvs(t)
	topo := env.NewTopology(t, 2)
	a := env.NewAgent(t)
	web := Service{Name: "web", ClusterIP: webIP, Port: 80, Backends: topo.Backends}
	fe := web.Frontends()[0]
	a.WriteService(web)
	a.Start()
	env.DP.WaitProgrammed(t, a, web)

	used, conn := HoldConnection(t, topo, topo.Client, web.Addr())
	other := topo.Backends[0]
	if other.ID == used.ID {
		other = topo.Backends[1]
	}
	usedRS := netip.AddrPortFrom(used.Addr, TargetPort)

	web.Backends, web.Draining = []Backend{other}, []Backend{used}
	a.WriteService(web)
	want := map[netip.AddrPort]int{netip.AddrPortFrom(other.Addr, TargetPort): 1, usedRS: 0}
	ipvs.WaitRealServers(t, a, fe, want, Deadline)
	if n := ipvs.ActiveConns(t, fe, usedRS); n != 1 {
		t.Errorf("draining real server %s has %d active connections, want 1", usedRS, n)
	}
	// The state file is written at the end of the sync that set weight 0,
	// a moment after the kernel shows it: poll, bounded.
	stateFile := ipvs.StateFile(a)
	var drainState []byte
	var err error
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		drainState, err = os.ReadFile(stateFile)
		if err == nil && strings.Contains(string(drainState), usedRS.String()) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("state file does not record the drain: %v\n%s", err, drainState)
		}
	}
	for i := range 3 {
		r, err := netnstest.Exchange(conn, "again", 5*time.Second)
		if err != nil || ParseReply(t, r).ID != used.ID {
			t.Fatalf("open connection during drain, exchange %d: %q %v", i, r, err)
		}
	}
	Only(t, "new connections during drain", topo.Client, "tcp", web.Addr(), 4, other)
	// A later (periodic, full) sync keeps it draining, and so does a
	// restarted agent: same weight, same drain start in the state file.
	a.WaitSyncs(a.Current().Syncs() + 1)
	if err := a.Stop(syscall.SIGTERM); err != nil {
		t.Errorf("agent exit: %v", err)
	}
	a.Start()
	a.WaitSyncs(0)
	ipvs.WaitRealServers(t, a, fe, want, Deadline)
	if b, err := os.ReadFile(stateFile); err != nil || string(b) != string(drainState) {
		t.Errorf("state file after restart: %v\n%s\nwant\n%s", err, b, drainState)
	}
	if r, err := netnstest.Exchange(conn, "after restart", 5*time.Second); err != nil || ParseReply(t, r).ID != used.ID {
		t.Fatalf("open connection after the agent restarted: %q %v", r, err)
	}

	// RST: IPVS keeps the entry in CLOSE for 10 s (TIME_WAIT would be 2
	// minutes), counted as inactive; then the agent deletes the server.
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	conn.Close()
	closed := time.Now()
	ipvs.WaitRealServers(t, a, fe, map[netip.AddrPort]int{netip.AddrPortFrom(other.Addr, TargetPort): 1}, 40*time.Second)
	t.Logf("real server deleted %v after the connection closed", time.Since(closed).Round(100*time.Millisecond))
	a.WaitLog(`"Deleted real server" virtualServer="10\.96\.0\.10:80/TCP" realServer="` + regexp.QuoteMeta(usedRS.String()) + `" reason="no connections left"`)
}

// Restart: SIGTERM leaves the dataplane in place (traffic keeps flowing
// with the agent down); a new agent adopts it without changing anything,
// and a TCP connection opened before survives both that and a SIGKILL and
// restart.
func Restart(t *testing.T, env *Env) {
	topo := env.NewTopology(t, 2)
	a := env.NewAgent(t)
	web := Service{Name: "web", ClusterIP: webIP, Port: 80, Backends: topo.Backends}
	np := Service{Name: "np", ClusterIP: npIP, Port: 80, NodePort: NodePort, Backends: topo.Backends[1:]}
	a.WriteService(web, np)
	a.Start()
	env.DP.WaitProgrammed(t, a, web, np)
	a.WaitSyncs(a.Current().Syncs()) // one more: settled

	conn, err := netnstest.Dial(topo.Client, "tcp", web.Addr(), 5*time.Second)
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
		rs := env.Spread(t, "ClusterIP "+when, topo.Client, "tcp", web.Addr(), 4, topo.Backends...)
		ExpectSources(t, "ClusterIP "+when, topo, rs, Masqueraded)
		rs = RequestAll(t, topo.Client, "tcp", np.NodePortAddr(), 2)
		ExpectSources(t, "NodePort "+when, topo, rs, Masqueraded)
		if got := CountIDs(rs); got[topo.Backends[1].ID] != 2 {
			t.Errorf("NodePort %s: replies %v, want all from %s", when, got, topo.Backends[1].ID)
		}
	}
	before := env.DP.Snapshot(t)

	if err := a.Stop(syscall.SIGTERM); err != nil {
		t.Errorf("agent exit after SIGTERM: %v", err)
	}
	if !strings.Contains(a.Current().Log(), "Stopping; the dataplane stays programmed") {
		t.Error("no stop message after SIGTERM")
	}
	ExpectSameSnapshot(t, "after SIGTERM", before, env.DP.Snapshot(t))
	expectTraffic("with the agent stopped")
	expectConn("with the agent stopped")

	adopted := func(when string) {
		t.Helper()
		r := a.Start()
		a.WaitSyncs(0)
		ExpectSameSnapshot(t, when, before, env.DP.Snapshot(t))
		env.DP.CheckAdopted(t, when, r.Log())
		expectConn(when)
		expectTraffic(when)
	}
	adopted("after a restart following SIGTERM")

	if err := a.Stop(syscall.SIGKILL); err == nil {
		t.Error("SIGKILL: agent exited cleanly?")
	}
	expectConn("with the agent killed")
	expectTraffic("with the agent killed")
	adopted("after a restart following SIGKILL")
	ExpectSameSnapshot(t, "at the end", before, env.DP.Snapshot(t))
}

// RepairsDrift deletes, behind the running agent's back, each kind of
// object the dataplane has (DriftKinds). Each is restored within a bounded
// time (--sync-period 2s), the node ends exactly as it was, and traffic
// flows with the right source addresses. switchyard_drift_repairs_total
// stays 0 while the agent only programs the Services and goes up with
// each repair.
func RepairsDrift(t *testing.T, env *Env) {
	topo := env.NewTopology(t, 2)
	a := env.NewAgent(t)
	web := Service{Name: "web", ClusterIP: webIP, Port: 80, Backends: topo.Backends}
	np := Service{Name: "np", ClusterIP: npIP, Port: 80, NodePort: NodePort, Backends: topo.Backends}
	a.WriteService(web, np)
	a.Start()
	env.DP.WaitProgrammed(t, a, web, np)
	a.WaitSyncs(a.Current().Syncs())
	want := env.DP.Snapshot(t)
	// Programming the Services, and the periodic full syncs since, are
	// no repairs.
	a.WaitSyncs(a.Current().Syncs() + 1)
	repairs, err := driftRepairs(env)
	if err != nil {
		t.Fatalf("drift repairs metric: %v", err)
	}
	if repairs != 0 {
		t.Errorf("switchyard_drift_repairs_total = %v before any drift, want 0", repairs)
	}

	for _, kind := range env.DP.DriftKinds() {
		env.DP.DeleteSomething(t, kind, web, np) // fails the test if there was nothing to delete
		start := time.Now()
		var last string
		a.Eventually(kind+" repaired", Deadline, func() (bool, string) {
			last = env.DP.Snapshot(t)
			return last == want, "node differs"
		})
		t.Logf("%s: repaired after %v", kind, time.Since(start).Round(100*time.Millisecond))
		// The counter goes up in the sync that repaired, after its writes.
		a.Eventually(kind+" counted in switchyard_drift_repairs_total", Deadline, func() (bool, string) {
			n, err := driftRepairs(env)
			if err != nil {
				return false, err.Error()
			}
			if n > repairs {
				repairs = n
				return true, ""
			}
			return false, fmt.Sprintf("still %v", n)
		})
		rs := RequestAll(t, topo.Client, "tcp", web.Addr(), 2)
		ExpectSources(t, "after repairing "+kind, topo, rs, Masqueraded)
		rs = RequestAll(t, topo.Client, "tcp", np.NodePortAddr(), 2)
		ExpectSources(t, "NodePort after repairing "+kind, topo, rs, Masqueraded)
	}
}

// ForeignObjects: objects of other programs survive every sync (first,
// partial, periodic), interference with the agent's own objects, and
// `switchyard --cleanup`.
func ForeignObjects(t *testing.T, env *Env) {
	topo := env.NewTopology(t, 2)
	a := env.NewAgent(t)
	f := env.DP.AddForeign(t, topo.Backends[1])
	want := f.Snapshot(t)

	web := Service{Name: "web", ClusterIP: webIP, Port: 80, Backends: topo.Backends}
	// clash wants the NodePort a foreign object holds, if any.
	clash := Service{Name: "clash", ClusterIP: npIP, Port: 80, NodePort: 30081, Backends: topo.Backends[:1]}
	if p := f.HeldNodePort(); p != 0 {
		clash.NodePort = p
	}
	a.WriteService(web, clash)
	a.Start()
	env.DP.WaitProgrammed(t, a, web, clash)
	f.AfterFirstSync(t, a)
	ExpectSameSnapshot(t, "after the first sync", want, f.Snapshot(t))
	env.Spread(t, "web next to foreign objects", topo.Client, "tcp", web.Addr(), 4, topo.Backends...)

	// Partial syncs (manifest edits) and periodic full ones. be0 served
	// above, so IPVS drains it.
	web.Backends, web.Draining = topo.Backends[1:], topo.Backends[:1]
	a.WriteService(web)
	env.DP.WaitProgrammed(t, a, web)
	a.Remove("clash.yaml")
	a.Eventually("clash removed", Deadline, func() (bool, string) { return env.DP.Absent(t, clash) })
	a.WaitSyncs(a.Current().Syncs() + 1)
	ExpectSameSnapshot(t, "after edits and periodic syncs", want, f.Snapshot(t))

	f.Interfere(t, a)
	ExpectSameSnapshot(t, "after interfering", want, f.Snapshot(t))

	if err := a.Stop(syscall.SIGTERM); err != nil {
		t.Errorf("agent exit: %v", err)
	}
	if out, err := a.RunCleanup(); err != nil {
		t.Fatalf("switchyard --cleanup: %v\n%s", err, out)
	}
	ExpectSameSnapshot(t, "after --cleanup", want, f.Snapshot(t))
	env.DP.ExpectNothingLeft(t, a, "after --cleanup")
}

// Cleanup: `switchyard --cleanup`, run as its own process after the agent
// stopped, removes every object of the agent and is harmless when run
// again; the Services stop answering.
func Cleanup(t *testing.T, env *Env) {
	topo := env.NewTopology(t, 2)
	a := env.NewAgent(t)
	web := Service{Name: "web", ClusterIP: webIP, Port: 80, Backends: topo.Backends}
	np := Service{Name: "np", ClusterIP: npIP, Port: 80, NodePort: NodePort, Backends: topo.Backends}
	a.WriteService(web, np)
	a.Start()
	env.DP.WaitProgrammed(t, a, web, np)
	if err := a.Stop(syscall.SIGTERM); err != nil {
		t.Errorf("agent exit: %v", err)
	}
	env.Spread(t, "with the agent stopped", topo.Client, "tcp", web.Addr(), 2, topo.Backends...)

	for i := range 2 { // the second run finds nothing to do
		out, err := a.RunCleanup()
		if err != nil || !strings.Contains(out, "Cleanup done") {
			t.Fatalf("switchyard --cleanup #%d: %v\n%s", i+1, err, out)
		}
		env.DP.ExpectNothingLeft(t, a, "after --cleanup")
	}
	ExpectNoAnswer(t, "ClusterIP after --cleanup", topo.Client, "tcp", web.Addr())
	ExpectNoAnswer(t, "NodePort after --cleanup", topo.Client, "tcp", np.NodePortAddr())
}

// BadInput: a file that does not parse and an invalid Service are logged
// and skipped; a bad scheduler annotation is logged (and, with IPVS, the
// default scheduler used); the valid Service keeps working throughout,
// also while its own file is broken (its last good version stays).
func BadInput(t *testing.T, env *Env) {
	topo := env.NewTopology(t, 2)
	a := env.NewAgent(t)
	bes := topo.Backends
	web := Service{Name: "web", ClusterIP: webIP, Port: 80, Backends: bes}
	odd := Service{Name: "odd", ClusterIP: extIP, Port: 80, Scheduler: "fastest", Backends: bes}
	invalid := Service{Name: "invalid", ClusterIP: lbIP, Port: 80, Backends: bes}
	a.WriteService(web, odd)
	a.Write("broken.yaml", "kind: Service\nmetadata: {name: [oops\n")
	a.Write("invalid.yaml", strings.Replace(invalid.YAML(), "    port: 80\n", "    port: 70000\n", 1))
	a.Start()
	env.DP.WaitProgrammed(t, a, web, odd)
	a.WaitLog(`"Manifest problem" problem=".*broken\.yaml: parse-error`)
	a.WaitLog(`"Manifest problem" problem=".*invalid\.yaml: Service e2e/invalid: invalid-object`)
	a.WaitLog(`"Object corrected" .*reason="invalid-scheduler"`)
	if env.DP.Supports(FeatureIPVSScheduler) {
		if s, err := env.ipvs(t).Scheduler(odd.Frontends()[0]); err != nil || s != "rr" {
			t.Errorf("scheduler of the Service with a bad annotation: %q %v, want the default rr", s, err)
		}
	}
	if ok, detail := env.DP.Absent(t, invalid); !ok {
		t.Errorf("invalid Service programmed: %s", detail)
	}
	env.Spread(t, "web next to bad input", topo.Client, "tcp", web.Addr(), 4, bes...)
	env.Spread(t, "odd (bad annotation)", topo.Client, "tcp", odd.Addr(), 4, bes...)

	// web's own file breaks: its last good objects stay.
	syncs := a.Current().Syncs()
	a.Write("web.yaml", "apiVersion: v1\nkind: Service\nspec: {ports: [\n")
	a.WaitLog(`"Manifest problem" problem=".*web\.yaml: parse-error`)
	a.WaitSyncs(syncs + 1)
	env.DP.WaitProgrammed(t, a, web)
	env.Spread(t, "web with its file broken", topo.Client, "tcp", web.Addr(), 4, bes...)

	// Fixed again, with one backend: followed as usual. be0 drains (IPVS:
	// weight 0) while the requests above linger in TIME_WAIT.
	web.Backends, web.Draining = bes[1:], bes[:1]
	a.WriteService(web)
	env.DP.WaitProgrammed(t, a, web)
	Only(t, "web after the fix", topo.Client, "tcp", web.Addr(), 2, bes[1])
}
