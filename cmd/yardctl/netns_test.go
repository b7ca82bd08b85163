package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/switchyard/switchyard/agentapi"
	"github.com/switchyard/switchyard/cmd/yardctl/cli"
	"github.com/switchyard/switchyard/dataplane"
	nft "github.com/switchyard/switchyard/nftables"
	"github.com/switchyard/switchyard/sysctl"
	"github.com/switchyard/switchyard/test/netnstest"
)

// nftAgent is an agent running in process on a node namespace: Services
// from API objects through the Tracker, the real sync loop, the nftables
// dataplane programming the namespace, and the API on a unix socket.
//
//	client 192.168.77.2 --- 192.168.77.1 [node] 10.244.1.1 --- 10.244.1.2 be0 (tcp :8080)
//	                                     [node] 10.244.2.1 --- 10.244.2.2 be1 (tcp :8080)
type nftAgent struct {
	node, client *netnstest.NS
	conn         *nft.NetlinkConn
	p            *nft.Proxier
	socket       string
	kernel       cli.NetnsKernel
}

func requireRoot(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("real-kernel test skipped in -short mode")
	}
	if os.Geteuid() != 0 {
		t.Skip("real-kernel test needs root (network namespaces, nftables)")
	}
}

func newNFTAgent(t *testing.T) *nftAgent {
	t.Helper()
	a := &nftAgent{node: netnstest.New(t, "yc-node"), client: netnstest.New(t, "yc-cli")}
	p, addr := netip.MustParsePrefix, netip.MustParseAddr
	netnstest.Veth(t, a.node, a.client, "cli0", "eth0", p("192.168.77.1/24"), p("192.168.77.2/24"))
	netnstest.AddRoute(t, a.client, p("0.0.0.0/0"), addr("192.168.77.1"))
	for i := range 2 {
		be := netnstest.New(t, fmt.Sprintf("yc-be%d", i))
		gw, ip := netip.AddrFrom4([4]byte{10, 244, byte(i + 1), 1}), netip.AddrFrom4([4]byte{10, 244, byte(i + 1), 2})
		netnstest.Veth(t, a.node, be, fmt.Sprintf("be%d", i), "eth0", netip.PrefixFrom(gw, 24), netip.PrefixFrom(ip, 24))
		netnstest.AddRoute(t, be, p("0.0.0.0/0"), gw)
		netnstest.StartEchoServer(t, be, "tcp", netip.AddrPortFrom(ip, 8080).String(), fmt.Sprintf("be%d", i))
	}
	if err := sysctl.NewAt(a.node.NsHandle()).Set("net/ipv4/ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	a.kernel = cli.NetnsKernel{NS: a.node.NsHandle()}

	conn, err := nft.NewConn(int(a.node.NsHandle()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	a.conn = conn
	if a.p, err = nft.NewProxier(nft.Config{ClusterCIDRs: []netip.Prefix{p("10.244.0.0/16")}}, conn, sysctl.NewAt(a.node.NsHandle())); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := a.p.Cleanup(context.Background()); err != nil {
			t.Errorf("nftables cleanup: %v", err)
		}
	})

	tracker := dataplane.NewTracker("node-a", dataplane.TranslateOptions{ProxyName: "switchyard"}, func(pr dataplane.Problem) {
		t.Errorf("object problem: %v", pr)
	})
	tracker.SetNodeIPs([]netip.Addr{addr("192.168.77.1")})
	tracker.OnServiceUpsert(service("web", "10.96.0.10", v1.ProtocolTCP, 80, 30080))
	tracker.OnServiceUpsert(service("dns", "10.96.0.53", v1.ProtocolUDP, 53, 0))
	tracker.OnEndpointSliceUpsert(&discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: "web-1", Labels: map[string]string{discovery.LabelServiceName: "web"}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("port"), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To[int32](8080)}},
		Endpoints: []discovery.Endpoint{
			{Addresses: []string{"10.244.1.2"}, Conditions: discovery.EndpointConditions{Ready: ptr.To(true)}, NodeName: ptr.To("node-a")},
			{Addresses: []string{"10.244.2.2"}, Conditions: discovery.EndpointConditions{Ready: ptr.To(true)}, NodeName: ptr.To("node-b")},
		},
	})
	tracker.SetServicesSynced()
	tracker.SetEndpointSlicesSynced()
	syncer := dataplane.NewSyncer(tracker, dataplane.Chain{a.p}, 0, time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { syncer.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	syncer.Notify()

	flows, err := agentapi.NewNetlinkFlows(a.node.NsHandle())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(flows.Close)
	a.socket = filepath.Join(t.TempDir(), "run", "switchyard.sock")
	s, err := agentapi.NewServer(agentapi.Config{Socket: a.socket, Version: "test", NodeName: "node-a", SyncChain: "nftables",
		Syncer: syncer, Inspector: agentapi.NewNFTablesInspector(a.p), Conntrack: flows})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close agent api: %v", err)
		}
	})
	a.waitSyncs(t, 1)
	return a
}

