package ipvsvm

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	libipvs "github.com/moby/ipvs"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/switchyard/switchyard/agentapi"
	"github.com/switchyard/switchyard/cmd/yardctl/cli"
	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/ipvs"
	"github.com/switchyard/switchyard/test/netnstest"
	"github.com/switchyard/switchyard/test/vm/guest"
)

// yardctlSyncer is the agent's sync loop for these tests: the State it
// was last synced with, and RequestFull syncing the Proxier at once.
type yardctlSyncer struct {
	n     *realNode
	mu    sync.Mutex
	st    *dataplane.State
	syncs int
	err   error
	last  time.Time
}

func (s *yardctlSyncer) View(f func(*dataplane.State)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s.st)
}

func (s *yardctlSyncer) RequestFull() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.err = s.n.p.Sync(context.Background(), s.st, fullSync)
	if s.err == nil {
		s.syncs++
		s.last = time.Now()
	}
}

func (s *yardctlSyncer) Status() (time.Time, error, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last, s.err, s.syncs
}

// runYardctl runs yardctl in process against socket, reading this VM's
// kernel when the agent is down.
func runYardctl(t *testing.T, socket string, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := cli.NewCommand(cli.Env{Stdout: &out, Stderr: &errOut, Kernel: cli.NetnsKernel{}, PollInterval: 10 * time.Millisecond})
	cmd.SetArgs(append([]string{"--socket", socket}, args...))
	err := cmd.ExecuteContext(context.Background())
	if errOut.Len() > 0 {
		t.Logf("yardctl %v stderr: %s", args, errOut.String())
	}
	return out.String(), err
}

func expectOutput(t *testing.T, what, got, want string) {
	t.Helper()
	want = strings.TrimPrefix(dedentTabs(want), "\n")
	if got != want {
		t.Errorf("%s:\n--- got\n%s--- want\n%s", what, got, want)
	}
}

// dedentTabs removes the leading tabs of a raw string literal's lines.
func dedentTabs(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimLeft(l, "\t")
	}
	return strings.Join(lines, "\n")
}

