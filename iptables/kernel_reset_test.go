package iptables

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard/switchyard/conntrack"
	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/test/netnstest"
)

// resetServer is a TCP server in a namespace that answers each line with
// "ID REMOTE" (as netnstest's echo server) and keeps its connections, so a
// test can push data on one and see how it ended.
type resetServer struct {
	id string
	ln net.Listener

	mu    sync.Mutex
	conns map[string]*resetServerConn // by the peer's address
	wg    sync.WaitGroup
}

type resetServerConn struct {
	c    net.Conn
	done chan struct{} // closed when reading ended
	err  error         // the read error; set before done is closed
}

func startResetServer(t *testing.T, ns *netnstest.NS, addr, id string) *resetServer {
	t.Helper()
	s := &resetServer{id: id, conns: map[string]*resetServerConn{}}
	if err := ns.Do(func() error {
		var err error
		// No keepalive probes: they would reset a server end the rules
		// had not reset, given time.
		s.ln, err = (&net.ListenConfig{KeepAlive: -1}).Listen(context.Background(), "tcp", addr)
		return err
	}); err != nil {
		t.Fatalf("listen %s in %s: %v", addr, ns.Name(), err)
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := s.ln.Accept()
			if err != nil {
				return
			}
			sc := &resetServerConn{c: c, done: make(chan struct{})}
			s.mu.Lock()
			s.conns[c.RemoteAddr().String()] = sc
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer close(sc.done)
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					if _, sc.err = r.ReadString('\n'); sc.err != nil {
						return
					}
					if _, sc.err = c.Write([]byte(s.id + " " + c.RemoteAddr().String() + "\n")); sc.err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		s.ln.Close()
		s.mu.Lock()
		for _, sc := range s.conns {
			sc.c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *resetServer) conn(peer netip.AddrPort) *resetServerConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns[peer.String()]
}

// waitReset waits (until deadline) for the server's end to end and
// checks it ended with a reset.
func (sc *resetServerConn) waitReset(deadline time.Time) error {
	select {
	case <-sc.done:
	case <-time.After(time.Until(deadline)):
		return errors.New("server end still open")
	}
	if !errors.Is(sc.err, syscall.ECONNRESET) {
		return fmt.Errorf("server end ended with %v, want a reset", sc.err)
	}
	return nil
}

// readReset reads from c until deadline and checks it gets a reset.
func readReset(c net.Conn, deadline time.Time) error {
	if err := c.SetReadDeadline(deadline); err != nil {
		return err
	}
	buf := make([]byte, 256)
	for {
		n, err := c.Read(buf)
		switch {
		case errors.Is(err, syscall.ECONNRESET):
			return nil
		case err != nil:
			return fmt.Errorf("read ended with %v, want a reset", err)
		case n > 0:
			return fmt.Errorf("read %q, want a reset", buf[:n])
		}
	}
}

// The next packet of a marked connection, in TestKernelResetMarked.
type resetCase int

const (
	resetUnmarked    resetCase = iota
	resetClientSends           // the client sends a request
	resetServerSends           // the server pushes data
	resetKeepalive             // the client sends only keepalive probes (no payload)
)

func (c resetCase) String() string {
	return [...]string{"unmarked", "client sends", "server sends", "client keepalive"}[c]
}

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
	srv := startResetServer(t, topo.backend, ":9090", "be") // both families

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
		name     string
		next     resetCase
		c        net.Conn
		flow     conntrack.Flow
		srv      *resetServerConn
		wantPeer netip.Addr // the client address the backend sees
	}
	var conns []*held
	for _, path := range []struct {
		what     string
		from     *netnstest.NS
		addr     string
		wantPeer netip.Addr
	}{
		{"client via the cluster IP (masqueraded)", topo.client, vip.String(), netip.MustParseAddr(nodeToBackend)},
		{"pod via the cluster IP", topo.pod, vip.String(), netip.MustParseAddr(podAddr)},
		{"IPv6 client, forwarded", topo.client, netip.AddrPortFrom(netip.MustParseAddr(backend6), 9090).String(), netip.MustParseAddr(client6)},
	} {
		for _, next := range []resetCase{resetClientSends, resetServerSends, resetKeepalive, resetUnmarked} {
			c, err := netnstest.Dial(path.from, "tcp", path.addr, 3*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			h := &held{name: path.what + " " + c.LocalAddr().String() + " (" + next.String() + ")", next: next, c: c, wantPeer: path.wantPeer}
			ka := net.KeepAliveConfig{Enable: false}
			if next == resetKeepalive {
				ka = net.KeepAliveConfig{Enable: true, Idle: time.Second, Interval: time.Second, Count: 5}
			}
			if err := c.(*net.TCPConn).SetKeepAliveConfig(ka); err != nil {
				t.Fatal(err)
			}
			reply, err := netnstest.Exchange(c, "hello", 3*time.Second)
			if err != nil {
				t.Fatalf("%s: %v", h.name, err)
			}
			id, remote, err := netnstest.ReplyID(reply)
			if err != nil || id != "be" {
				t.Fatalf("%s: reply %q (%v), want the backend's", h.name, reply, err)
			}
			peer, err := netip.ParseAddrPort(remote)
			if err != nil || peer.Addr() != h.wantPeer {
				t.Fatalf("%s: the backend saw %s, want %s", h.name, remote, h.wantPeer)
			}
			if err := c.SetDeadline(time.Time{}); err != nil { // Exchange's
				t.Fatal(err)
			}
			if h.srv = srv.conn(peer); h.srv == nil {
				t.Fatalf("%s: the server has no connection from %s", h.name, peer)
			}
			conns = append(conns, h)
		}
	}
	flows, err := ct.ListFlows()
	if err != nil {
		t.Fatal(err)
	}
	var toMark []conntrack.Flow
	for _, h := range conns {
		local := netip.MustParseAddrPort(h.c.LocalAddr().String())
		i := slices.IndexFunc(flows, func(f conntrack.Flow) bool { return f.Protocol == dataplane.TCP && f.Orig.Src == local })
		if i < 0 {
			t.Fatalf("%s: no conntrack entry", h.name)
		}
		h.flow = flows[i]
		if h.flow.TCPState != "ESTABLISHED" || h.flow.Mark != 0 {
			t.Fatalf("%s: entry %s in %s with mark %#x", h.name, h.flow, h.flow.TCPState, h.flow.Mark)
		}
		if h.next != resetUnmarked {
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
		var first, second error
		switch h.next {
		case resetUnmarked:
			continue
		case resetClientSends:
			if _, err := h.c.Write([]byte("next\n")); err != nil {
				t.Errorf("%s: write: %v", h.name, err)
				continue
			}
			first = readReset(h.c, deadline)
			if _, err := h.srv.c.Write([]byte("pushed\n")); err != nil {
				t.Errorf("%s: server write: %v", h.name, err)
			}
			second = h.srv.waitReset(deadline)
		case resetServerSends:
			if _, err := h.srv.c.Write([]byte("pushed\n")); err != nil {
				t.Errorf("%s: server write: %v", h.name, err)
			}
			first = h.srv.waitReset(deadline)
			if _, err := h.c.Write([]byte("next\n")); err != nil {
				// The reset may already be there: fine, it was a reset.
				if !errors.Is(err, syscall.ECONNRESET) {
					t.Errorf("%s: write: %v", h.name, err)
				}
			} else {
				second = readReset(h.c, deadline)
			}
		case resetKeepalive:
			// No payload: the client's probe (after 1 s idle) is the
			// next packet.
			first = readReset(h.c, deadline)
			if _, err := h.srv.c.Write([]byte("pushed\n")); err != nil {
				t.Errorf("%s: server write: %v", h.name, err)
			}
			second = h.srv.waitReset(deadline)
		}
		if first != nil {
			t.Errorf("%s: the first end to send: %v", h.name, first)
		}
		if second != nil {
			t.Errorf("%s: the other end, when it sent: %v", h.name, second)
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
		if h.next != resetUnmarked {
			if i >= 0 && flows[i].TCPState == "ESTABLISHED" {
				t.Errorf("%s: entry still ESTABLISHED after the reset: %s mark %#x", h.name, flows[i], flows[i].Mark)
			}
			continue
		}
		reply, err := netnstest.Exchange(h.c, "again", 3*time.Second)
		if err != nil {
			t.Errorf("%s: unmarked connection: %v", h.name, err)
			continue
		}
		if id, remote, err := netnstest.ReplyID(reply); err != nil || id != "be" || netip.MustParseAddrPort(remote).Addr() != h.wantPeer {
			t.Errorf("%s: unmarked connection answered %q, want be seeing %s", h.name, reply, h.wantPeer)
		}
		if i < 0 || flows[i].TCPState != "ESTABLISHED" || flows[i].Mark != 0 {
			t.Errorf("%s: unmarked connection's entry: %v", h.name, flows)
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
