package iptables

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/switchyard/switchyard/conntrack"
	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/test/netnstest"
)

// TestKernelResetMarked: connections forwarded through a node namespace
// programmed by the Proxier (a DNATed cluster IP from a client outside the
// cluster CIDR, masqueraded, and from a pod, not masqueraded, with a DNAT
// stand-in for IPVS; and a plain forwarded IPv6 connection through an
// ip6tables Proxier) whose conntrack entry gets the reset bit
// (conntrack.Netlink.MarkFlows) are reset at their next packet from either
// end, with payload or a bare keepalive probe, and the other end at its
// next packet; their entries leave ESTABLISHED; unmarked connections keep
// exchanging, keep their entries, and the masquerade still works; clients
// reconnect through the Service.
func TestKernelResetMarked(t *testing.T) {
	requireKernel(t)
	for _, bin := range backends(t) {
		t.Run(bin, func(t *testing.T) { testKernelResetMarked(t, bin) })
	}
}

func testKernelResetMarked(t *testing.T, binary string) {
	ctx := context.Background()
	topo := newSNATTopology(t, binary)
	const port = 90
	vip := netip.AddrPortFrom(netip.MustParseAddr(clusterIP), port)
	srvAddr := netip.AddrPortFrom(netip.MustParseAddr(backendAddr), 9090)
	if err := topo.tables.Append(TableNAT, builtinPrerouting, Rule{"-d", clusterIP + "/32", "-p", "tcp", "-m", "tcp", "--dport", fmt.Sprint(port),
		"-m", "comment", "--comment", "test stand-in for IPVS", "-j", "DNAT", "--to-destination", srvAddr.String()}); err != nil {
		t.Fatal(err)
	}

	// IPv6, plain forwarding: client fd00:77::2 -- node -- fd00:244:1::2
	// backend (the same namespaces, new addresses).
	const client6, backend6 = "fd00:77::2", "fd00:244:1::2"
	p6 := netip.MustParsePrefix
	netnstest.AddAddr(t, topo.node, "cli0", p6("fd00:77::1/64"))
	netnstest.AddAddr(t, topo.client, "eth0", p6(client6+"/64"))
	netnstest.AddAddr(t, topo.node, "be0", p6("fd00:244:1::1/64"))
	netnstest.AddAddr(t, topo.backend, "eth0", p6(backend6+"/64"))
	netnstest.AddRoute(t, topo.client, p6("::/0"), netip.MustParseAddr("fd00:77::1"))
	netnstest.AddRoute(t, topo.backend, p6("::/0"), netip.MustParseAddr("fd00:244:1::1"))
	if err := topo.sysctl.Set("net/ipv6/conf/all/forwarding", "1"); err != nil {
		t.Fatal(err)
	}
	srv := netnstest.StartConnServer(t, topo.backend, ":9090", "be") // both families

	cfg := Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}, ConntrackDropInvalid: true}
	p, err := NewProxier(cfg, topo.sets, topo.tables, nil)
	if err != nil {
		t.Fatal(err)
	}
	bin6 := "ip6tables"
	if binary == "iptables-legacy" {
		bin6 = "ip6tables-legacy"
	}
	tables6, err := NewTables(WithBinary(bin6), WithFamily(FamilyINet6), WithNetNS(topo.node.NsHandle()))
	if err != nil {
		t.Fatal(err)
	}
	cfg6 := cfg
	cfg6.Family = FamilyINet6
	p6x, err := NewProxier(cfg6, topo.sets, tables6, nil)
	if err != nil {
		t.Fatal(err)
	}
	st := newState(t,
		svc{ns: "default", name: "echo", proto: dataplane.TCP, svcPort: 80, clusterIPs: []string{clusterIP}, endpoints: []string{backendAddr + ":8080"}},
		svc{ns: "default", name: "long", proto: dataplane.TCP, svcPort: port, clusterIPs: []string{clusterIP}, endpoints: []string{srvAddr.String()}})
	chain := dataplane.Chain{p, p6x}
	if err := chain.Sync(ctx, st, dataplane.Changes{Full: true}); err != nil {
		t.Fatalf("sync: %v", err)
	}
	t.Cleanup(func() {
		if err := chain.Cleanup(ctx); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	for _, x := range []struct {
		p      *Proxier
		tables Tables
	}{{p, topo.tables}, {p6x, tables6}} {
		want := Desired(st, x.p.cfg)
		if got := ownedDump(t, topo.sets, x.tables, want); got != want.Dump() {
			t.Fatalf("%s: kernel differs from desired:\n%s", x.p.Name(), lineDiff(want.Dump(), got))
		}
	}

	ct, err := conntrack.NewNetlink(topo.node.NsHandle())
	if err != nil {
		t.Fatal(err)
	}
	defer ct.Close()
	mark := cfg.ResetMark()
	if mark != 0x8000 || cfg6.ResetMark() != mark {
		t.Fatalf("ResetMark = %#x (IPv6 %#x), want the default 0x8000", mark, cfg6.ResetMark())
	}

	type held struct {
		*netnstest.Held
		flow conntrack.Flow
	}
	var conns []*held
	for _, path := range []struct {
		what     string
		from     *netnstest.NS
		addr     string
		wantPeer netip.Addr // the client address the backend sees
	}{
		{"client via the cluster IP (masqueraded)", topo.client, vip.String(), netip.MustParseAddr(nodeToBackend)},
		{"pod via the cluster IP", topo.pod, vip.String(), netip.MustParseAddr(podAddr)},
		{"IPv6 client, forwarded", topo.client, netip.AddrPortFrom(netip.MustParseAddr(backend6), 9090).String(), netip.MustParseAddr(client6)},
	} {
		for _, next := range []netnstest.NextPacket{netnstest.ClientSends, netnstest.ServerSends, netnstest.ClientKeepsAlive, netnstest.Unmarked} {
			h, err := netnstest.HoldConn(t, path.from, path.addr, path.what, next, 3*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if h.ID != "be" {
				t.Fatalf("%s: answered by %q, want the backend's", h.Name, h.ID)
			}
			if h.Seen.Addr() != path.wantPeer {
				t.Fatalf("%s: the backend saw %s, want %s", h.Name, h.Seen, path.wantPeer)
			}
			if h.Srv = srv.Conn(h.Seen); h.Srv == nil {
				t.Fatalf("%s: the server has no connection from %s", h.Name, h.Seen)
			}
			conns = append(conns, &held{Held: h})
		}
	}
	flows, err := ct.ListFlows()
	if err != nil {
		t.Fatal(err)
	}
	var toMark []conntrack.Flow
	for _, h := range conns {
		local := netip.MustParseAddrPort(h.C.LocalAddr().String())
		i := slices.IndexFunc(flows, func(f conntrack.Flow) bool { return f.Protocol == dataplane.TCP && f.Orig.Src == local })
		if i < 0 {
			t.Fatalf("%s: no conntrack entry", h.Name)
		}
		h.flow = flows[i]
		if h.flow.TCPState != "ESTABLISHED" || h.flow.Mark != 0 {
			t.Fatalf("%s: entry %s in %s with mark %#x", h.Name, h.flow, h.flow.TCPState, h.flow.Mark)
		}
		if h.Next != netnstest.Unmarked {
			toMark = append(toMark, h.flow)
		}
	}
	if n, err := ct.MarkFlows(toMark, mark, mark); n != len(toMark) || err != nil {
		t.Fatalf("MarkFlows = %d, %v; want %d, nil", n, err, len(toMark))
	}

	// Each marked connection sends its next packet; the sender is reset,
	// then the other end when it sends. One deadline bounds the waiting.
	deadline := time.Now().Add(15 * time.Second)
	for _, h := range conns {
		if h.Next == netnstest.Unmarked {
			continue
		}
		if err := h.ExpectReset(deadline, netnstest.SenderThenOther); err != nil {
			t.Errorf("%s: %v", h.Name, err)
		}
	}

	// The unmarked connections keep going; the marked entries left
	// ESTABLISHED (REJECT closes them, nf_ct_set_closing) so the
	// rebalancer stops counting them.
	flows, err = ct.ListFlows()
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range conns {
		i := slices.IndexFunc(flows, func(f conntrack.Flow) bool { return f.Protocol == dataplane.TCP && f.Orig == h.flow.Orig })
		if h.Next != netnstest.Unmarked {
			if i >= 0 && flows[i].TCPState == "ESTABLISHED" {
				t.Errorf("%s: entry still ESTABLISHED after the reset: %s mark %#x", h.Name, flows[i], flows[i].Mark)
			}
			continue
		}
		if err := h.ExpectAlive(1, 3*time.Second); err != nil {
			t.Errorf("%s: unmarked connection: %v", h.Name, err)
		}
		if i < 0 || flows[i].TCPState != "ESTABLISHED" || flows[i].Mark != 0 {
			t.Errorf("%s: unmarked connection's entry: %v", h.Name, flows)
		}
	}
	// New connections go through, masqueraded as before.
	if got := seenSource(t, topo.client, clusterIP+":80"); got != nodeToBackend {
		t.Errorf("new connection from the client after the resets arrived from %s, want %s (masqueraded)", got, nodeToBackend)
	}
	if got := seenSource(t, topo.pod, clusterIP+":80"); got != podAddr {
		t.Errorf("new connection from the pod after the resets arrived from %s, want %s", got, podAddr)
	}
}
