package main

import (
	"bytes"
	"context"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/switchyard/switchyard/agentapi"
	"github.com/switchyard/switchyard/cmd/yardctl/cli"
	"github.com/switchyard/switchyard/conntrack"
	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/ebpf"
	"github.com/switchyard/switchyard/ipvs"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

// golden compares got with testdata/name (rewritten with -update).
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from golden file:\n--- got\n%s--- want\n%s", path, got, want)
	}
}

// now is the clock of every test: the agent started an hour before, and
// synced two seconds before.
var (
	now       = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	startTime = now.Add(-time.Hour)
	lastSync  = now.Add(-2 * time.Second)
)

// yardctl runs yardctl in process and returns its output.
func yardctl(t *testing.T, socket string, k cli.Kernel, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := cli.NewCommand(cli.Env{Stdout: &out, Stderr: &errOut, Kernel: k, Now: func() time.Time { return now }, PollInterval: 10 * time.Millisecond})
	cmd.SetArgs(append([]string{"--socket", socket}, args...))
	err := cmd.ExecuteContext(context.Background())
	if errOut.Len() > 0 {
		t.Logf("stderr: %s", errOut.String())
	}
	return out.String(), err
}

func spn(ns, name, port string, proto dataplane.Protocol) dataplane.ServicePortName {
	return dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: ns, Name: name}, Port: port, Protocol: proto}
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func ips(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

var (
	webHTTP = spn("default", "web", "http", dataplane.TCP)
	dnsUDP  = spn("default", "dns", "dns", dataplane.UDP)
	shopAPI = spn("shop", "api", "", dataplane.TCP)
)

// testState is node-a in zone-a (192.168.1.10) with web (ClusterIP and
// NodePort, endpoints on two nodes, one terminating), dns (no endpoints)
// and shop/api (external IP, externalTrafficPolicy Local, affinity).
func testState() *dataplane.State {
	st := dataplane.NewState()
	st.NodeName, st.NodeZone, st.NodeIPs = "node-a", "zone-a", ips("192.168.1.10")
	st.Services[webHTTP] = &dataplane.ServicePort{Name: webHTTP, Port: 80, NodePort: 30080, ClusterIPs: ips("10.96.0.10")}
	st.Endpoints[webHTTP] = []dataplane.Endpoint{
		{Addr: ap("10.244.1.2:8080"), Ready: true, Serving: true, NodeName: "node-a", Zone: "zone-a"},
		{Addr: ap("10.244.1.9:8080"), Serving: true, Terminating: true, NodeName: "node-a", Zone: "zone-a"},
		{Addr: ap("10.244.2.3:8080"), Ready: true, Serving: true, NodeName: "node-b", Zone: "zone-b"},
	}
	st.Services[dnsUDP] = &dataplane.ServicePort{Name: dnsUDP, Port: 53, ClusterIPs: ips("10.96.0.53")}
	st.Services[shopAPI] = &dataplane.ServicePort{Name: shopAPI, Port: 443, ClusterIPs: ips("10.96.0.44"),
		ExternalIPs: ips("203.0.113.7"), ExternalPolicyLocal: true, SessionAffinityTimeout: 3 * time.Hour}
	st.Endpoints[shopAPI] = []dataplane.Endpoint{
		{Addr: ap("10.244.1.4:9000"), Ready: true, Serving: true, NodeName: "node-a", Zone: "zone-a"},
		{Addr: ap("10.244.2.5:9000"), Ready: true, Serving: true, NodeName: "node-b", Zone: "zone-b"},
	}
	return st
}

func flow(proto dataplane.Protocol, client, frontend, backend, state string) agentapi.Flow {
	return agentapi.Flow{Flow: conntrack.Flow{Protocol: proto,
		Orig:  conntrack.Tuple{Src: ap(client), Dst: ap(frontend)},
		Reply: conntrack.Tuple{Src: ap(backend), Dst: ap(client)}, TCPState: state}}
}

// testFlows: web 3+1 on 10.244.1.2, 1 on 10.244.2.3 through the NodePort,
// 1 on a removed backend; shop 2 on its local endpoint.
func testFlows() []agentapi.Flow {
	return []agentapi.Flow{
		flow(dataplane.TCP, "10.244.5.5:40001", "10.96.0.10:80", "10.244.1.2:8080", "ESTABLISHED"),
		flow(dataplane.TCP, "10.244.5.5:40002", "10.96.0.10:80", "10.244.1.2:8080", "ESTABLISHED"),
		flow(dataplane.TCP, "10.244.5.5:40003", "10.96.0.10:80", "10.244.1.2:8080", "ESTABLISHED"),
		flow(dataplane.TCP, "10.244.5.5:40004", "10.96.0.10:80", "10.244.1.2:8080", "TIME_WAIT"),
		flow(dataplane.TCP, "192.168.1.99:50000", "192.168.1.10:30080", "10.244.2.3:8080", "ESTABLISHED"),
		flow(dataplane.TCP, "10.244.5.5:40005", "10.96.0.10:80", "10.244.3.3:8080", "ESTABLISHED"),
		flow(dataplane.TCP, "198.51.100.7:1000", "203.0.113.7:443", "10.244.1.4:9000", "ESTABLISHED"),
		flow(dataplane.TCP, "198.51.100.7:1001", "203.0.113.7:443", "10.244.1.4:9000", "ESTABLISHED"),
	}
}

// fakeSyncer is the agent's sync loop, synced once.
type fakeSyncer struct {
	mu       sync.Mutex
	st       *dataplane.State
	syncs    int
	err      error
	requests int
}

func (f *fakeSyncer) View(fn func(*dataplane.State)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f.st)
}

