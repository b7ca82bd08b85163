package nftables

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/sysctl"
	"github.com/switchyard/switchyard/test/netnstest"
)

// The IPv6 side of the traffic topology (trafficTopology, made dual-stack
// by addIPv6): ULA addresses (added with IFA_F_NODAD by netnstest), the
// cluster CIDR fd00:10:244::/64 split into one /112 per link.
//
//	client fd00:77::2 --- fd00:77::1 [node] fd00:10:244::1:1 --- fd00:10:244::1:2 be1 (tcp :8080 "be1-v6", udp :5353)
//	                                 [node] fd00:10:244::2:1 --- fd00:10:244::2:2 be2 (tcp :8080 "be2-v6")
//	                                 [node] fd00:10:244::3:1 --- fd00:10:244::3:2 pod
const (
	node6Addr    = "fd00:77::1"
	client6Addr  = "fd00:77::2"
	be16Addr     = "fd00:10:244::1:2"
	be26Addr     = "fd00:10:244::2:2"
	pod6Addr     = "fd00:10:244::3:2"
	nodeOnBe16   = "fd00:10:244::1:1"
	nodeOnBe26   = "fd00:10:244::2:1"
	web6IP       = "fd00:10:96::10"
	web6ExtIP    = "fd00:203::10"
	web6LBIP     = "fd00:198::10"
	dns6IP       = "fd00:10:96::53"
	hairpin6IP   = "fd00:10:96::20"
	empty6IP     = "fd00:10:96::99"
	emptyUDP6IP  = "fd00:10:96::98"
	dualV4IP     = "10.96.0.30"
	dualV6IP     = "fd00:10:96::30"
	dualNodePort = 30030
)

var clusterCIDRsDual = prefixes("10.244.0.0/16", "fd00:10:244::/64")

// hostPort joins an address and a port, bracketing IPv6 addresses.
func hostPort(addr string, port uint16) string { return net.JoinHostPort(addr, itoa(int(port))) }

// addIPv6 makes the topology dual-stack: IPv6 addresses on every veth,
// default routes through the node (the node's towards the client, which
// does not forward), forwarding in the node, IPv6 echo servers on the
// backends.
func (topo *trafficTopology) addIPv6(t *testing.T) {
	t.Helper()
	p := netip.MustParsePrefix
	a := netip.MustParseAddr
	for _, l := range []struct {
		nodeLink, nodeAddr string
		peer               *netnstest.NS
		peerAddr           string
	}{
		{"cli0", node6Addr + "/64", topo.client, client6Addr + "/64"},
		{"be1", nodeOnBe16 + "/112", topo.be1, be16Addr + "/112"},
		{"be2", nodeOnBe26 + "/112", topo.be2, be26Addr + "/112"},
		{"pod0", "fd00:10:244::3:1/112", topo.pod, pod6Addr + "/112"},
	} {
		netnstest.AddAddr(t, topo.node, l.nodeLink, p(l.nodeAddr))
		netnstest.AddAddr(t, l.peer, "eth0", p(l.peerAddr))
	}
	def := p("::/0")
	netnstest.AddRoute(t, topo.client, def, a(node6Addr))
	netnstest.AddRoute(t, topo.be1, def, a(nodeOnBe16))
	netnstest.AddRoute(t, topo.be2, def, a(nodeOnBe26))
	netnstest.AddRoute(t, topo.pod, def, a("fd00:10:244::3:1"))
	netnstest.AddRoute(t, topo.node, def, a(client6Addr))
	if err := sysctl.NewAt(topo.node.NsHandle()).Set("net/ipv6/conf/all/forwarding", "1"); err != nil {
		t.Fatal(err)
	}
	// Hairpin traffic leaves the link it came in on, which makes the node
	// send redirects; the backends ignore them.
	for _, ns := range []*netnstest.NS{topo.be1, topo.be2} {
		if err := sysctl.NewAt(ns.NsHandle()).Set("net/ipv6/conf/all/accept_redirects", "0"); err != nil {
			t.Fatal(err)
		}
	}
	// The veths' link-local addresses were added without IFA_F_NODAD:
	// until their DAD ends, a forwarded packet's neighbour solicitation
	// (sent from a link-local address) waits, and the first unmasqueraded
	// connection takes a retransmission.
	for _, ns := range []*netnstest.NS{topo.node, topo.client, topo.be1, topo.be2, topo.pod} {
		waitDAD(t, ns)
	}
	netnstest.StartEchoServer(t, topo.be1, "tcp", hostPort(be16Addr, 8080), "be1-v6")
	netnstest.StartEchoServer(t, topo.be1, "udp", hostPort(be16Addr, 5353), "be1-v6-udp")
	netnstest.StartEchoServer(t, topo.be2, "tcp", hostPort(be26Addr, 8080), "be2-v6")
}

