package nftables

import (
	"bufio"
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

	"github.com/switchyard/switchyard/conntrack"
	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/test/netnstest"
)

// TestResetMarkConfig: the bit defaults to 15, can be moved or turned off
// (no chain, no jumps), and must differ from the masquerade bit.
func TestResetMarkConfig(t *testing.T) {
	bit := func(b int) *int { return &b }
	for _, tc := range []struct {
		name      string
		cfg       Config
		wantMark  uint32
		wantError bool
	}{
		{name: "default", cfg: Config{}, wantMark: 0x8000},
		{name: "bit 3", cfg: Config{ResetMarkBit: bit(3)}, wantMark: 0x8},
		{name: "bit 0", cfg: Config{ResetMarkBit: bit(0)}, wantMark: 0x1},
		{name: "off", cfg: Config{ResetMarkBit: bit(ResetMarkOff)}},
		{name: "masquerade bit", cfg: Config{ResetMarkBit: bit(14)}, wantError: true},
		{name: "moved masquerade bit", cfg: Config{MasqueradeBit: bit(15)}, wantError: true},
		{name: "out of range", cfg: Config{ResetMarkBit: bit(32)}, wantError: true},
		{name: "negative", cfg: Config{ResetMarkBit: bit(-2)}, wantError: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := tc.cfg.withDefaults()
			if _, perr := NewProxier(tc.cfg, nopConn{}, nil); (perr != nil) != tc.wantError || (err != nil) != tc.wantError {
				t.Fatalf("withDefaults: %v, NewProxier: %v; want error=%v", err, perr, tc.wantError)
			}
			if got := tc.cfg.ResetMark(); got != tc.wantMark {
				t.Errorf("ResetMark = %#x, want %#x", got, tc.wantMark)
			}
			if tc.wantError {
				return
			}
			chains := skeletonChains(cfg, ipv4)
			jump := "ct mark & " + formatValue(kindMark, native32(tc.wantMark)) + " != 0x0 meta l4proto tcp jump reset-marked"
			var reset []string
			for _, c := range chains {
				for _, r := range c.rules {
					if strings.Contains(r.text, chainResetMarked) {
						reset = append(reset, c.name+": "+r.text)
					}
				}
			}
			hasChain := slices.ContainsFunc(chains, func(c chainSpec) bool { return c.name == chainResetMarked })
			if tc.wantMark == 0 {
				if hasChain || len(reset) > 0 {
					t.Errorf("reset rules although off: chain %v, jumps %q", hasChain, reset)
				}
				return
			}
			want := []string{chainFilterForward + ": " + jump, chainFilterInput + ": " + jump, chainFilterOutput + ": " + jump}
			if !hasChain || !slices.Equal(reset, want) {
				t.Errorf("chain %v, jumps:\n%s\nwant:\n%s", hasChain, strings.Join(reset, "\n"), strings.Join(want, "\n"))
			}
		})
	}
}

// TestResetMarkedChainPlacement: the jump comes first in the filter chains
// (after the invalid drop), so a marked connection is handled before
// anything else of ours can accept or drop its packet.
func TestResetMarkedChainPlacement(t *testing.T) {
	cfg, err := Config{ConntrackDropInvalid: true}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range allFamilies {
		for _, c := range skeletonChains(cfg, f) {
			want := -1
			switch c.name {
			case chainFilterForward:
				want = 1
			case chainFilterInput, chainFilterOutput:
				want = 0
			}
			got := slices.IndexFunc(c.rules, func(r rule) bool { return strings.HasSuffix(r.text, "jump "+chainResetMarked) })
			if got != want {
				t.Errorf("%s %s: jump to %s at %d, want %d", f.name, c.name, chainResetMarked, got, want)
			}
		}
	}
}

// connServer is a TCP server in a namespace that answers each line with
// "ID REMOTE" (as netnstest's echo server) and keeps its connections, so a
// test sees how each one ended and can write on it.
type connServer struct {
	id string
	ln net.Listener

	mu    sync.Mutex
	conns map[string]*serverConn // by remote address
	wg    sync.WaitGroup
}

// serverConn is one accepted connection.
type serverConn struct {
	c    net.Conn
	done chan struct{} // closed when reading ended
	err  error         // the read error; set before done is closed
}

func startConnServer(t *testing.T, ns *netnstest.NS, addr, id string) *connServer {
	t.Helper()
	s := &connServer{id: id, conns: map[string]*serverConn{}}
	if err := ns.Do(func() error {
		var err error
		// No keepalive probes: they would reset a server end the
		// dataplane failed to reset, given time.
		s.ln, err = (&net.ListenConfig{KeepAlive: -1}).Listen(context.Background(), "tcp", addr)
		return err
	}); err != nil {
		t.Fatalf("listen %s in %s: %v", addr, ns.Name(), err)
	}
	s.wg.Add(1)
	go s.serve()
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

func (s *connServer) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		sc := &serverConn{c: c, done: make(chan struct{})}
		s.mu.Lock()
		s.conns[c.RemoteAddr().String()] = sc
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			r := bufio.NewReader(c)
			for {
				if _, err := r.ReadString('\n'); err != nil {
					sc.err = err
					close(sc.done)
					c.Close()
					return
				}
				if _, err := c.Write([]byte(s.id + " " + c.RemoteAddr().String() + "\n")); err != nil {
					sc.err = err
					close(sc.done)
					c.Close()
					return
				}
			}
		}()
	}
}