// RequestFull "syncs" at once.
func (f *fakeSyncer) RequestFull() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests++
	f.syncs++
}

func (f *fakeSyncer) Status() (time.Time, error, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return lastSync, f.err, f.syncs
}

type fakeFlows []agentapi.Flow

func (f fakeFlows) ListFlows() ([]agentapi.Flow, error) { return slices.Clone(f), nil }

// fixedClock never fires timers (drain checks are not needed here).
type fixedClock struct{}

func (fixedClock) Now() time.Time { return now.Add(-10 * time.Minute) }
func (fixedClock) AfterFunc(time.Duration, func()) (stop func() bool) {
	return func() bool { return true }
}

// ipvsNode is an IPVS agent on the ipvs package's fakes, synced with
// testState and then changed: web's 10.244.2.3 removed while it has
// connections (draining), counters, shop's weight changed behind the
// agent's back (drift), a foreign virtual server.
type ipvsNode struct {
	h     *ipvs.FakeHandle
	l     *ipvs.FakeLinks
	p     *ipvs.Proxier
	st    *dataplane.State
	state string // state dir
}

func newIPVSNode(t *testing.T) *ipvsNode {
	t.Helper()
	n := &ipvsNode{h: ipvs.NewFakeHandle(), l: ipvs.NewFakeLinks(""), state: t.TempDir()}
	n.l.SetHostAddresses("eth0", "192.168.1.10")
	p, err := ipvs.NewProxier(ipvs.Config{StateDir: n.state}, n.h, n.l, ipvs.NewFakeIPVSSysctl(), ipvs.WithClock(fixedClock{}))
	if err != nil {
		t.Fatal(err)
	}
	n.p, n.st = p, testState()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(p.Sync(context.Background(), n.st, dataplane.Changes{Full: true}))
	web := ipvs.Key{IP: netip.MustParseAddr("10.96.0.10"), Protocol: dataplane.TCP, Port: 80}
	webNP := ipvs.Key{IP: netip.MustParseAddr("192.168.1.10"), Protocol: dataplane.TCP, Port: 30080}
	must(n.h.SetConnections(web, ap("10.244.1.2:8080"), 3, 1))
	must(n.h.SetConnections(webNP, ap("10.244.2.3:8080"), 2, 0))
	must(n.h.SetStats(web, netip.AddrPort{}, ipvs.Stats{Connections: 42, PacketsIn: 420, PacketsOut: 380, BytesIn: 31337, BytesOut: 65536}))
	must(n.h.SetStats(web, ap("10.244.1.2:8080"), ipvs.Stats{Connections: 30, PacketsIn: 300, PacketsOut: 280, BytesIn: 20000, BytesOut: 50000}))
	n.st.Endpoints[webHTTP] = slices.DeleteFunc(slices.Clone(n.st.Endpoints[webHTTP]), func(e dataplane.Endpoint) bool { return e.Addr == ap("10.244.2.3:8080") })
	must(p.Sync(context.Background(), n.st, dataplane.Changes{Services: map[dataplane.ServiceName]struct{}{webHTTP.ServiceName: {}}}))
	shopExt := ipvs.Key{IP: netip.MustParseAddr("203.0.113.7"), Protocol: dataplane.TCP, Port: 443}
	must(n.h.UpdateRealServer(shopExt, ipvs.RealServer{Addr: ap("10.244.1.4:9000"), Weight: 5}))
	foreign := ipvs.VirtualServer{Key: ipvs.Key{IP: netip.MustParseAddr("192.168.1.10"), Protocol: dataplane.TCP, Port: 443}, Scheduler: "wlc"}
	must(n.h.AddVirtualServer(foreign))
	must(n.h.AddRealServer(foreign.Key, ipvs.RealServer{Addr: ap("192.168.1.20:443"), Weight: 1}))
	return n
}

