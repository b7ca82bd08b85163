package nftables

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/sysctl"
	"github.com/switchyard/switchyard/test/netnstest"
)

// trafficTopology is a node namespace running the Proxier and four
// neighbours, each in its own namespace:
//
//	client 192.168.77.2 --- 192.168.77.1 [node] 10.244.1.1 --- 10.244.1.2 be1 (tcp :8080, udp :5353)
//	                                     [node] 10.244.2.1 --- 10.244.2.2 be2 (tcp :8080)
//	                                     [node] 10.244.3.1 --- 10.244.3.2 pod (a client inside the cluster CIDR)
//
// The cluster CIDR is 10.244.0.0/16; the client is outside it. Every
// namespace routes by default through the node, the node through the
// client.
type trafficTopology struct {
	node, client, be1, be2, pod *netnstest.NS
	k                           *kernelNS
}

const (
	nodeAddr    = "192.168.77.1"
	be1Addr     = "10.244.1.2"
	be2Addr     = "10.244.2.2"
	podAddr     = "10.244.3.2"
	nodeOnBe1   = "10.244.1.1"
	nodeOnBe2   = "10.244.2.1"
	webIP       = "10.96.0.10"
	webNodePort = "30080"
	webExtIP    = "203.0.113.10"
	webLBIP     = "198.51.100.10"
	dnsIP       = "10.96.0.53"
	hairpinIP   = "10.96.0.20"
	emptyIP     = "10.96.0.99"
	emptyUDPIP  = "10.96.0.98"
)

func newTrafficTopology(t *testing.T) *trafficTopology {
	t.Helper()
	topo := &trafficTopology{
		client: netnstest.New(t, "sy-nft-cli"), be1: netnstest.New(t, "sy-nft-be1"),
		be2: netnstest.New(t, "sy-nft-be2"), pod: netnstest.New(t, "sy-nft-pod"),
	}
	topo.k = newKernelNS(t, "sy-nft-node")
	topo.node = topo.k.ns
	p := netip.MustParsePrefix
	a := netip.MustParseAddr
	netnstest.Veth(t, topo.node, topo.client, "cli0", "eth0", p(nodeAddr+"/24"), p("192.168.77.2/24"))
	netnstest.Veth(t, topo.node, topo.be1, "be1", "eth0", p(nodeOnBe1+"/24"), p(be1Addr+"/24"))
	netnstest.Veth(t, topo.node, topo.be2, "be2", "eth0", p(nodeOnBe2+"/24"), p(be2Addr+"/24"))
	netnstest.Veth(t, topo.node, topo.pod, "pod0", "eth0", p("10.244.3.1/24"), p(podAddr+"/24"))
	def := p("0.0.0.0/0")
	netnstest.AddRoute(t, topo.client, def, a(nodeAddr))
	netnstest.AddRoute(t, topo.be1, def, a(nodeOnBe1))
	netnstest.AddRoute(t, topo.be2, def, a(nodeOnBe2))
	netnstest.AddRoute(t, topo.pod, def, a("10.244.3.1"))
	// Like a real node, the node has a default route (here towards the
	// client, which does not forward): packets to a Service IP nobody
	// translated are forwarded, not refused by routing, so only our reject
	// rule can make a connection fail fast.
	netnstest.AddRoute(t, topo.node, def, a("192.168.77.2"))
	sc := sysctl.NewAt(topo.node.NsHandle())
	for _, name := range []string{"net/ipv4/ip_forward"} {
		if err := sc.Set(name, "1"); err != nil {
			t.Fatal(err)
		}
	}
	// Hairpin traffic leaves the link it came in on; no ICMP redirects
	// the backend might act on.
	for _, link := range []string{"all", "be1", "be2", "cli0", "pod0"} {
		if err := sc.Set("net/ipv4/conf/"+link+"/send_redirects", "0"); err != nil {
			t.Fatal(err)
		}
	}
	netnstest.StartEchoServer(t, topo.be1, "tcp", be1Addr+":8080", "be1")
	netnstest.StartEchoServer(t, topo.be1, "udp", be1Addr+":5353", "be1-udp")
	netnstest.StartEchoServer(t, topo.be2, "tcp", be2Addr+":8080", "be2")
	return topo
}

func trafficServices() (web, dns, hairpin, empty, emptyUDP svc) {
	web = svc{ns: "default", name: "web", port: "http", proto: dataplane.TCP, svcPort: 80, nodePort: 30080,
		clusterIPs: []string{webIP}, externalIPs: []string{webExtIP}, lbIPs: []string{webLBIP},
		endpoints: []string{be1Addr + ":8080", be2Addr + ":8080"}}
	dns = svc{ns: "kube-system", name: "dns", port: "dns", proto: dataplane.UDP, svcPort: 53,
		clusterIPs: []string{dnsIP}, endpoints: []string{be1Addr + ":5353"}}
	hairpin = svc{ns: "default", name: "one", proto: dataplane.TCP, svcPort: 80,
		clusterIPs: []string{hairpinIP}, endpoints: []string{be1Addr + ":8080"}}
	empty = svc{ns: "default", name: "empty", proto: dataplane.TCP, svcPort: 80, nodePort: 30099, clusterIPs: []string{emptyIP}}
	emptyUDP = svc{ns: "default", name: "empty-udp", proto: dataplane.UDP, svcPort: 53, clusterIPs: []string{emptyUDPIP}}
	return
}