// conn returns the connection whose peer (as the server sees it) is remote.
func (s *connServer) conn(remote netip.AddrPort) *serverConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns[remote.String()]
}

// How the test makes a marked connection send its next packet.
type nextPacket int

const (
	unmarked         nextPacket = iota
	clientSends                 // the client sends a request: payload from the client
	serverSends                 // the server pushes data: payload from the backend
	clientKeepsAlive            // the client only sends keepalive probes: no payload
)

func (n nextPacket) String() string {
	return [...]string{"unmarked", "client sends", "server sends", "client keepalive"}[n]
}

// heldConn is one long-lived client connection of the test.
type heldConn struct {
	name string
	from *netnstest.NS
	next nextPacket
	c    net.Conn
	id   string // the backend that answered
	flow conntrack.Flow
	srv  *serverConn
}

// TestKernelResetMarked holds TCP connections through a ClusterIP Service
// (client outside the cluster CIDR, masqueraded, and a pod, not
// masqueraded; IPv4 and IPv6), marks the conntrack entries of some with
// the reset bit and shows: both ends of every marked connection are reset
// whichever end sends next and whether that packet carries payload or is a
// bare keepalive probe; the unmarked ones keep exchanging; the clients
// reconnect through the Service; and conntrack saw the connections close.
func TestKernelResetMarked(t *testing.T) {
	requireKernel(t)
	topo := newTrafficTopology(t)
	topo.addIPv6(t)
	cfg := Config{ClusterCIDRs: clusterCIDRsDual, ConntrackDropInvalid: true}
	p := topo.k.proxier(t, cfg)
	servers := map[netip.AddrPort]*connServer{}
	for _, s := range []struct {
		ns   *netnstest.NS
		addr string
		id   string
	}{{topo.be1, be1Addr, "be1"}, {topo.be2, be2Addr, "be2"}, {topo.be1, be16Addr, "be1-v6"}, {topo.be2, be26Addr, "be2-v6"}} {
		ap := netip.AddrPortFrom(netip.MustParseAddr(s.addr), 9090)
		servers[ap] = startConnServer(t, s.ns, ap.String(), s.id)
	}
	const vip4, vip6 = "10.96.0.40", "fd00:10:96::40"
	long := svc{ns: "default", name: "long", port: "grpc", proto: dataplane.TCP, svcPort: 80,
		clusterIPs: []string{vip4, vip6},
		endpoints:  []string{be1Addr + ":9090", be2Addr + ":9090", hostPort(be16Addr, 9090), hostPort(be26Addr, 9090)}}
	mustSync(t, p, newState(long), full)

	ct, err := conntrack.NewNetlink(topo.node.NsHandle())
	if err != nil {
		t.Fatal(err)
	}
	defer ct.Close()
	mark := cfg.ResetMark()
	if mark != 0x8000 {
		t.Fatalf("ResetMark = %#x, want the default 0x8000", mark)
	}

	var held []*heldConn
	for _, vip := range []string{vip4, vip6} {
		for _, from := range []*netnstest.NS{topo.client, topo.pod} {
			for _, next := range []nextPacket{clientSends, serverSends, clientKeepsAlive, unmarked, unmarked} {
				h := &heldConn{from: from, next: next}
				c, err := netnstest.Dial(from, "tcp", hostPort(vip, 80), 3*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				h.c = c
				h.name = from.Name() + " " + c.LocalAddr().String() + " (" + next.String() + ")"
				// Keepalive probes only where the test wants them (the
				// dialer enables them after 15 s idle).
				ka := net.KeepAliveConfig{Enable: false}
				if next == clientKeepsAlive {
					ka = net.KeepAliveConfig{Enable: true, Idle: time.Second, Interval: time.Second, Count: 5}
				}
				if err := c.(*net.TCPConn).SetKeepAliveConfig(ka); err != nil {
					t.Fatal(err)
				}
				reply, err := netnstest.Exchange(c, "hello", 3*time.Second)
				if err != nil {
					t.Fatalf("%s: %v", h.name, err)
				}
				if h.id, _, err = netnstest.ReplyID(reply); err != nil {
					t.Fatal(err)
				}
				held = append(held, h)
			}
		}
	}

	// Each connection's entry, by the client's own address, and the
	// server's end, by the address the backend sees (the node's after
	// masquerading).
	flows, err := ct.ListFlows()
	if err != nil {
		t.Fatal(err)
	}
	var toMark []conntrack.Flow
	for _, h := range held {
		local := netip.MustParseAddrPort(h.c.LocalAddr().String())
		i := slices.IndexFunc(flows, func(f conntrack.Flow) bool { return f.Protocol == dataplane.TCP && f.Orig.Src == local })
		if i < 0 {
			t.Fatalf("%s: no conntrack entry", h.name)
		}
		h.flow = flows[i]
		srv := servers[h.flow.Reply.Src]
		if srv == nil || srv.id != h.id {
			t.Fatalf("%s: entry %s leads to %s, but %s answered", h.name, h.flow, h.flow.Reply.Src, h.id)
		}
		if h.srv = srv.conn(h.flow.Reply.Dst); h.srv == nil {
			t.Fatalf("%s: %s has no connection from %s", h.name, h.id, h.flow.Reply.Dst)
		}
		if h.flow.TCPState != "ESTABLISHED" || h.flow.Mark != 0 {
			t.Fatalf("%s: entry %s in %s with mark %#x", h.name, h.flow, h.flow.TCPState, h.flow.Mark)
		}
		if h.next != unmarked {
			toMark = append(toMark, h.flow)
		}
	}
	if n, err := ct.MarkFlows(toMark, mark, mark); n != len(toMark) || err != nil {
		t.Fatalf("MarkFlows = %d, %v; want %d, nil", n, err, len(toMark))
	}

	// Every marked client waits for a reply; then each connection sends
	// its next packet. One deadline bounds all the waiting.
	deadline := time.Now().Add(20 * time.Second)
	clientErr := map[*heldConn]chan error{}
	for _, h := range held {
		if h.next == unmarked {
			continue
		}
		ch := make(chan error, 1)
		clientErr[h] = ch
		go func(c net.Conn) {
			if err := c.SetReadDeadline(deadline); err != nil {
				ch <- err
				return
			}
			buf := make([]byte, 256)
			n, err := c.Read(buf)
			if n > 0 {
				err = errors.New("read " + strings.TrimSpace(string(buf[:n])) + " instead of a reset")
			}
			ch <- err
		}(h.c)
	}
	for _, h := range held {
		switch h.next {
		case clientSends:
			if _, err := h.c.Write([]byte("ping\n")); err != nil {
				t.Errorf("%s: write: %v", h.name, err)
			}
		case serverSends:
			if _, err := h.srv.c.Write([]byte("push\n")); err != nil {
				t.Errorf("%s: server write: %v", h.name, err)
			}
		}
	}
	for _, h := range held {
		if h.next == unmarked {
			continue
		}
		if err := <-clientErr[h]; !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("%s: client read: %v, want connection reset", h.name, err)
		}
		if h.next == clientKeepsAlive {
			// The probe carried nothing for the server, which is reset
			// when it next sends: the client's stack answers that.
			if _, err := h.srv.c.Write([]byte("push\n")); err != nil {
				t.Errorf("%s: server write after the client's reset: %v", h.name, err)
			}
		}
		select {
		case <-h.srv.done:
			if !errors.Is(h.srv.err, syscall.ECONNRESET) {
				t.Errorf("%s: the server's end stopped with %v, want connection reset", h.name, h.srv.err)
			}
		case <-time.After(max(time.Until(deadline), 3*time.Second)): // the keepalive case writes late
			t.Errorf("%s: the server's end (%s) is still open", h.name, h.id)
		}
	}

	// The unmarked connections never noticed.
	for _, h := range held {
		if h.next != unmarked {
			continue
		}
		for i := range 3 {
			reply, err := netnstest.Exchange(h.c, "again", 3*time.Second)
			if id, _, _ := netnstest.ReplyID(reply); err != nil || id != h.id {
				t.Errorf("%s: exchange %d: %q, %v; want %s", h.name, i, reply, err, h.id)
			}
		}
		select {
		case <-h.srv.done:
			t.Errorf("%s: the server's end ended: %v", h.name, h.srv.err)
		default:
		}
	}

	// The reset clients connect again through the Service.
	for _, vip := range []string{vip4, vip6} {
		for _, from := range []*netnstest.NS{topo.client, topo.pod} {
			want := []string{"be1", "be2"}
			if vip == vip6 {
				want = []string{"be1-v6", "be2-v6"}
			}
			if id, _ := ask(t, from, "tcp", hostPort(vip, 80)); !slices.Contains(want, id) {
				t.Errorf("new connection from %s to %s answered by %s, want one of %v", from.Name(), vip, id, want)
			}
		}
	}

	// Conntrack saw the ends' own resets: the marked entries are closing
	// (or gone) with the bit cleared; the others are as they were.
	after, err := ct.ListFlows()
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range held {
		i := slices.IndexFunc(after, func(f conntrack.Flow) bool { return f.Protocol == dataplane.TCP && f.Orig == h.flow.Orig })
		switch {
		case h.next == unmarked && i < 0:
			t.Errorf("%s: unmarked entry gone", h.name)
		case h.next == unmarked && (after[i].TCPState != "ESTABLISHED" || after[i].Mark != 0):
			t.Errorf("%s: unmarked entry now %s with mark %#x", h.name, after[i].TCPState, after[i].Mark)
		case h.next != unmarked && i >= 0 && (after[i].TCPState == "ESTABLISHED" || after[i].Mark&mark != 0):
			t.Errorf("%s: marked entry %s still %s with mark %#x", h.name, after[i], after[i].TCPState, after[i].Mark)
		}
	}
}