// waitDAD waits until no IPv6 address in ns is tentative.
func waitDAD(t *testing.T, ns *netnstest.NS) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		list, err := ns.Handle().AddrList(nil, netlink.FAMILY_V6)
		if err != nil {
			t.Fatal(err)
		}
		tentative := ""
		for _, a := range list {
			if a.Flags&unix.IFA_F_TENTATIVE != 0 {
				tentative = a.IPNet.String()
			}
		}
		if tentative == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s still tentative", ns.Name(), tentative)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func trafficServices6() (web, dns, hairpin, empty, emptyUDP, dual svc) {
	web = svc{ns: "default", name: "web6", port: "http", proto: dataplane.TCP, svcPort: 80, nodePort: 30080,
		clusterIPs: []string{web6IP}, externalIPs: []string{web6ExtIP}, lbIPs: []string{web6LBIP},
		endpoints: []string{hostPort(be16Addr, 8080), hostPort(be26Addr, 8080)}}
	dns = svc{ns: "kube-system", name: "dns6", port: "dns", proto: dataplane.UDP, svcPort: 53,
		clusterIPs: []string{dns6IP}, endpoints: []string{hostPort(be16Addr, 5353)}}
	hairpin = svc{ns: "default", name: "one6", proto: dataplane.TCP, svcPort: 80,
		clusterIPs: []string{hairpin6IP}, endpoints: []string{hostPort(be16Addr, 8080)}}
	empty = svc{ns: "default", name: "empty6", proto: dataplane.TCP, svcPort: 80, nodePort: 30099, clusterIPs: []string{empty6IP}}
	emptyUDP = svc{ns: "default", name: "empty6-udp", proto: dataplane.UDP, svcPort: 53, clusterIPs: []string{emptyUDP6IP}}
	// Dual-stack: one cluster IP and one endpoint pair per family.
	dual = svc{ns: "default", name: "dual", proto: dataplane.TCP, svcPort: 80, nodePort: dualNodePort,
		clusterIPs: []string{dualV4IP, dualV6IP},
		endpoints:  []string{be1Addr + ":8080", be2Addr + ":8080", hostPort(be16Addr, 8080), hostPort(be26Addr, 8080)}}
	return
}