// fakeKernel is what yardctl reads with the agent down: the IPVS node's
// fakes, a fixed nftables table and testFlows.
type fakeKernel struct {
	n   *ipvsNode
	nft *agentapi.NFTables
}

func (k fakeKernel) IPVS(stateDir, dummyLink string) (*agentapi.IPVSTable, error) {
	return agentapi.KernelIPVS(k.n.h, k.n.l, k.n.state)
}

func (k fakeKernel) NFTables() (*agentapi.NFTables, error) {
	t := *k.nft
	t.Source, t.DriftChecked = agentapi.SourceKernel, false
	return &t, nil
}

func (k fakeKernel) Flows() ([]agentapi.Flow, error) { return testFlows(), nil }

// nftInspector is an nftables agent's dataplane with a fixed table.
type nftInspector struct{ table *agentapi.NFTables }

func (i nftInspector) Kind() string                            { return agentapi.KindNFTables }
func (i nftInspector) Scheduler(*dataplane.ServicePort) string { return "random" }
func (i nftInspector) Backends(*dataplane.State, []dataplane.ServicePortName) (map[dataplane.ServicePortName][]agentapi.KernelBackend, error) {
	return nil, nil
}
func (i nftInspector) Table(*dataplane.State) (any, error) { return i.table, nil }
func (i nftInspector) Route(st *dataplane.State, name dataplane.ServicePortName, dst netip.AddrPort, nodePort bool) []string {
	return []string{"ip switchyard service-ips " + dst.Addr().String() + " . tcp . " + itoa(dst.Port()) + " : goto svc-XXXXXXXX-" + name.Namespace + "/" + name.Name + "/tcp"}
}

func itoa(p uint16) string { return strconv.Itoa(int(p)) }

func u64(v uint64) *uint64 { return &v }

// nftTable is a small nftables table with drift and one counter.
func nftTable() *agentapi.NFTables {
	return &agentapi.NFTables{Source: agentapi.SourceAgent, DriftChecked: true, Counters: true, Tables: []agentapi.NFTTable{{
		Family: "ip", Name: "switchyard", Exists: true, Drift: []string{},
		Sets: []agentapi.NFTSet{
			{Name: "no-endpoint-services", Elements: []string{"10.96.0.53 . udp . 53"}},
			{Name: "service-ips", Map: true, Elements: []string{"10.96.0.10 . tcp . 80 : goto svc-OSC5D42R-default/web/tcp/http"}},
			{Name: "service-nodeports", Map: true, Elements: []string{}},
		},
		Chains: []agentapi.NFTChain{
			{Name: "nat-prerouting", Kind: "fixed", Hook: "type nat hook prerouting priority -100; policy accept",
				Frontends: []string{}, Rules: []agentapi.NFTRule{{Text: "jump services"}}, Drift: []string{}},
			{Name: "services", Kind: "fixed", Frontends: []string{}, Rules: []agentapi.NFTRule{
				{Text: "ip daddr . meta l4proto . th dport vmap @service-ips"},
				{Text: "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports"}}, Drift: []string{}},
			{Name: "svc-OSC5D42R-default/web/tcp/http", Kind: "service", Service: "default/web:http/tcp",
				Frontends: []string{"service-ips 10.96.0.10 . tcp . 80"},
				Rules: []agentapi.NFTRule{
					{Text: "ip daddr 10.96.0.10 jump mark-if-outside-cluster"},
					{Text: "dnat to numgen random mod 2 map { 0 : 10.244.1.2 . 8080, 1 : 10.244.2.3 . 8080 } comment \"endpoints 2 digest 45147d6050de\""},
					{Text: "counter", Packets: u64(17), Bytes: u64(1020)},
				},
				Drift: []string{"element service-nodeports tcp . 30080 : goto svc-OSC5D42R-default/web/tcp/http missing", "rule 3 not wanted: counter"}},
		},
	}}}
}