// ask sends one request and returns the backend's id and the source
// address it saw.
func ask(t *testing.T, from *netnstest.NS, proto, addr string) (id, seen string) {
	t.Helper()
	reply, err := netnstest.Request(from, proto, addr, "hello", 3*time.Second)
	if err != nil {
		t.Fatalf("%s %s from %s: %v", proto, addr, from.Name(), err)
	}
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

// reachAll asks until every id in want answered (at most 60 requests) and
// returns the sources each id saw.
func reachAll(t *testing.T, from *netnstest.NS, proto, addr string, want ...string) map[string]string {
	t.Helper()
	seen := map[string]string{}
	for range 60 {
		id, src := ask(t, from, proto, addr)
		if !containsStr(want, id) {
			t.Fatalf("%s answered %s, want one of %v", id, addr, want)
		}
		seen[id] = src
		if len(seen) == len(want) {
			return seen
		}
	}
	t.Fatalf("%s from %s: only %v answered in 60 requests, want %v", addr, from.Name(), seen, want)
	return nil
}

func containsStr(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// refused checks that a request is rejected (a TCP reset or an ICMP port
// unreachable), not left to time out: without the reject rule the node
// forwards the packet to its default route and the request times out.
func refused(t *testing.T, from *netnstest.NS, proto, addr string) {
	t.Helper()
	_, err := netnstest.Request(from, proto, addr, "hello", 3*time.Second)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("%s %s: got %v, want connection refused", proto, addr, err)
	}
}

// fails checks that a request gets no answer.
func fails(t *testing.T, from *netnstest.NS, proto, addr string) {
	t.Helper()
	if reply, err := netnstest.Request(from, proto, addr, "hello", time.Second); err == nil {
		t.Fatalf("%s %s answered %q, want no answer", proto, addr, reply)
	}
}

// TestKernelTraffic sends real packets through a node namespace programmed
// by the Proxier.
func TestKernelTraffic(t *testing.T) {
	requireKernel(t)
	topo := newTrafficTopology(t)
	addForeignTable(t, topo.k.conn)
	cfg := Config{ClusterCIDRs: clusterCIDR, ConntrackDropInvalid: true, ConntrackTCPBeLiberal: true}
	p := topo.k.proxier(t, cfg)
	web, dns, hairpin, empty, emptyUDP := trafficServices()
	st := newState(web, dns, hairpin, empty, emptyUDP)
	mustSync(t, p, st, full)
	webAddr, bothBackends := webIP+":80", []string{"be1", "be2"}
	nodeSource := map[string]string{"be1": nodeOnBe1, "be2": nodeOnBe2}

	t.Run("cluster IP from outside the cluster CIDR reaches every endpoint, masqueraded", func(t *testing.T) {
		for id, src := range reachAll(t, topo.client, "tcp", webAddr, bothBackends...) {
			if src != nodeSource[id] {
				t.Errorf("%s saw %s, want the node's %s", id, src, nodeSource[id])
			}
		}
	})
	t.Run("cluster IP from a pod keeps the pod address", func(t *testing.T) {
		for id, src := range reachAll(t, topo.pod, "tcp", webAddr, bothBackends...) {
			if src != podAddr {
				t.Errorf("%s saw %s, want the pod's %s", id, src, podAddr)
			}
		}
	})
	t.Run("node port, load balancer and external IPs, masqueraded", func(t *testing.T) {
		for _, addr := range []string{nodeAddr + ":" + webNodePort, webLBIP + ":80", webExtIP + ":80"} {
			for id, src := range reachAll(t, topo.client, "tcp", addr, bothBackends...) {
				if src != nodeSource[id] {
					t.Errorf("%s via %s saw %s, want the node's %s", id, addr, src, nodeSource[id])
				}
			}
		}
		// From a pod too: external traffic is always masqueraded.
		if id, src := ask(t, topo.pod, "tcp", webLBIP+":80"); src != nodeSource[id] {
			t.Errorf("pod via load balancer IP: %s saw %s, want %s", id, src, nodeSource[id])
		}
	})
	t.Run("UDP service", func(t *testing.T) {
		if id, _ := ask(t, topo.client, "udp", dnsIP+":53"); id != "be1-udp" {
			t.Errorf("UDP reply from %s", id)
		}
	})
	t.Run("hairpin is masqueraded", func(t *testing.T) {
		if id, src := ask(t, topo.be1, "tcp", hairpinIP+":80"); id != "be1" || src != nodeOnBe1 {
			t.Errorf("be1 reaching itself: %s saw %s, want be1 seeing %s", id, src, nodeOnBe1)
		}
		// be1 reaching be2 through web is not hairpin: be2 sees be1.
		for range 60 {
			if id, src := ask(t, topo.be1, "tcp", webAddr); id == "be2" {
				if src != be1Addr {
					t.Errorf("be2 saw %s from be1, want %s", src, be1Addr)
				}
				break
			}
		}
	})
	t.Run("services without endpoints reject", func(t *testing.T) {
		refused(t, topo.client, "tcp", emptyIP+":80")
		refused(t, topo.pod, "tcp", emptyIP+":80")
		refused(t, topo.client, "udp", emptyUDPIP+":53")
		refused(t, topo.client, "tcp", nodeAddr+":30099")
	})
	t.Run("endpoint removed and added back", func(t *testing.T) {
		web.endpoints = []string{be1Addr + ":8080"}
		putService(st, web)
		mustSync(t, p, st, changed(web.portName().ServiceName))
		for range 20 {
			if id, _ := ask(t, topo.client, "tcp", webAddr); id != "be1" {
				t.Fatalf("removed endpoint %s still answers", id)
			}
		}
		web.endpoints = []string{be1Addr + ":8080", be2Addr + ":8080"}
		putService(st, web)
		mustSync(t, p, st, changed(web.portName().ServiceName))
		reachAll(t, topo.client, "tcp", webAddr, bothBackends...)
	})
	t.Run("last endpoint removed: rejected; back: served", func(t *testing.T) {
		hairpin.endpoints = nil
		putService(st, hairpin)
		mustSync(t, p, st, changed(hairpin.portName().ServiceName))
		refused(t, topo.client, "tcp", hairpinIP+":80")
		hairpin.endpoints = []string{be1Addr + ":8080"}
		putService(st, hairpin)
		mustSync(t, p, st, changed(hairpin.portName().ServiceName))
		reachAll(t, topo.client, "tcp", hairpinIP+":80", "be1")
	})
	t.Run("full sync restores a deleted chain and map element", func(t *testing.T) {
		table := ipv4.tableRef()
		c := topo.k.conn
		mustDelElem(t, c, mapServiceIPs, frontend{addr: netip.MustParseAddr(hairpinIP), proto: protoTCP, port: 80}.key())
		c.DelChain(&nftables.Chain{Table: table, Name: servicePortChain(hairpin.portName())})
		mustDelElem(t, c, mapServiceIPs, frontend{addr: netip.MustParseAddr(webLBIP), proto: protoTCP, port: 80}.key())
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
		fails(t, topo.client, "tcp", hairpinIP+":80")
		fails(t, topo.client, "tcp", webLBIP+":80")
		mustSync(t, p, st, full)
		reachAll(t, topo.client, "tcp", hairpinIP+":80", "be1")
		reachAll(t, topo.client, "tcp", webLBIP+":80", bothBackends...)
	})
	t.Run("restart adopts the table; an established connection survives", func(t *testing.T) {
		conn, err := netnstest.Dial(topo.client, "tcp", webAddr, 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		first, err := netnstest.Exchange(conn, "one", 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		// A new process: new socket, new Proxier, first sync is full.
		k2 := &kernelNS{ns: topo.node, conn: openConn(t, topo.node)}
		p2 := k2.proxier(t, cfg)
		mustSync(t, p2, st, full)
		if msgs, flushes := k2.cnt.take(); flushes != 0 {
			t.Errorf("restarted Proxier sent %d messages to a matching table", msgs)
		}
		for i := range 3 {
			again, err := netnstest.Exchange(conn, "again", 3*time.Second)
			if err != nil || again != first {
				t.Fatalf("exchange %d on the established connection: %q, %v; want %q", i, again, err, first)
			}
		}
		// The new Proxier keeps working incrementally.
		web.endpoints = []string{be2Addr + ":8080"}
		putService(st, web)
		mustSync(t, p2, st, changed(web.portName().ServiceName))
		reachAll(t, topo.client, "tcp", webAddr, "be2")
		p = p2
	})
	t.Run("be_liberal set", func(t *testing.T) {
		if v, err := sysctl.NewAt(topo.node.NsHandle()).Get(sysctlTCPBeLiberal); err != nil || v != "1" {
			t.Errorf("be_liberal = %q, %v", v, err)
		}
	})
	t.Run("cleanup removes only switchyard's table", func(t *testing.T) {
		if err := p.Cleanup(context.Background()); err != nil {
			t.Fatal(err)
		}
		if d := topo.k.dump(t); d != "" {
			t.Errorf("table left:\n%s", d)
		}
		if foreignRules(t, topo.k.conn) != 1 {
			t.Error("foreign table damaged")
		}
		fails(t, topo.client, "tcp", webAddr)
		if d, err := DumpTable(topo.k.conn); err != nil || strings.Contains(d, tableName) {
			t.Errorf("dump after cleanup: %q, %v", d, err)
		}
	})
}