// TestKernelTrafficIPv6 sends real IPv6 (and, for the dual-stack Service,
// IPv4) packets through a node namespace programmed by the Proxier.
func TestKernelTrafficIPv6(t *testing.T) {
	requireKernel(t)
	topo := newTrafficTopology(t)
	topo.addIPv6(t)
	cfg := Config{ClusterCIDRs: clusterCIDRsDual, ConntrackDropInvalid: true}
	p := topo.k.proxier(t, cfg)
	web, dns, hairpin, empty, emptyUDP, dual := trafficServices6()
	st := newState(web, dns, hairpin, empty, emptyUDP, dual)
	mustSync(t, p, st, full)
	if d := topo.k.dump(t); !strings.Contains(d, "table ip switchyard\n") || !strings.Contains(d, "table ip6 switchyard\n") {
		t.Fatalf("want both tables, got:\n%s", d)
	}
	webAddr, both := hostPort(web6IP, 80), []string{"be1-v6", "be2-v6"}
	nodeSource := map[string]string{"be1-v6": nodeOnBe16, "be2-v6": nodeOnBe26}

	t.Run("cluster IP from outside the cluster CIDR reaches both IPv6 endpoints, masqueraded", func(t *testing.T) {
		for id, src := range reachAll(t, topo.client, "tcp", webAddr, both...) {
			if src != nodeSource[id] {
				t.Errorf("%s saw %s, want the node's %s", id, src, nodeSource[id])
			}
		}
	})
	t.Run("cluster IP from a pod keeps the pod address", func(t *testing.T) {
		for id, src := range reachAll(t, topo.pod, "tcp", webAddr, both...) {
			if src != pod6Addr {
				t.Errorf("%s saw %s, want the pod's %s", id, src, pod6Addr)
			}
		}
	})
	t.Run("node port on the node's IPv6 address, load balancer and external IPs, masqueraded", func(t *testing.T) {
		for _, addr := range []string{hostPort(node6Addr, web.nodePort), hostPort(web6LBIP, 80), hostPort(web6ExtIP, 80)} {
			for id, src := range reachAll(t, topo.client, "tcp", addr, both...) {
				if src != nodeSource[id] {
					t.Errorf("%s via %s saw %s, want the node's %s", id, addr, src, nodeSource[id])
				}
			}
		}
	})
	t.Run("UDP service", func(t *testing.T) {
		if id, _ := ask(t, topo.client, "udp", hostPort(dns6IP, 53)); id != "be1-v6-udp" {
			t.Errorf("UDP reply from %s", id)
		}
	})
	t.Run("hairpin is masqueraded", func(t *testing.T) {
		if id, src := ask(t, topo.be1, "tcp", hostPort(hairpin6IP, 80)); id != "be1-v6" || src != nodeOnBe16 {
			t.Errorf("be1 reaching itself: %s saw %s, want be1-v6 seeing %s", id, src, nodeOnBe16)
		}
	})
	t.Run("dual-stack Service: each family lands on its own endpoints", func(t *testing.T) {
		v4 := reachAll(t, topo.client, "tcp", hostPort(dualV4IP, 80), "be1", "be2")
		v6 := reachAll(t, topo.client, "tcp", hostPort(dualV6IP, 80), both...)
		t.Logf("IPv4 cluster IP: %v; IPv6 cluster IP: %v", v4, v6)
		// NodePorts of both families.
		for id, src := range reachAll(t, topo.client, "tcp", hostPort(nodeAddr, dualNodePort), "be1", "be2") {
			if want := map[string]string{"be1": nodeOnBe1, "be2": nodeOnBe2}[id]; src != want {
				t.Errorf("IPv4 node port: %s saw %s, want %s", id, src, want)
			}
		}
		for id, src := range reachAll(t, topo.client, "tcp", hostPort(node6Addr, dualNodePort), both...) {
			if src != nodeSource[id] {
				t.Errorf("IPv6 node port: %s saw %s, want %s", id, src, nodeSource[id])
			}
		}
		// Without IPv6 endpoints the IPv6 frontends reject while IPv4
		// still works.
		d := dual
		d.endpoints = []string{be1Addr + ":8080", be2Addr + ":8080"}
		putService(st, d)
		mustSync(t, p, st, changed(d.portName().ServiceName))
		refused(t, topo.client, "tcp", hostPort(dualV6IP, 80))
		refused(t, topo.client, "tcp", hostPort(node6Addr, dualNodePort))
		reachAll(t, topo.client, "tcp", hostPort(dualV4IP, 80), "be1", "be2")
		putService(st, dual)
		mustSync(t, p, st, changed(dual.portName().ServiceName))
		reachAll(t, topo.client, "tcp", hostPort(dualV6IP, 80), both...)
	})
	t.Run("IPv6 services without endpoints reject", func(t *testing.T) {
		refused(t, topo.client, "tcp", hostPort(empty6IP, 80))
		refused(t, topo.pod, "tcp", hostPort(empty6IP, 80))
		refused(t, topo.client, "udp", hostPort(emptyUDP6IP, 53))
		refused(t, topo.client, "tcp", hostPort(node6Addr, 30099))
	})
	t.Run("endpoint removed and added back", func(t *testing.T) {
		web.endpoints = []string{hostPort(be16Addr, 8080)}
		putService(st, web)
		mustSync(t, p, st, changed(web.portName().ServiceName))
		if msgs, _ := topo.k.cnt.take(); msgs != 6 {
			t.Errorf("removing one IPv6 endpoint sent %d messages, want 6", msgs)
		}
		for range 20 {
			if id, _ := ask(t, topo.client, "tcp", webAddr); id != "be1-v6" {
				t.Fatalf("removed endpoint %s still answers", id)
			}
		}
		web.endpoints = []string{hostPort(be16Addr, 8080), hostPort(be26Addr, 8080)}
		putService(st, web)
		mustSync(t, p, st, changed(web.portName().ServiceName))
		reachAll(t, topo.client, "tcp", webAddr, both...)
	})
	t.Run("restart adopts both tables", func(t *testing.T) {
		k2 := &kernelNS{ns: topo.node, conn: openConn(t, topo.node)}
		p2 := k2.proxier(t, cfg)
		mustSync(t, p2, st, full)
		if msgs, flushes := k2.cnt.take(); flushes != 0 {
			t.Errorf("restarted Proxier sent %d messages to matching tables", msgs)
		}
		reachAll(t, topo.client, "tcp", webAddr, both...)
		p = p2
	})
	t.Run("cleanup removes both tables", func(t *testing.T) {
		if err := p.Cleanup(context.Background()); err != nil {
			t.Fatal(err)
		}
		if d := topo.k.dump(t); d != "" {
			t.Errorf("tables left:\n%s", d)
		}
		fails(t, topo.client, "tcp", webAddr)
	})
}