// startAgent serves the API for syncer and insp on a socket in a fresh
// directory.
func startAgent(t *testing.T, syncer agentapi.Syncer, insp agentapi.Inspector, flows agentapi.FlowLister) string {
	t.Helper()
	return startAgentWith(t, syncer, insp, flows, nil)
}

// startAgentWith is startAgent with a socket load balancer (nil: none).
func startAgentWith(t *testing.T, syncer agentapi.Syncer, insp agentapi.Inspector, flows agentapi.FlowLister, lb agentapi.SocketLB) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "run", "switchyard.sock")
	chain := "ipvs+conntrack+healthcheck"
	if insp != nil && insp.Kind() == agentapi.KindNFTables {
		chain = "nftables+conntrack+healthcheck"
		if lb != nil {
			chain = "nftables+socketlb+conntrack+healthcheck"
		}
	}
	s, err := agentapi.NewServer(agentapi.Config{Socket: sock, Version: "v0.3.0", NodeName: "node-a", SyncChain: chain,
		StartTime: startTime, Syncer: syncer, Inspector: insp, Conntrack: flows, SocketLB: lb})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close agent api: %v", err)
		}
	})
	return sock
}

// fakeSocketLB is an agent's socket load balancer with fixed counts and
// sockets.
type fakeSocketLB struct {
	conns []ebpf.BackendConnections
	socks []ebpf.Socket
}

func (f fakeSocketLB) Connections() ([]ebpf.BackendConnections, error) {
	return slices.Clone(f.conns), nil
}
func (f fakeSocketLB) Sockets() ([]ebpf.Socket, error) { return slices.Clone(f.socks), nil }

// testSocketLB: web's 10.244.1.2 has two sockets of this node connected
// (one translated from the ClusterIP a minute ago, one dialed directly)
// and one it accepted; shop's 10.244.1.4 one socket translated from its
// external IP.
func testSocketLB() fakeSocketLB {
	return fakeSocketLB{
		conns: []ebpf.BackendConnections{
			{Backend: ap("10.244.1.2:8080"), Direction: ebpf.Out, Count: 2},
			{Backend: ap("10.244.1.2:8080"), Direction: ebpf.In, Count: 1},
			{Backend: ap("10.244.1.4:9000"), Direction: ebpf.Out, Count: 1},
		},
		socks: []ebpf.Socket{
			{Cookie: 11, Direction: ebpf.Out, Local: ap("10.244.1.7:40000"), Remote: ap("10.244.1.2:8080"),
				Frontend: ap("10.96.0.10:80"), Service: webHTTP, Established: now.Add(-time.Minute), NetnsCookie: 3},
			{Cookie: 12, Direction: ebpf.Out, Local: ap("10.244.1.7:40001"), Remote: ap("10.244.1.2:8080"),
				Established: now.Add(-30 * time.Second), NetnsCookie: 3},
			{Cookie: 13, Direction: ebpf.In, Local: ap("10.244.1.2:8080"), Remote: ap("10.244.2.8:50000"),
				Established: now.Add(-20 * time.Second), NetnsCookie: 4},
			{Cookie: 14, Direction: ebpf.Out, Local: ap("10.244.1.7:40002"), Remote: ap("10.244.1.4:9000"),
				Frontend: ap("203.0.113.7:443"), Service: shopAPI, Established: now.Add(-5 * time.Second), NetnsCookie: 3},
		},
	}
}

func newServerAt(sock string, syncer agentapi.Syncer) (*agentapi.Server, error) {
	return agentapi.NewServer(agentapi.Config{Socket: sock, Version: "v0.3.0", NodeName: "node-a", StartTime: startTime, Syncer: syncer})
}
