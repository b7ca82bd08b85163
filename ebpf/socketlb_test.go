package ebpf

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/test/netnstest"
)

func TestTCPConnectReachesEveryBackend(t *testing.T) {
	e := newEnv(t)
	lb := e.newLB(t, "")
	st := dataplane.NewState()
	service(st, "web", dataplane.TCP, 80, []netip.Addr{clusterIP4, clusterIP6}, e.backendIPs)
	syncFull(t, lb, st)

	for _, tc := range []struct {
		vip  netip.Addr
		want []netip.Addr
	}{{clusterIP4, e.v4Backends()}, {clusterIP6, e.v6Backends()}} {
		// 60 random picks over 3 backends miss one with probability
		// 3·(2/3)^60 ≈ 1e-10.
		got := e.ids(t, "tcp", hostPort(tc.vip, 80), 60)
		for _, b := range tc.want {
			if got[b.String()] == 0 {
				t.Errorf("%s: backend %s never answered: %v", tc.vip, b, got)
			}
		}
		for id := range got {
			if !slices.Contains(addrStrings(tc.want), id) {
				t.Errorf("%s: answered by %s, not a backend of its family", tc.vip, id)
			}
		}
	}
	// Another port on the same IP is not a frontend: untranslated, and
	// nothing routes the service IP here.
	if !e.untranslated(hostPort(clusterIP4, 81)) {
		t.Errorf("connect to %s:81 succeeded; only port 80 is a frontend", clusterIP4)
	}
}

