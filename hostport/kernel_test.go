package hostport

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"

	"github.com/switchyard/switchyard/conntrack"
	"github.com/switchyard/switchyard/dataplane"
	nft "github.com/switchyard/switchyard/nftables"
	"github.com/switchyard/switchyard/sysctl"
	"github.com/switchyard/switchyard/test/netnstest"
)

// The real-kernel topology: a node namespace running the Proxier (and the
// nftables Service dataplane), a client outside and a Pod behind it:
//
//	client 192.168.77.2 --- 192.168.77.1 [node] 10.244.3.1 --- 10.244.3.2 pod
//	       fd00:77::2       192.168.77.3        fd00:10:244::3:1  10.244.3.3 (its "new" IP)
//	                        fd00:77::1                         10.244.3.4 (a Service endpoint)
//	                                                           fd00:10:244::3:2
//
// The Pod namespace runs echo servers: TCP :8080 on the Pod's addresses
// ("pod", "pod-b", "pod6"), UDP :5353 on 10.244.3.2 ("pod-a") and
// 10.244.3.3 ("pod-b"), and TCP 10.244.3.4:9090 ("svc"), the endpoint of a
// NodePort Service.
const (
	nodeIP    = "192.168.77.1"
	nodeIP2   = "192.168.77.3"
	clientIP  = "192.168.77.2"
	nodeOnPod = "10.244.3.1"
	podIPA    = "10.244.3.2"
	podIPB    = "10.244.3.3"
	// svcIP is another address in the Pod's namespace: the Service's
	// endpoint. Not the Pod's IP: the nftables dataplane masquerades an
	// endpoint reaching itself by address alone, which would hide
	// whether hostport's own hairpin rule works.
	svcIP     = "10.244.3.4"
	node6IP   = "fd00:77::1"
	client6IP = "fd00:77::2"
	pod6IP    = "fd00:10:244::3:2"
)

type kernelTopo struct {
	node, client, pod *netnstest.NS
	ipv6              bool
}

func newKernelTopo(t *testing.T) *kernelTopo {
	t.Helper()
	k := &kernelTopo{node: netnstest.New(t, "sy-hp-node"), client: netnstest.New(t, "sy-hp-cli"), pod: netnstest.New(t, "sy-hp-pod")}
	p, a := netip.MustParsePrefix, netip.MustParseAddr
	netnstest.Veth(t, k.node, k.client, "cli0", "eth0", p(nodeIP+"/24"), p(clientIP+"/24"))
	netnstest.AddAddr(t, k.node, "cli0", p(nodeIP2+"/24"))
	netnstest.Veth(t, k.node, k.pod, "pod0", "eth0", p(nodeOnPod+"/24"), p(podIPA+"/24"))
	netnstest.AddAddr(t, k.pod, "eth0", p(podIPB+"/24"))
	netnstest.AddAddr(t, k.pod, "eth0", p(svcIP+"/24"))
	netnstest.AddRoute(t, k.client, p("0.0.0.0/0"), a(nodeIP))
	netnstest.AddRoute(t, k.pod, p("0.0.0.0/0"), a(nodeOnPod))
	sc := sysctl.NewAt(k.node.NsHandle())
	// Hairpin traffic leaves the link it came in on: no ICMP redirects.
	for _, kv := range [][2]string{{"net/ipv4/ip_forward", "1"}, {"net/ipv4/conf/all/send_redirects", "0"}, {"net/ipv4/conf/pod0/send_redirects", "0"}} {
		if err := sc.Set(kv[0], kv[1]); err != nil {
			t.Fatal(err)
		}
	}
	if v, err := sc.Get(sysctlDisableIPv6); err == nil && v == "0" {
		k.ipv6 = true
		netnstest.AddAddr(t, k.node, "cli0", p(node6IP+"/64"))
		netnstest.AddAddr(t, k.client, "eth0", p(client6IP+"/64"))
		netnstest.AddAddr(t, k.node, "pod0", p("fd00:10:244::3:1/112"))
		netnstest.AddAddr(t, k.pod, "eth0", p(pod6IP+"/112"))
		netnstest.AddRoute(t, k.client, p("::/0"), a(node6IP))
		netnstest.AddRoute(t, k.pod, p("::/0"), a("fd00:10:244::3:1"))
		if err := sc.Set("net/ipv6/conf/all/forwarding", "1"); err != nil {
			t.Fatal(err)
		}
		for _, ns := range []*netnstest.NS{k.node, k.client, k.pod} {
			waitDAD(t, ns)
		}
		netnstest.StartEchoServer(t, k.pod, "tcp", net.JoinHostPort(pod6IP, "8080"), "pod6")
	}
	netnstest.StartEchoServer(t, k.pod, "tcp", podIPA+":8080", "pod")
	netnstest.StartEchoServer(t, k.pod, "tcp", podIPB+":8080", "pod-b")
	netnstest.StartEchoServer(t, k.pod, "udp", podIPA+":5353", "pod-a")
	netnstest.StartEchoServer(t, k.pod, "udp", podIPB+":5353", "pod-b")
	netnstest.StartEchoServer(t, k.pod, "tcp", svcIP+":9090", "svc")
	return k
}