// TestVMYardctlIPVS: yardctl ipvs, services, trace, conntrack and sync
// against an agent API serving a real ipvs.Proxier on the VM's kernel,
// then yardctl ipvs with the agent down.
func TestVMYardctlIPVS(t *testing.T) {
	guest.Required(t)
	topo := newTopology(t, 2)
	topo.startEcho(t, "tcp", 8080)
	n := newRealNode(t, ipvs.Config{NodePortAddresses: []netip.Prefix{netip.MustParsePrefix("10.99.0.0/24")}})

	// A foreign virtual server on the node's address, as another program
	// would make (removed before the node's own cleanup runs).
	raw, err := libipvs.New("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(raw.Close)
	foreign := &libipvs.Service{Address: nodeAddr.AsSlice(), Protocol: unix.IPPROTO_TCP, Port: 443, SchedName: "wlc", AddressFamily: unix.AF_INET, Netmask: 0xffffffff}
	if err := raw.NewService(foreign); err != nil {
		t.Fatal(err)
	}
	n.foreign[ipvs.Key{IP: nodeAddr, Protocol: dataplane.TCP, Port: 443}] = true
	t.Cleanup(func() {
		if err := raw.DelService(foreign); err != nil {
			t.Errorf("delete foreign virtual server: %v", err)
		}
	})

	trackConnections(t)
	// Addresses and ports no other test uses: the kernel keeps a deleted
	// real server's counters for a while and gives them back when the same
	// virtual server gets it again.
	st := serviceState("web", dataplane.TCP, 80, 30777, "", topo.Backends...)
	st.NodeName, st.NodeIPs = "vm", []netip.Addr{nodeAddr}
	empty := addService(st, "empty", dataplane.UDP, 53, 0, "")
	webName := dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: "default", Name: "web"}, Protocol: dataplane.TCP}
	st.Services[webName].ClusterIPs = []netip.Addr{netip.MustParseAddr(yardctlVIP)}
	st.Services[empty].ClusterIPs = []netip.Addr{netip.MustParseAddr("10.96.77.53")}
	n.sync(st, fullSync)
	syncer := &yardctlSyncer{n: n, st: st, syncs: 1, last: time.Now()}

	flows, err := agentapi.NewNetlinkFlows(netns.None())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(flows.Close)
	sock := filepath.Join(t.TempDir(), "switchyard.sock")
	srv, err := agentapi.NewServer(agentapi.Config{Socket: sock, Version: "vm", NodeName: "vm", SyncChain: "ipvs",
		Syncer: syncer, Inspector: agentapi.NewIPVSInspector(n.p), Conntrack: flows})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("close agent api: %v", err)
		}
	})
	yardctl := func(args ...string) string {
		t.Helper()
		out, err := runYardctl(t, sock, args...)
		if err != nil {
			t.Fatalf("yardctl %v: %v\n%s", args, err, out)
		}
		return out
	}

	synced := yardctl("ipvs")
	expectOutput(t, "yardctl ipvs right after the sync", synced, yardctlIPVSSynced)
	expectOutput(t, "yardctl trace to the cluster IP", yardctl("trace", yardctlVIP+":80/tcp"), yardctlTraceWeb)

	// webVS reads web's ClusterIP virtual server as yardctl ipvs -o json
	// shows it.
	webVS := func() agentapi.IPVSVirtualServer {
		t.Helper()
		var tbl agentapi.IPVSTable
		if err := json.Unmarshal([]byte(yardctl("ipvs", "-o", "json")), &tbl); err != nil {
			t.Fatal(err)
		}
		for _, vs := range tbl.VirtualServers {
			if vs.Address == yardctlVIP+":80" && vs.Protocol == "TCP" {
				return vs
			}
		}
		t.Fatalf("no virtual server %s:80 in %+v", yardctlVIP, tbl)
		return agentapi.IPVSVirtualServer{}
	}
	// Counters are compared with their values before the traffic: the
	// kernel may hand a virtual server a recently deleted real server back
	// with its counters.
	before := map[string]uint64{}
	for _, rs := range webVS().RealServers {
		if rs.Stats == nil {
			t.Fatalf("real server %s without counters", rs.Address)
		}
		before[rs.Address] = rs.Stats.Connections
	}

	// Four connections held open: round robin puts two on each backend,
	// and IPVS, the services view and conntrack count them.
	seen := map[string]int{}
	for i := range 4 {
		c, err := netnstest.Dial(topo.Client, "tcp", yardctlVIP+":80", 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		reply, err := netnstest.Exchange(c, fmt.Sprintf("req%d", i), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		id, _, err := netnstest.ReplyID(reply)
		if err != nil {
			t.Fatal(err)
		}
		seen[id]++
	}
	expectEven(t, "held connections", seen, 2)
	// The kernel folds its per-CPU counters into what it reports every 2
	// s (the rate estimator): wait, bounded, for the 4 connections.
	var web agentapi.IPVSVirtualServer
	deadline := time.Now().Add(15 * time.Second)
	for {
		web = webVS()
		if web.Stats != nil && web.Stats.Connections >= 4 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if web.Stats == nil || web.Stats.Connections != 4 || web.Stats.PacketsIn == 0 || web.Stats.BytesOut == 0 {
		t.Errorf("web's counters after 4 connections: %+v", web.Stats)
	}
	for _, rs := range web.RealServers {
		if rs.ActiveConnections != 2 || rs.Stats == nil || rs.Stats.Connections-before[rs.Address] != 2 {
			t.Errorf("real server %s: %d active, counters %+v (%d connections before); want 2 more each", rs.Address, rs.ActiveConnections, rs.Stats, before[rs.Address])
		}
	}
	if out := yardctl("services", "web"); !strings.Contains(out, "10.100.0.2:8080(w1 ready 2/0) 10.100.1.2:8080(w1 ready 2/0)") {
		t.Errorf("yardctl services web:\n%s", out)
	}
	var ct agentapi.ConntrackReport
	if err := json.Unmarshal([]byte(yardctl("conntrack", "web", "-o", "json")), &ct); err != nil {
		t.Fatal(err)
	}
	if len(ct.Services) != 1 || ct.Services[0].Established != 4 || ct.Services[0].Imbalance != 1 {
		t.Errorf("yardctl conntrack web: %+v, want 4 established connections, imbalance 1", ct)
	}

	// Drift behind the agent's back, shown, then repaired by yardctl sync.
	webKey := ipvs.Key{IP: netip.MustParseAddr(yardctlVIP), Protocol: dataplane.TCP, Port: 80}
	if err := n.h.UpdateRealServer(webKey, ipvs.RealServer{Addr: netip.AddrPortFrom(topo.Backends[1].Addr, 8080), Weight: 7}); err != nil {
		t.Fatal(err)
	}
	if out := yardctl("ipvs"); !strings.Contains(out, "TCP "+yardctlVIP+":80: real server 10.100.1.2:8080 weight 7, want 1") {
		t.Errorf("drift not shown:\n%s", out)
	}
	if out := yardctl("sync", "--wait"); !strings.HasPrefix(out, "Full sync done: 2 successful syncs") {
		t.Errorf("yardctl sync --wait: %s", out)
	}
	if out := yardctl("ipvs"); strings.Contains(out, "Drift") {
		t.Errorf("drift left after yardctl sync:\n%s", out)
	}

	// The agent down: yardctl reads the kernel itself.
	srv.Close()
	down, err := runYardctl(t, sock, "--state-dir", n.stateDir, "ipvs")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"IPVS table read from the kernel by yardctl (agent down)",
		"TCP   10.99.0.1:443 ",
		"not owned by switchyard",
	} {
		if !strings.Contains(down, want) {
			t.Errorf("yardctl ipvs with the agent down lacks %q:\n%s", want, down)
		}
	}
	if strings.Contains(down, "default/web") || strings.Contains(down, "DRIFT") {
		t.Errorf("yardctl ipvs with the agent down names Services or checks drift:\n%s", down)
	}
}

// What yardctl ipvs prints right after the sync: every virtual server,
// the foreign one too, with its owner; no drift; zero counters.
const yardctlVIP = "10.96.77.10"

const yardctlIPVSSynced = `
	IPVS table read by the agent and compared with its desired state.
	PROT  LOCALADDRESS:PORT     SCHED  WEIGHT  ACTIVE  INACTIVE  CONNS  INPKTS  OUTPKTS  INBYTES  OUTBYTES  OWNER                    DRIFT
	TCP   10.96.77.10:80        rr             0       0         0      0       0        0        0         default/web:tcp          -
	        -> 10.100.0.2:8080  masq   1       0       0         0      0       0        0        0
	        -> 10.100.1.2:8080  masq   1       0       0         0      0       0        0        0
	UDP   10.96.77.53:53        rr             0       0         0      0       0        0        0         default/empty:udp        -
	TCP   10.99.0.1:443         wlc            0       0         0      0       0        0        0         not owned by switchyard  -
	TCP   10.99.0.1:30777       rr             0       0         0      0       0        0        0         default/web:tcp          -
	        -> 10.100.0.2:8080  masq   1       0       0         0      0       0        0        0
	        -> 10.100.1.2:8080  masq   1       0       0         0      0       0        0        0
`

const yardctlTraceWeb = `
	Destination 10.96.77.10:80/TCP (dataplane ipvs)

	default/web:tcp via clusterIP (traffic policy Cluster): forward
	  BACKEND          NODE  ZONE  STATE  CHOSEN  WHY NOT
	  10.100.0.2:8080  -     -     ready  yes     -
	  10.100.1.2:8080  -     -     ready  yes     -
	  Why:
	    - internalTrafficPolicy=Cluster: endpoints on any node
	    - new connections pick a backend by IPVS scheduler rr
	  Dataplane:
	    ipvs virtual server 10.96.77.10:80/TCP scheduler rr
	      -> 10.100.0.2:8080 masq weight 1 active 0 inactive 0
	      -> 10.100.1.2:8080 masq weight 1 active 0 inactive 0
`

// trackConnections makes conntrack track the VM's root namespace, as the
// agent's iptables NAT rules do on a node: a namespace gets conntrack
// only once a rule uses it. One table with a ct state load, removed in
// t.Cleanup.
func trackConnections(t *testing.T) {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	tbl := c.AddTable(&nftables.Table{Name: "yardctl-test", Family: nftables.TableFamilyIPv4})
	ch := c.AddChain(&nftables.Chain{Table: tbl, Name: "output", Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter})
	c.AddRule(&nftables.Rule{Table: tbl, Chain: ch, Exprs: []expr.Any{&expr.Ct{Register: 1, Key: expr.CtKeySTATE}}})
	if err := c.Flush(); err != nil {
		t.Fatalf("nftables table enabling conntrack: %v", err)
	}
	t.Cleanup(func() {
		c.DelTable(tbl)
		if err := c.Flush(); err != nil {
			t.Errorf("delete nftables table yardctl-test: %v", err)
		}
	})
}