// TestKernelTrafficPoliciesIPv6: traffic policies Local, session affinity
// and loadBalancerSourceRanges over IPv6 (be1 is on this node, be2 stands
// for an endpoint on another node).
func TestKernelTrafficPoliciesIPv6(t *testing.T) {
	requireKernel(t)
	topo := newTrafficTopology(t)
	topo.addIPv6(t)
	p := topo.k.proxier(t, Config{ClusterCIDRs: clusterCIDRsDual})
	const (
		etpIP, etpLB, etpNodePort = "fd00:10:96::1:10", "fd00:198::20", 30180
		remoteLB                  = "fd00:198::21"
		affIP                     = "fd00:10:96::1:14"
		fwLB, fwOtherLB           = "fd00:198::25", "fd00:198::26"
	)
	be1, be2 := hostPort(be16Addr, 8080), hostPort(be26Addr, 8080)
	etp := svc{ns: "default", name: "etp-local", proto: dataplane.TCP, svcPort: 80, nodePort: etpNodePort,
		clusterIPs: []string{etpIP}, lbIPs: []string{etpLB}, endpoints: []string{be1}, remote: []string{be2}, etpLocal: true}
	etpRemote := svc{ns: "default", name: "etp-remote", proto: dataplane.TCP, svcPort: 80,
		clusterIPs: []string{"fd00:10:96::1:11"}, lbIPs: []string{remoteLB}, remote: []string{be2}, etpLocal: true}
	aff := svc{ns: "default", name: "sticky", proto: dataplane.TCP, svcPort: 80, clusterIPs: []string{affIP},
		endpoints: []string{be1, be2}, affinity: time.Hour}
	fw := svc{ns: "default", name: "firewalled", proto: dataplane.TCP, svcPort: 80, clusterIPs: []string{"fd00:10:96::1:15"},
		lbIPs: []string{fwLB}, endpoints: []string{be1, be2}, sourceRanges: []string{"fd00:77::/64", "192.168.77.0/24"}}
	fwOther := svc{ns: "default", name: "firewalled-other", proto: dataplane.TCP, svcPort: 80, clusterIPs: []string{"fd00:10:96::1:16"},
		lbIPs: []string{fwOtherLB}, endpoints: []string{be1, be2}, sourceRanges: []string{"fd00:99::/64"}}
	mustSync(t, p, newState(etp, etpRemote, aff, fw, fwOther), full)
	both := []string{"be1-v6", "be2-v6"}

	t.Run("external policy Local: outside clients reach only the local endpoint, unmasqueraded", func(t *testing.T) {
		for _, addr := range []string{hostPort(etpLB, 80), hostPort(node6Addr, etpNodePort)} {
			onlyFrom(t, topo.client, addr, "be1-v6", client6Addr, 10)
		}
	})
	t.Run("external policy Local: pods short-circuit to every endpoint, unmasqueraded", func(t *testing.T) {
		for id, src := range reachAll(t, topo.pod, "tcp", hostPort(etpLB, 80), both...) {
			if src != pod6Addr {
				t.Errorf("%s saw %s, want the pod's %s", id, src, pod6Addr)
			}
		}
	})
	t.Run("external policy Local without a local endpoint: dropped, not rejected", func(t *testing.T) {
		dropped(t, topo.client, "tcp", hostPort(remoteLB, 80))
	})
	t.Run("session affinity keeps a client on one endpoint", func(t *testing.T) {
		first, _ := ask(t, topo.client, "tcp", hostPort(affIP, 80))
		onlyFrom(t, topo.client, hostPort(affIP, 80), first, "", 20)
		// Another client is pinned on its own.
		second, _ := ask(t, topo.pod, "tcp", hostPort(affIP, 80))
		onlyFrom(t, topo.pod, hostPort(affIP, 80), second, "", 20)
	})
	t.Run("load balancer source ranges", func(t *testing.T) {
		reachAll(t, topo.client, "tcp", hostPort(fwLB, 80), both...)
		dropped(t, topo.client, "tcp", hostPort(fwOtherLB, 80))
	})
}