// waitDAD waits (at most 10s) until no IPv6 address in ns is tentative: the
// veths' link-local addresses do duplicate address detection, and until it
// ends the first forwarded packet waits for neighbour discovery.
func waitDAD(t *testing.T, ns *netnstest.NS) {
	t.Helper()
	for range 200 {
		list, err := ns.Handle().AddrList(nil, netlink.FAMILY_V6)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(list, func(a netlink.Addr) bool { return a.Flags&unix.IFA_F_TENTATIVE != 0 }) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: IPv6 addresses still tentative", ns.Name())
}

// ask sends one request and returns who answered and the source it saw.
func ask(t *testing.T, from *netnstest.NS, proto, addr string) (id, seen string) {
	t.Helper()
	reply, err := netnstest.Request(from, proto, addr, "hello", 3*time.Second)
	if err != nil {
		t.Fatalf("%s %s from %s: %v", proto, addr, from.Name(), err)
	}
	return parseReply(t, reply)
}

func parseReply(t *testing.T, reply string) (id, seen string) {
	t.Helper()
	id, remote, err := netnstest.ReplyID(reply)
	if err != nil {
		t.Fatal(err)
	}
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		t.Fatalf("reply %q: %v", reply, err)
	}
	return id, ap.Addr().String()
}

func expect(t *testing.T, from *netnstest.NS, proto, addr, wantID, wantSeen string) {
	t.Helper()
	id, seen := ask(t, from, proto, addr)
	if id != wantID || (wantSeen != "" && seen != wantSeen) {
		t.Errorf("%s %s from %s: %s answered, seeing %s; want %s seeing %s", proto, addr, from.Name(), id, seen, wantID, wantSeen)
	}
}

// refused checks that a TCP connection is refused by the node itself
// (nothing maps or listens there).
func refused(t *testing.T, from *netnstest.NS, addr string) {
	t.Helper()
	if reply, err := netnstest.Request(from, "tcp", addr, "hello", 3*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("tcp %s: got %q, %v; want connection refused", addr, reply, err)
	}
}

// exchange sends on an open UDP socket (a fixed 5-tuple) and returns the
// answer's id, or the error.
func exchange(t *testing.T, c net.Conn) (string, error) {
	t.Helper()
	reply, err := netnstest.Exchange(c, "hello", 3*time.Second)
	if err != nil {
		return "", err
	}
	id, _ := parseReply(t, reply)
	return id, nil
}

// selectiveCT clears flows through the real conntrack table, except those
// of the hostPorts in skip: they show what happens without the clearing.
type selectiveCT struct {
	conntrack.Interface
	skip map[uint16]bool
}

func (s *selectiveCT) ClearFlows(filters []conntrack.Filter) (int, error) {
	var pass []conntrack.Filter
	for _, f := range filters {
		if !s.skip[f.OrigDstPort] {
			pass = append(pass, f)
		}
	}
	if len(pass) == 0 {
		return 0, nil
	}
	return s.Interface.ClearFlows(pass)
}

// countingConn counts the transactions sent through it.
type countingConn struct {
	Conn
	mu      sync.Mutex
	queued  int
	flushes int
}