func TestIPv4MappedConnectFromIPv6Socket(t *testing.T) {
	e := newEnv(t)
	lb := e.newLB(t, "")
	st := dataplane.NewState()
	service(st, "web", dataplane.TCP, 80, []netip.Addr{clusterIP4}, e.v4Backends())
	syncFull(t, lb, st)
	// A dual-stack socket dialing ::ffff:10.96.0.10 goes through connect6
	// (Go's net refuses that address for tcp6: use the socket directly).
	var c net.Conn
	err := e.client.Do(func() error {
		fd, err := syscall.Socket(syscall.AF_INET6, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		f := os.NewFile(uintptr(fd), "tcp6")
		defer f.Close()
		sa := &syscall.SockaddrInet6{Port: 80, Addr: netip.MustParseAddr("::ffff:10.96.0.10").As16()}
		if err := syscall.Connect(fd, sa); err != nil {
			return err
		}
		c, err = net.FileConn(f)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := c.RemoteAddr().(*net.TCPAddr).AddrPort(); got.Addr().Unmap() != clusterIP4 || got.Port() != 80 {
		t.Errorf("getpeername6 shows %s, want the IPv4-mapped service address", got)
	}
	reply, err := netnstest.Exchange(c, "hi", 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if id, _, _ := netnstest.ReplyID(reply); !slices.Contains(addrStrings(e.v4Backends()), id) {
		t.Errorf("reply %q not from a backend", reply)
	}
}

func TestUDPRequestReply(t *testing.T) {
	e := newEnv(t)
	lb := e.newLB(t, "")
	st := dataplane.NewState()
	service(st, "dns", dataplane.UDP, 53, []netip.Addr{clusterIP4, clusterIP6}, e.backendIPs)
	syncFull(t, lb, st)

	for _, vip := range []netip.Addr{clusterIP4, clusterIP6} {
		vipPort := netip.AddrPortFrom(vip, 53)
		// Connected UDP: connect4/6 translates, getpeername shows the VIP.
		if id := e.request(t, "udp", vipPort.String()); !slices.Contains(addrStrings(e.backendIPs), id) {
			t.Errorf("connected UDP to %s answered by %q", vipPort, id)
		}
		// Unconnected UDP: sendmsg translates each datagram, recvmsg
		// shows the VIP as the source, and the socket keeps its backend.
		var pc net.PacketConn
		if err := e.client.Do(func() error {
			var err error
			network := "udp4"
			if vip.Is6() {
				network = "udp6"
			}
			pc, err = net.ListenPacket(network, ":0")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for i := range 10 {
			if err := pc.SetDeadline(time.Now().Add(3 * time.Second)); err != nil {
				t.Fatal(err)
			}
			if _, err := pc.WriteTo([]byte("ping\n"), net.UDPAddrFromAddrPort(vipPort)); err != nil {
				t.Fatalf("sendto %s: %v", vipPort, err)
			}
			buf := make([]byte, 512)
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				t.Fatalf("datagram %d: recvfrom after sendto %s: %v", i, vipPort, err)
			}
			if got := from.(*net.UDPAddr).AddrPort(); netip.AddrPortFrom(got.Addr().Unmap(), got.Port()) != vipPort {
				t.Errorf("reply came from %s, want the service address %s", got, vipPort)
			}
			id, _, err := netnstest.ReplyID(strings.TrimSpace(string(buf[:n])))
			if err != nil {
				t.Fatal(err)
			}
			seen[id] = true
		}
		pc.Close()
		if len(seen) != 1 {
			t.Errorf("one unconnected UDP socket to %s was spread over backends %v; want one flow, one backend", vipPort, seen)
		}
	}
}

func TestClientIPAffinity(t *testing.T) {
	e := newEnv(t)
	lb := e.newLB(t, "")
	st := dataplane.NewState()
	sp := service(st, "sticky", dataplane.TCP, 80, []netip.Addr{clusterIP4}, e.v4Backends())
	sp.SessionAffinityTimeout = 2 * time.Second
	syncFull(t, lb, st)

	got := e.ids(t, "tcp", hostPort(clusterIP4, 80), 20)
	if len(got) != 1 {
		t.Fatalf("with ClientIP affinity 20 connections went to %v; want one backend", got)
	}
	var first string
	for id := range got {
		first = id
	}
	// The affinity backend removed: the next connection picks another
	// one, and sticks to it.
	var eps []dataplane.Endpoint
	for _, ep := range st.Endpoints[sp.Name] {
		if ep.Addr.Addr().String() != first {
			eps = append(eps, ep)
		}
	}
	st.Endpoints[sp.Name] = eps
	syncFull(t, lb, st)
	got = e.ids(t, "tcp", hostPort(clusterIP4, 80), 10)
	if len(got) != 1 || got[first] != 0 {
		t.Fatalf("after removing %s, affinity connections went to %v; want one other backend", first, got)
	}
	// Without affinity the same client spreads again.
	sp.SessionAffinityTimeout = 0
	syncFull(t, lb, st)
	if got := e.ids(t, "tcp", hostPort(clusterIP4, 80), 40); len(got) != 2 {
		t.Errorf("affinity off: 40 connections went to %v; want both backends", got)
	}
}

func TestAffinityExpires(t *testing.T) {
	e := newEnv(t)
	lb := e.newLB(t, "")
	st := dataplane.NewState()
	sp := service(st, "sticky", dataplane.TCP, 80, []netip.Addr{clusterIP4}, e.v4Backends())
	sp.SessionAffinityTimeout = time.Second
	syncFull(t, lb, st)
	// After the timeout the client picks afresh: over 12 rounds spaced
	// past the timeout, all landing on one backend has probability
	// (1/3)^11 ≈ 6e-6.
	got := map[string]int{}
	for range 12 {
		got[e.request(t, "tcp", hostPort(clusterIP4, 80))]++
		time.Sleep(1100 * time.Millisecond)
	}
	if len(got) < 2 {
		t.Errorf("affinity never expired: %v", got)
	}
}

func TestBackendRemovedGetsNoNewConnections(t *testing.T) {
	e := newEnv(t)
	lb := e.newLB(t, "")
	st := dataplane.NewState()
	sp := service(st, "web", dataplane.TCP, 80, []netip.Addr{clusterIP4}, e.v4Backends())
	syncFull(t, lb, st)

	// Hold a connection to each backend, then remove the first one.
	held := map[string]net.Conn{}
	for i := 0; len(held) < 3 && i < 100; i++ {
		c, err := netnstest.Dial(e.client, "tcp", hostPort(clusterIP4, 80), 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		reply, err := netnstest.Exchange(c, "x", 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		id, _, _ := netnstest.ReplyID(reply)
		if held[id] != nil {
			c.Close()
			continue
		}
		held[id] = c
		defer c.Close()
	}
	if len(held) != 3 {
		t.Fatalf("reached only %d backends in 100 connections", len(held))
	}
	removed := e.v4Backends()[0].String()
	st.Endpoints[sp.Name] = st.Endpoints[sp.Name][1:]
	if err := lb.Sync(context.Background(), st, dataplane.Changes{Services: map[dataplane.ServiceName]struct{}{sp.Name.ServiceName: {}}}); err != nil {
		t.Fatal(err)
	}
	got := e.ids(t, "tcp", hostPort(clusterIP4, 80), 40)
	if got[removed] != 0 || len(got) != 2 {
		t.Errorf("after removing %s new connections went to %v", removed, got)
	}
	// The socket LB does not touch established connections.
	if reply, err := netnstest.Exchange(held[removed], "still", 3*time.Second); err != nil || !strings.HasPrefix(reply, removed+" ") {
		t.Errorf("held connection to removed backend: %q, %v", reply, err)
	}
	// No endpoint left: untranslated (the packet dataplane's turn).
	st.Endpoints[sp.Name] = nil
	syncFull(t, lb, st)
	if !e.untranslated(hostPort(clusterIP4, 80)) {
		t.Errorf("connect succeeded with no endpoint")
	}
}

func TestNodePortOnNodeAddressesOnly(t *testing.T) {
	e := newEnv(t)
	lb := e.newLB(t, "")
	st := dataplane.NewState()
	sp := service(st, "np", dataplane.TCP, 80, []netip.Addr{clusterIP4, clusterIP6}, e.backendIPs)
	sp.NodePort = 30080
	syncFull(t, lb, st)
	// The client namespace plays the node: its addresses are node
	// addresses. Nothing listens on 30080 there.
	if id := e.request(t, "tcp", "10.0.0.1:30080"); !slices.Contains(addrStrings(e.v4Backends()), id) {
		t.Errorf("NodePort on 10.0.0.1 answered by %q", id)
	}
	if id := e.request(t, "tcp", "[fd00::1]:30080"); !slices.Contains(addrStrings(e.v6Backends()), id) {
		t.Errorf("NodePort on fd00::1 answered by %q", id)
	}
	// 10.0.0.2 is not a node address: untranslated, refused there.
	_, err := netnstest.Dial(e.client, "tcp", "10.0.0.2:30080", time.Second)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("NodePort on a non-node address: %v, want connection refused", err)
	}
}

func TestInternalTrafficPolicyLocal(t *testing.T) {
	e := newEnv(t)
	lb := e.newLB(t, "")
	st := dataplane.NewState()
	st.NodeName = "node-a"
	extIP := netip.MustParseAddr("192.0.2.10")
	sp := service(st, "itp", dataplane.TCP, 80, []netip.Addr{clusterIP4}, e.v4Backends())
	sp.InternalPolicyLocal = true
	sp.ExternalIPs = []netip.Addr{extIP}
	st.Endpoints[sp.Name][1].NodeName = "node-a" // the only local endpoint
	syncFull(t, lb, st)
	local := e.v4Backends()[1].String()
	if got := e.ids(t, "tcp", hostPort(clusterIP4, 80), 15); len(got) != 1 || got[local] != 15 {
		t.Errorf("ClusterIP with internalTrafficPolicy Local went to %v; want only %s", got, local)
	}
	// External IPs use every endpoint (kube-proxy's short circuit for
	// the node's own traffic).
	if got := e.ids(t, "tcp", hostPort(extIP, 80), 40); len(got) != 3 {
		t.Errorf("external IP went to %v; want all three backends", got)
	}
}

// counts returns the sockops counts as backend/direction -> count.
func counts(t *testing.T, lb *SocketLB) map[string]uint64 {
	t.Helper()
	cs, err := lb.Connections()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]uint64{}
	for _, c := range cs {
		if c.Count > 0 {
			out[c.Backend.String()+"/"+string(c.Direction)] = c.Count
		}
	}
	return out
}

// waitCounts polls (bounded) until the counts equal want: closes reach
// sockops when the TCP state machine reaches CLOSE, a moment after Close.
func waitCounts(t *testing.T, lb *SocketLB, want map[string]uint64) {
	t.Helper()
	var got map[string]uint64
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if got = counts(t, lb); mapsEqual(got, want) {
			return
		}
	}
	t.Fatalf("sockops counts %v, want %v", got, want)
}

func mapsEqual(a, b map[string]uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestSockopsCountsExactly(t *testing.T) {
	e := newEnv(t)
	lb := e.newLB(t, "")
	st := dataplane.NewState()
	sp := service(st, "web", dataplane.TCP, 80, []netip.Addr{clusterIP4, clusterIP6}, e.backendIPs)
	syncFull(t, lb, st)
	waitCounts(t, lb, map[string]uint64{})

	// 9 connections through the VIPs and 2 straight to a pod IP: all
	// are connections to backends, counted on both ends (both ends are
	// sockets of this test's cgroup).
	type held struct {
		c       net.Conn
		backend string
	}
	var conns []held
	open := func(addr string) {
		c, err := netnstest.Dial(e.client, "tcp", addr, 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		reply, err := netnstest.Exchange(c, "x", 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		id, _, _ := netnstest.ReplyID(reply)
		conns = append(conns, held{c, hostPort(netip.MustParseAddr(id), backendPort)})
	}
	for range 6 {
		open(hostPort(clusterIP4, 80))
	}
	for range 3 {
		open(hostPort(clusterIP6, 80))
	}
	open(hostPort(e.v4Backends()[2], backendPort))
	open(hostPort(e.v4Backends()[2], backendPort))

	expect := func(cs []held) map[string]uint64 {
		want := map[string]uint64{}
		for _, h := range cs {
			want[h.backend+"/out"]++
			want[h.backend+"/in"]++
		}
		return want
	}
	waitCounts(t, lb, expect(conns))

	socks, err := lb.Sockets()
	if err != nil {
		t.Fatal(err)
	}
	var translated int
	for _, s := range socks {
		if s.Direction == Out && s.Frontend.IsValid() {
			translated++
			if s.Service != sp.Name {
				t.Errorf("socket %d to %s: service %q, want %q", s.Cookie, s.Remote, s.Service, sp.Name)
			}
			if s.Frontend.Port() != 80 {
				t.Errorf("socket record frontend %s, want port 80", s.Frontend)
			}
		}
		if age := time.Since(s.Established); age < 0 || age > time.Minute {
			t.Errorf("socket %d established %v ago", s.Cookie, age)
		}
	}
	if translated != 9 || len(socks) != 22 {
		t.Errorf("%d socket records, %d translated; want 22 (11 each way) and 9", len(socks), translated)
	}

	// Close four (one direct), in both cases from the client side.
	for _, h := range conns[:3] {
		h.c.Close()
	}
	conns[len(conns)-1].c.Close()
	waitCounts(t, lb, expect(conns[3:len(conns)-1]))
	for _, h := range conns {
		h.c.Close()
	}
	waitCounts(t, lb, map[string]uint64{})
	if socks, err := lb.Sockets(); err != nil || len(socks) != 0 {
		t.Errorf("socket records after closing everything: %v, %v", socks, err)
	}
}

func TestRestartKeepsTranslation(t *testing.T) {
	e := newEnv(t)
	pin := filepath.Join(netnstest.NewBPFFS(t), "switchyard")
	lb := e.newLB(t, pin)
	st := dataplane.NewState()
	sp := service(st, "web", dataplane.TCP, 80, []netip.Addr{clusterIP4}, e.v4Backends())
	sp.SessionAffinityTimeout = time.Hour
	syncFull(t, lb, st)
	sticky := e.request(t, "tcp", hostPort(clusterIP4, 80))

	// Connections keep flowing while the "agent" exits and a new one
	// takes over: a client loop (bounded) runs across the restart.
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				if n == 0 {
					done <- errors.New("no request ran during the restart")
				} else {
					done <- nil
				}
				return
			default:
			}
			reply, err := netnstest.Request(e.client, "tcp", hostPort(clusterIP4, 80), "r", 3*time.Second)
			if err != nil {
				done <- err
				return
			}
			if id, _, _ := netnstest.ReplyID(reply); id != sticky {
				done <- errors.New("request during restart answered by " + id + ", not the affinity backend " + sticky)
				return
			}
			n++
			if n > 5000 {
				done <- errors.New("restart loop bound reached")
				return
			}
		}
	}()
	time.Sleep(100 * time.Millisecond)
	if err := lb.Close(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // no agent at all: pinned links translate
	lb2 := e.newLB(t, pin)
	syncFull(t, lb2, st)
	time.Sleep(100 * time.Millisecond)
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// The new agent reused the maps: nothing to write, and the affinity
	// entry (keyed by service id) survived.
	if err := lb2.Sync(context.Background(), st, dataplane.Changes{Full: true}); err != nil {
		t.Fatal(err)
	}
	if lb2.Repairs() != 0 {
		t.Errorf("a full resync after restart repaired %d times; the pinned maps should match", lb2.Repairs())
	}
	if got := e.ids(t, "tcp", hostPort(clusterIP4, 80), 5); got[sticky] != 5 {
		t.Errorf("after restart affinity went to %v, want %s", got, sticky)
	}

	// Cleanup detaches and unpins: the VIP is no longer translated.
	if err := lb2.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(pin); !os.IsNotExist(err) {
		t.Errorf("pin directory after Cleanup: %v", err)
	}
	if !e.untranslated(hostPort(clusterIP4, 80)) {
		t.Errorf("connect to the VIP still translated after Cleanup")
	}
}

func TestCleanupWithoutLoading(t *testing.T) {
	e := newEnv(t)
	pin := filepath.Join(netnstest.NewBPFFS(t), "switchyard")
	lb := e.newLB(t, pin)
	st := dataplane.NewState()
	service(st, "web", dataplane.TCP, 80, []netip.Addr{clusterIP4}, e.v4Backends())
	syncFull(t, lb, st)
	lb.Close()
	e.request(t, "tcp", hostPort(clusterIP4, 80)) // still translated: pinned
	// `switchyard --cleanup`: a fresh process that loaded nothing.
	if err := NewForCleanup(Config{PinPath: pin}).Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !e.untranslated(hostPort(clusterIP4, 80)) {
		t.Errorf("connect still translated after --cleanup")
	}
	if _, err := os.Stat(pin); !os.IsNotExist(err) {
		t.Errorf("pin directory after cleanup: %v", err)
	}
}

func TestFullSyncRepairsDeletedEntries(t *testing.T) {
	e := newEnv(t)
	lb := e.newLB(t, "")
	st := dataplane.NewState()
	service(st, "web", dataplane.TCP, 80, []netip.Addr{clusterIP4}, e.v4Backends())
	syncFull(t, lb, st)
	syncFull(t, lb, st)
	if lb.Repairs() != 0 {
		t.Fatalf("repairs after an idle resync: %d", lb.Repairs())
	}
	// Someone deletes the frontend (bpftool map delete ...).
	key := l4From(netip.AddrPortFrom(clusterIP4, 80), 6, kindVIP).kernel()
	if err := lb.objs.Frontends.Delete(key); err != nil {
		t.Fatal(err)
	}
	if !e.untranslated(hostPort(clusterIP4, 80)) {
		t.Fatalf("connect translated without its frontend entry")
	}
	syncFull(t, lb, st)
	if lb.Repairs() != 1 {
		t.Errorf("repairs = %d, want 1", lb.Repairs())
	}
	e.request(t, "tcp", hostPort(clusterIP4, 80))
}

// TestWithoutConnectionCounting: sockops left out, translation and
// getpeername still work (the reverse translation lives in revnat), no
// counts; a restart that turns counting off detaches the pinned sockops
// link.
func TestWithoutConnectionCounting(t *testing.T) {
	e := newEnv(t)
	pin := filepath.Join(netnstest.NewBPFFS(t), "switchyard")
	st := dataplane.NewState()
	service(st, "web", dataplane.TCP, 80, []netip.Addr{clusterIP4, clusterIP6}, e.backendIPs)
	lb := e.newLB(t, pin)
	syncFull(t, lb, st)
	e.request(t, "tcp", hostPort(clusterIP4, 80))
	if err := lb.Close(); err != nil {
		t.Fatal(err)
	}

	lb2, err := New(Config{CgroupPath: e.cg.Path, PinPath: pin, NoConnectionCounting: true,
		NodeAddresses: func() ([]netip.Addr, error) { return e.nodeAddrs, nil }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lb2.Cleanup(context.Background()) })
	syncFull(t, lb2, st)
	if _, err := os.Stat(filepath.Join(pin, "links", "sockops_count")); !os.IsNotExist(err) {
		t.Errorf("sockops link still pinned with counting off: %v", err)
	}
	for _, vip := range []netip.Addr{clusterIP4, clusterIP6} {
		if got := e.ids(t, "tcp", hostPort(vip, 80), 30); len(got) != 3 {
			t.Errorf("%s without counting reached %v, want three backends", vip, got)
		}
	}
	c, err := netnstest.Dial(e.client, "tcp", hostPort(clusterIP4, 80), 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := netnstest.Exchange(c, "x", 3*time.Second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if got := counts(t, lb2); len(got) != 0 {
		t.Errorf("counts with counting off: %v", got)
	}
}

// TestRebalancedServiceSteersToLessLoaded: for a Service that opted into
// rebalancing, connect picks the less loaded of two random backends by
// this node's sockops counts. Backend A already holds 60 connections; of
// 120 new ones through the ClusterIP, B gets far more than the half it
// would get at random (expected ~90: the two even out at ~90 each; at
// random 60 ± 5.5, so the threshold of 75 tells the two apart).
func TestRebalancedServiceSteersToLessLoaded(t *testing.T) {
	e := newEnv(t)
	lb := e.newLB(t, "")
	st := dataplane.NewState()
	a, b := e.v4Backends()[0], e.v4Backends()[1]
	sp := service(st, "steered", dataplane.TCP, 80, []netip.Addr{clusterIP4}, []netip.Addr{a, b})
	sp.Rebalance = &dataplane.RebalanceSpec{Tolerance: 0.1}
	syncFull(t, lb, st)
	hold := func(addr string) string {
		t.Helper()
		c, err := netnstest.Dial(e.client, "tcp", addr, 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		reply, err := netnstest.Exchange(c, "x", 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		id, _, _ := netnstest.ReplyID(reply)
		return id
	}
	for range 60 {
		hold(hostPort(a, backendPort))
	}
	waitCounts(t, lb, map[string]uint64{
		hostPort(a, backendPort) + "/out": 60, hostPort(a, backendPort) + "/in": 60,
	})
	got := map[string]int{}
	for range 120 {
		got[hold(hostPort(clusterIP4, 80))]++
	}
	if got[b.String()] < 75 {
		t.Errorf("120 new connections with A holding 60 more: %v; want most on %s", got, b)
	}
	t.Logf("with A at 60, new connections went %v", got)
}