// service is a ClusterIP (or NodePort) Service with one port named "port".
func service(name, clusterIP string, proto v1.Protocol, port, nodePort int32) *v1.Service {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: v1.ServiceSpec{Type: v1.ServiceTypeClusterIP, ClusterIP: clusterIP, ClusterIPs: []string{clusterIP},
			Ports: []v1.ServicePort{{Name: "port", Protocol: proto, Port: port, TargetPort: intstr.FromInt32(8080)}}},
	}
	if nodePort != 0 {
		svc.Spec.Type = v1.ServiceTypeNodePort
		svc.Spec.Ports[0].NodePort = nodePort
	}
	return svc
}

// waitSyncs waits (bounded) for the agent's n-th successful sync.
func (a *nftAgent) waitSyncs(t *testing.T, n int) {
	t.Helper()
	c := agentapi.NewClient(a.socket)
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := c.Status(context.Background())
		if err == nil && st.Syncs >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent did not sync %d times: %+v, %v", n, st, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (a *nftAgent) yardctl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := yardctl(t, a.socket, a.kernel, args...)
	if err != nil {
		t.Fatalf("yardctl %v: %v\n%s", args, err, out)
	}
	return out
}

// TestNFTablesNetns: yardctl against an agent programming nftables in a
// network namespace, and against that namespace's kernel with the agent
// down; conntrack with real connections held open; drift made behind the
// agent's back, shown, and repaired by yardctl sync.
func TestNFTablesNetns(t *testing.T) {
	requireRoot(t)
	a := newNFTAgent(t)

	synced := a.yardctl(t, "nft")
	golden(t, "netns_nft.golden", synced)
	golden(t, "netns_nft_all_rules.golden", a.yardctl(t, "nft", "--all", "--rules"))
	golden(t, "netns_services.golden", a.yardctl(t, "services"))
	golden(t, "netns_trace_web.golden", a.yardctl(t, "trace", "10.96.0.10:80"))
	golden(t, "netns_trace_nodeport.golden", a.yardctl(t, "trace", "192.168.77.1:30080/tcp"))
	golden(t, "netns_trace_dns.golden", a.yardctl(t, "trace", "10.96.0.53:53/udp"))

	// The agent down: the same chains, read by yardctl itself.
	down, err := yardctl(t, filepath.Join(t.TempDir(), "no.sock"), a.kernel, "nft")
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "netns_nft_agent_down.golden", down)

	// Connections held open: conntrack counts them per backend.
	perBackend := map[string]int{}
	for i := range 4 {
		c, err := netnstest.Dial(a.client, "tcp", "10.96.0.10:80", 5*time.Second)
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
		perBackend[map[string]string{"be0": "10.244.1.2:8080", "be1": "10.244.2.2:8080"}[id]]++
	}
	var r agentapi.ConntrackReport
	if err := json.Unmarshal([]byte(a.yardctl(t, "conntrack", "default/web", "-o", "json")), &r); err != nil {
		t.Fatal(err)
	}
	if len(r.Services) != 1 || r.Services[0].Established != 4 || len(r.Services[0].Backends) != 2 {
		t.Fatalf("conntrack of web: %+v, want 4 established connections over 2 backends", r)
	}
	maxConns := 0
	for _, b := range r.Services[0].Backends {
		if b.Established != perBackend[b.Address] || !b.Endpoint {
			t.Errorf("backend %s: %d established, want %d (as the echo replies said)", b.Address, b.Established, perBackend[b.Address])
		}
		maxConns = max(maxConns, perBackend[b.Address])
	}
	if want := float64(maxConns) / 2; r.Services[0].Imbalance != want {
		t.Errorf("imbalance %v, want %v", r.Services[0].Imbalance, want)
	}
	if out := a.yardctl(t, "conntrack", "web"); !strings.Contains(out, "imbalance") || !strings.Contains(out, "total            4") {
		t.Errorf("conntrack table:\n%s", out)
	}
	if out := a.yardctl(t, "services", "web"); !strings.Contains(out, fmt.Sprintf("10.244.1.2:8080(w1 ready %d/0)", perBackend["10.244.1.2:8080"])) {
		t.Errorf("services do not show the connections %v:\n%s", perBackend, out)
	}
	// The same entries, without the agent: grouped by destination.
	down, err = yardctl(t, filepath.Join(t.TempDir(), "no.sock"), a.kernel, "conntrack", "10.96.0.10:80/tcp")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(down, "10.96.0.10:80/TCP") || !strings.Contains(down, "total            4") {
		t.Errorf("conntrack with the agent down:\n%s", down)
	}

	// Drift: web's NodePort element deleted behind the agent's back.
	tbl := &nftables.Table{Name: "switchyard", Family: nftables.TableFamilyIPv4}
	key := []byte{6, 0, 0, 0, 30080 >> 8, 30080 & 0xff, 0, 0}
	if err := a.conn.SetDeleteElements(&nftables.Set{Table: tbl, Name: "service-nodeports"}, []nftables.SetElement{{Key: key}}); err != nil {
		t.Fatal(err)
	}
	if err := a.conn.Flush(); err != nil {
		t.Fatal(err)
	}
	golden(t, "netns_nft_drift.golden", a.yardctl(t, "nft"))
	if out := a.yardctl(t, "sync", "--wait"); !strings.HasPrefix(out, "Full sync done") {
		t.Errorf("sync --wait: %s", out)
	}
	if got := a.yardctl(t, "nft"); got != synced {
		t.Errorf("after yardctl sync the tables still differ:\n%s", got)
	}
}