func (c *countingConn) add() { c.mu.Lock(); c.queued++; c.mu.Unlock() }
func (c *countingConn) AddTable(t *nftables.Table) *nftables.Table {
	c.add()
	return c.Conn.AddTable(t)
}
func (c *countingConn) DelTable(t *nftables.Table) { c.add(); c.Conn.DelTable(t) }
func (c *countingConn) AddChain(ch *nftables.Chain) *nftables.Chain {
	c.add()
	return c.Conn.AddChain(ch)
}
func (c *countingConn) FlushChain(ch *nftables.Chain)           { c.add(); c.Conn.FlushChain(ch) }
func (c *countingConn) AddRule(r *nftables.Rule) *nftables.Rule { c.add(); return c.Conn.AddRule(r) }
func (c *countingConn) AddSet(s *nftables.Set, v []nftables.SetElement) error {
	c.add()
	return c.Conn.AddSet(s, v)
}
func (c *countingConn) SetAddElements(s *nftables.Set, v []nftables.SetElement) error {
	c.add()
	return c.Conn.SetAddElements(s, v)
}
func (c *countingConn) SetDeleteElements(s *nftables.Set, v []nftables.SetElement) error {
	c.add()
	return c.Conn.SetDeleteElements(s, v)
}
func (c *countingConn) Flush() error {
	c.mu.Lock()
	if c.queued > 0 {
		c.flushes++
	}
	c.queued = 0
	c.mu.Unlock()
	return c.Conn.Flush()
}

// take returns the transactions with writes since the last take.
func (c *countingConn) take() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.flushes
	c.flushes = 0
	return n
}

// kernelProxier is a Proxier on the node namespace, on a counting
// connection of its own (a new agent process, as far as the kernel is
// concerned).
type kernelProxier struct {
	*Proxier
	cnt *countingConn

	mu      sync.Mutex
	reports []Problems
}

func newKernelProxier(t *testing.T, k *kernelTopo, ct conntrack.Interface) *kernelProxier {
	t.Helper()
	conn, err := NewConn(int(k.node.NsHandle()))
	if err != nil {
		t.Fatal(err)
	}
	kp := &kernelProxier{cnt: &countingConn{Conn: conn}}
	kp.Proxier, err = NewProxier(Config{Conn: kp.cnt, Conntrack: ct, Sysctl: sysctl.NewAt(k.node.NsHandle()),
		Report: func(p Problems) { kp.mu.Lock(); kp.reports = append(kp.reports, p); kp.mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

func (kp *kernelProxier) mustSync(t *testing.T, st *dataplane.State, c dataplane.Changes) {
	t.Helper()
	if err := kp.Sync(context.Background(), st, c); err != nil {
		t.Fatalf("hostport sync (full=%v): %v", c.Full, err)
	}
}

// TestKernelHostPorts sends real packets through hostPorts programmed in a
// node namespace, next to the nftables Service dataplane.
func TestKernelHostPorts(t *testing.T) {
	requireKernel(t)
	k := newKernelTopo(t)
	ctNetlink, err := conntrack.NewNetlink(k.node.NsHandle())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ctNetlink.Close)

	// The Service dataplane, with a NodePort on 30080.
	svcConn, err := nft.NewConn(int(k.node.NsHandle()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svcConn.Close() })
	services, err := nft.NewProxier(nft.Config{}, svcConn, sysctl.NewAt(k.node.NsHandle()))
	if err != nil {
		t.Fatal(err)
	}
	st := dataplane.NewState()
	st.NodeName = testNode
	web := dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: "default", Name: "web"}, Protocol: dataplane.TCP}
	st.Services[web] = &dataplane.ServicePort{Name: web, Port: 80, NodePort: 30080, ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")}}
	st.Endpoints[web] = []dataplane.Endpoint{{Addr: netip.MustParseAddrPort(svcIP + ":9090"), Ready: true, Serving: true, NodeName: testNode}}
	if err := services.Sync(context.Background(), st, full); err != nil {
		t.Fatal(err)
	}
	expect(t, k.client, "tcp", nodeIP+":30080", "svc", "")

	// UDP hostPorts 15353 and 15356 get no conntrack clearing, to show
	// what it prevents; 15354 and 15355 get it.
	kp := newKernelProxier(t, k, &selectiveCT{Interface: ctNetlink, skip: map[uint16]bool{15353: true, 15356: true}})
	ips := []string{podIPA}
	if k.ipv6 {
		ips = append(ips, pod6IP)
	}
	ports := []podOpt{
		port("web", v1.ProtocolTCP, "", 18080, 8080),
		port("web", v1.ProtocolTCP, nodeIP2, 8081, 8080),
		port("web", v1.ProtocolTCP, "", 30080, 8080),
		port("dns", v1.ProtocolUDP, "", 15353, 5353),
		port("dns", v1.ProtocolUDP, "", 15354, 5353),
		// SCTP: this host kernel has no SCTP, so these are checked as
		// rules only (see the SCTP subtest).
		port("sctp", v1.ProtocolSCTP, "", 9999, 9),
	}
	ipsB := append([]string{podIPB}, ips[1:]...) // the Pod's IPs after a sandbox restart
	pod := newPod("web", ips, ports...)
	kp.OnPodUpsert(pod)
	kp.SetPodsSynced()
	kp.mustSync(t, st, partial)

	t.Run("a client reaches the Pod through the node's address and keeps its own", func(t *testing.T) {
		expect(t, k.client, "tcp", nodeIP+":18080", "pod", clientIP)
		expect(t, k.client, "tcp", nodeIP2+":18080", "pod", clientIP)
	})
	t.Run("IPv6", func(t *testing.T) {
		if !k.ipv6 {
			t.Skip("the node namespace has no IPv6")
		}
		expect(t, k.client, "tcp", net.JoinHostPort(node6IP, "18080"), "pod6", client6IP)
	})
	t.Run("the node reaches its own hostPort", func(t *testing.T) {
		expect(t, k.node, "tcp", nodeIP+":18080", "pod", nodeIP)
		expect(t, k.node, "tcp", nodeOnPod+":18080", "pod", nodeOnPod)
	})
	t.Run("loopback is not a hostPort address", func(t *testing.T) {
		refused(t, k.node, "127.0.0.1:18080")
	})
	t.Run("a hostIP port answers on that address only", func(t *testing.T) {
		expect(t, k.client, "tcp", nodeIP2+":8081", "pod", clientIP)
		refused(t, k.client, nodeIP+":8081")
	})
	t.Run("hairpin: the Pod reaches itself through its hostPort, masqueraded", func(t *testing.T) {
		expect(t, k.pod, "tcp", nodeIP+":18080", "pod", nodeOnPod)
	})
	t.Run("the hostPort wins over a NodePort on the same port", func(t *testing.T) {
		expect(t, k.client, "tcp", nodeIP+":30080", "pod", clientIP)
		kp.mu.Lock()
		defer kp.mu.Unlock()
		// One collision per family the Pod has an address of.
		n := len(kp.reports)
		if n == 0 || len(kp.reports[n-1].Collisions) != len(ips) ||
			slices.ContainsFunc(kp.reports[n-1].Collisions, func(c Collision) bool { return c.Service != web }) {
			t.Errorf("reports %v, want the collision with %s in each family", kp.reports, web)
		}
	})
	t.Run("SCTP rules, read back", func(t *testing.T) {
		d, err := DumpTables(kp.cnt.Conn)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"sctp . 9999 : " + podIPA + " . 9", podIPA + " . " + podIPA + " . sctp . 9"}
		if k.ipv6 {
			want = append(want, "sctp . 9999 : "+pod6IP+" . 9")
		}
		for _, w := range want {
			if !strings.Contains(d, "\t\t"+w+"\n") {
				t.Errorf("no %q in\n%s", w, d)
			}
		}
	})
	t.Run("UDP: after the Pod IP changes, its flows go to the new address", func(t *testing.T) {
		stuck, err := netnstest.Dial(k.client, "udp", nodeIP+":15353", 3*time.Second) // not cleared
		if err != nil {
			t.Fatal(err)
		}
		defer stuck.Close()
		moved, err := netnstest.Dial(k.client, "udp", nodeIP+":15354", 3*time.Second) // cleared
		if err != nil {
			t.Fatal(err)
		}
		defer moved.Close()
		for _, c := range []net.Conn{stuck, moved} {
			if id, err := exchange(t, c); id != "pod-a" || err != nil {
				t.Fatalf("before the change: %q, %v", id, err)
			}
		}
		pod = newPod("web", ipsB, ports...)
		kp.OnPodUpsert(pod)
		kp.mustSync(t, st, partial)
		if id, err := exchange(t, moved); id != "pod-b" || err != nil {
			t.Errorf("same 5-tuple, flows cleared: %q, %v; want pod-b", id, err)
		}
		if id, err := exchange(t, stuck); id != "pod-a" || err != nil {
			t.Errorf("same 5-tuple, flows not cleared: %q, %v; want pod-a (the stale flow the clearing prevents)", id, err)
		}
		expect(t, k.client, "udp", nodeIP+":15353", "pod-b", clientIP) // a new flow is fine either way
		flows, err := ctNetlink.ListFlows()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range flows {
			if f.Orig.Dst.Port() == 15354 && f.Reply.Src.Addr().String() == podIPA {
				t.Errorf("flow to the old Pod IP left: %s", f)
			}
		}
	})
	t.Run("UDP: flows that started before the mapping existed", func(t *testing.T) {
		var conns []net.Conn
		for _, p := range []string{"15355", "15356"} {
			c, err := netnstest.Dial(k.client, "udp", nodeIP+":"+p, 3*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			// Nothing there yet: the node answers port unreachable, and
			// conntrack remembers the flow as not NATed.
			if id, err := exchange(t, c); !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("udp %s before the mapping: %q, %v; want refused", p, id, err)
			}
			conns = append(conns, c)
		}
		pod = newPod("web", ipsB, append(ports, port("dns", v1.ProtocolUDP, "", 15355, 5353), port("dns", v1.ProtocolUDP, "", 15356, 5353))...)
		kp.OnPodUpsert(pod)
		kp.mustSync(t, st, partial)
		if id, err := exchange(t, conns[0]); id != "pod-b" || err != nil {
			t.Errorf("flows cleared: %q, %v; want pod-b", id, err)
		}
		if id, err := exchange(t, conns[1]); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("flows not cleared: %q, %v; want still refused (the classic portmap bug)", id, err)
		}
	})
	t.Run("the Pod's mappings go when it is deleted", func(t *testing.T) {
		kp.OnPodDelete("default", "web")
		kp.mustSync(t, st, partial)
		refused(t, k.client, nodeIP+":18080")
		expect(t, k.client, "tcp", nodeIP+":30080", "svc", "") // the NodePort is back
	})
	t.Run("a restart adopts the tables without writing", func(t *testing.T) {
		kp.OnPodUpsert(pod)
		kp.mustSync(t, st, partial)
		expect(t, k.client, "tcp", nodeIP+":18080", "pod-b", clientIP)
		established, err := netnstest.Dial(k.client, "tcp", nodeIP+":18080", 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer established.Close()
		if r, err := netnstest.Exchange(established, "one", 3*time.Second); err != nil || !strings.HasPrefix(r, "pod-b ") {
			t.Fatalf("established connection: %q, %v", r, err)
		}

		kp2 := newKernelProxier(t, k, ctNetlink)
		kp2.mustSync(t, st, full) // before any Pod arrives
		if n := kp2.cnt.take(); n != 0 {
			t.Errorf("restarted Proxier without Pods wrote %d transactions", n)
		}
		expect(t, k.client, "tcp", nodeIP+":18080", "pod-b", clientIP)
		kp2.OnPodUpsert(pod)
		kp2.SetPodsSynced()
		kp2.mustSync(t, st, partial)
		if n := kp2.cnt.take(); n != 0 {
			t.Errorf("restarted Proxier with the same Pods wrote %d transactions", n)
		}
		if r, err := netnstest.Exchange(established, "two", 3*time.Second); err != nil || !strings.HasPrefix(r, "pod-b ") {
			t.Errorf("established connection after the restart: %q, %v", r, err)
		}
		kp = kp2
	})
	t.Run("a deleted table is back on the next sync", func(t *testing.T) {
		c := kp.cnt.Conn
		c.DelTable(ipv4.tableRef())
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
		refused(t, k.client, nodeIP+":18080")
		kp.mustSync(t, st, partial)
		expect(t, k.client, "tcp", nodeIP+":18080", "pod-b", clientIP)
	})
	t.Run("cleanup leaves nothing of hostport's, and the Services alone", func(t *testing.T) {
		if err := kp.Cleanup(context.Background()); err != nil {
			t.Fatal(err)
		}
		if d, err := DumpTables(kp.cnt.Conn); err != nil || d != "" {
			t.Errorf("after cleanup: %q, %v", d, err)
		}
		for _, f := range allFamilies {
			tables, err := kp.cnt.Conn.ListTablesOfFamily(f.table)
			if err != nil {
				t.Fatal(err)
			}
			for _, tb := range tables {
				if tb.Name == TableName {
					t.Errorf("%s %s left", f.name, tb.Name)
				}
			}
			if f == ipv4 && !slices.ContainsFunc(tables, func(tb *nftables.Table) bool { return tb.Name == "switchyard" }) {
				t.Error("the Service dataplane's table is gone")
			}
		}
		refused(t, k.client, nodeIP+":18080")
		expect(t, k.client, "tcp", nodeIP+":30080", "svc", "")
	})
}
