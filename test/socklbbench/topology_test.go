package socklbbench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/ebpf"
	"github.com/switchyard/switchyard/nftables"
	"github.com/switchyard/switchyard/sysctl"
	"github.com/switchyard/switchyard/test/netnstest"
)

// The topology (see doc.go). Each client /24 is a pod on the node; the
// backends share one namespace, one address each.
const (
	nftClusterIP = "10.96.0.10" // programmed by nftables only
	lbClusterIP  = "10.96.0.11" // programmed by the socket LB only
	// programmed only by the second socket LB, which counts no connections
	lbNoCountClusterIP = "10.96.0.12"
	servicePort        = 80
	backendPort        = 8080
	clusterCIDR        = "10.244.0.0/16"
	nodeOnBe           = "10.244.9.1"
)

var backendAddrs = []string{"10.244.9.10", "10.244.9.11", "10.244.9.12", "10.244.9.13"}

// clients are the paths in the order they are set up and reported, each
// with its client pod's subnet (client .2, node .1) and a short name for
// its namespace and the node's end of its veth.
var clients = []struct{ path, subnet, short string }{
	{"direct", "10.244.1", "dir"},
	{"direct2", "10.244.4", "dir2"},
	{"nftables", "10.244.2", "nft"},
	{"socketlb", "10.244.3", "lb"},
	{"socketlb-nocount", "10.244.5", "lbn"},
}

const (
	msgSize   = 64
	flagClose = 1 // request flag: the server closes after replying
	ioTimeout = 3 * time.Second
)

// path is one way the client reaches the backends.
type path struct {
	name string
	ns   *netnstest.NS     // the client pod
	cg   *netnstest.Cgroup // the cgroup the process is in while this path creates sockets
	// targets are dialed round robin. For direct, targets[i] is backend
	// i+1 and a reply must name it; otherwise any backend may answer.
	targets   []unix.SockaddrInet4
	direct    bool
	nBackends int
}

type topology struct {
	node, backends  *netnstest.NS
	plain, lbCgroup *netnstest.Cgroup
	// lbNoCountCgroup has the socket LB without its sockops program
	// (Config.NoConnectionCounting).
	lbNoCountCgroup *netnstest.Cgroup
	paths           []*path
	lb, lbNoCount   *ebpf.SocketLB
}

func requireRoot(tb testing.TB) {
	tb.Helper()
	if testing.Short() {
		tb.Skip("real-kernel test skipped in -short mode")
	}
	if os.Geteuid() != 0 {
		tb.Skip("needs root (network namespaces, nftables, BPF)")
	}
}

// newTopology builds the namespaces, programs nftables and the socket LB
// and leaves the process in the plain cgroup. Everything is undone in
// tb.Cleanup, in reverse order: socket LB detached, servers stopped,
// namespaces deleted, process back in its own cgroup, cgroups removed.
func newTopology(tb testing.TB) *topology {
	tb.Helper()
	requireRoot(tb)
	p := netip.MustParsePrefix
	a := netip.MustParseAddr
	topo := &topology{
		plain:    netnstest.NewCgroup(tb, "sy-slb-plain"),
		lbCgroup: netnstest.NewCgroup(tb, "sy-slb-lb"),

		lbNoCountCgroup: netnstest.NewCgroup(tb, "sy-slb-lbn"),
	}
	// Both cgroups are leaves under the same parent, so the paths differ
	// only in the programs attached to lbCgroup.
	topo.plain.Enter(tb)
	topo.node = netnstest.New(tb, "sy-slb-node")
	topo.backends = netnstest.New(tb, "sy-slb-be")

	nodeSys := sysctl.NewAt(topo.node.NsHandle())
	mustSet(tb, nodeSys, "net/ipv4/ip_forward", "1")
	// The node has no default route: a ClusterIP nothing translated is
	// unreachable at once instead of leaving the namespaces.
	netnstest.Veth(tb, topo.node, topo.backends, "be0", "eth0", p(nodeOnBe+"/24"), p(backendAddrs[0]+"/24"))
	for _, ba := range backendAddrs[1:] {
		netnstest.AddAddr(tb, topo.backends, "eth0", p(ba+"/24"))
	}
	netnstest.AddRoute(tb, topo.backends, p("0.0.0.0/0"), a(nodeOnBe))
	// Every client connection ends in TIME_WAIT on a backend: room for
	// all of them (4 clients × 10000 ports × 4 backends).
	mustSet(tb, sysctl.NewAt(topo.backends.NsHandle()), "net/ipv4/tcp_max_tw_buckets", "262144")

	var eps []netip.AddrPort
	for i, ba := range backendAddrs {
		ap := netip.AddrPortFrom(a(ba), backendPort)
		eps = append(eps, ap)
		startEchoServer(tb, topo.backends, ap.String(), byte(i+1))
	}

	for _, cl := range clients {
		ns := netnstest.New(tb, "sy-slb-"+cl.short)
		netnstest.Veth(tb, topo.node, ns, "cli-"+cl.short, "eth0", p(cl.subnet+".1/24"), p(cl.subnet+".2/24"))
		netnstest.AddRoute(tb, ns, p("0.0.0.0/0"), a(cl.subnet+".1"))
		// 10000 ephemeral ports: bounds the conntrack entries and
		// TIME_WAIT sockets a connect benchmark leaves.
		mustSet(tb, sysctl.NewAt(ns.NsHandle()), "net/ipv4/ip_local_port_range", "40000 49999")
		pth := &path{name: cl.path, ns: ns, cg: topo.plain, nBackends: len(eps)}
		switch cl.path {
		case "direct", "direct2":
			pth.direct = true
			for _, ap := range eps {
				pth.targets = append(pth.targets, sockaddr(ap))
			}
		case "nftables":
			pth.targets = []unix.SockaddrInet4{sockaddr(netip.AddrPortFrom(a(nftClusterIP), servicePort))}
		case "socketlb":
			pth.cg = topo.lbCgroup
			pth.targets = []unix.SockaddrInet4{sockaddr(netip.AddrPortFrom(a(lbClusterIP), servicePort))}
		case "socketlb-nocount":
			pth.cg = topo.lbNoCountCgroup
			pth.targets = []unix.SockaddrInet4{sockaddr(netip.AddrPortFrom(a(lbNoCountClusterIP), servicePort))}
		}
		topo.paths = append(topo.paths, pth)
	}

	ctx := context.Background()
	conn, err := nftables.NewConn(int(topo.node.NsHandle()))
	if err != nil {
		tb.Fatalf("nftables connection: %v", err)
	}
	tb.Cleanup(func() { conn.Close() })
	proxier, err := nftables.NewProxier(nftables.Config{ClusterCIDRs: []netip.Prefix{p(clusterCIDR)}}, conn, nodeSys)
	if err != nil {
		tb.Fatal(err)
	}
	if err := proxier.Sync(ctx, serviceState("nft", nftClusterIP, eps), dataplane.Changes{Full: true}); err != nil {
		tb.Fatalf("nftables sync: %v", err)
	}

	topo.lb, err = ebpf.New(ebpf.Config{
		CgroupPath:    topo.lbCgroup.Path,
		NodeAddresses: func() ([]netip.Addr, error) { return nil, nil },
	})
	if err != nil {
		tb.Fatalf("socket LB: %v", err)
	}
	tb.Cleanup(func() {
		if err := topo.lb.Close(); err != nil {
			tb.Errorf("close socket LB: %v", err)
		}
	})
	if err := topo.lb.Sync(ctx, serviceState("lb", lbClusterIP, eps), dataplane.Changes{Full: true}); err != nil {
		tb.Fatalf("socket LB sync: %v", err)
	}
	topo.lbNoCount, err = ebpf.New(ebpf.Config{
		CgroupPath:           topo.lbNoCountCgroup.Path,
		NodeAddresses:        func() ([]netip.Addr, error) { return nil, nil },
		NoConnectionCounting: true,
	})
	if err != nil {
		tb.Fatalf("socket LB without counting: %v", err)
	}
	tb.Cleanup(func() {
		if err := topo.lbNoCount.Close(); err != nil {
			tb.Errorf("close socket LB: %v", err)
		}
	})
	if err := topo.lbNoCount.Sync(ctx, serviceState("lbn", lbNoCountClusterIP, eps), dataplane.Changes{Full: true}); err != nil {
		tb.Fatalf("socket LB (no counting) sync: %v", err)
	}
	return topo
}

func mustSet(tb testing.TB, s *sysctl.Proc, name, value string) {
	tb.Helper()
	if err := s.Set(name, value); err != nil {
		tb.Fatalf("sysctl %s=%s: %v", name, value, err)
	}
}

// serviceState is a State with one TCP Service port bench/<name>:http on
// clusterIP:80 whose endpoints are eps.
func serviceState(name, clusterIP string, eps []netip.AddrPort) *dataplane.State {
	st := dataplane.NewState()
	st.NodeName = "node"
	spn := dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: "bench", Name: name}, Port: "http", Protocol: dataplane.TCP}
	st.Services[spn] = &dataplane.ServicePort{Name: spn, Port: servicePort, ClusterIPs: []netip.Addr{netip.MustParseAddr(clusterIP)}}
	var endpoints []dataplane.Endpoint
	for _, ap := range eps {
		endpoints = append(endpoints, dataplane.Endpoint{Addr: ap, Ready: true, Serving: true, NodeName: "node"})
	}
	slices.SortFunc(endpoints, dataplane.CompareEndpoints)
	st.Endpoints[spn] = endpoints
	return st
}

func (topo *topology) path(name string) *path {
	for _, p := range topo.paths {
		if p.name == name {
			return p
		}
	}
	panic("no path " + name)
}

// enter moves the process into the cgroup this path's sockets must be
// created in. Cgroup v2 moves whole processes: never run paths at once.
func (p *path) enter() error { return p.cg.Add(os.Getpid()) }

// target is the address of the i-th dial and the backend that must answer
// it (0: any). A copy: unix.Connect writes into the Sockaddr, so
// goroutines must not share one.
func (p *path) target(i uint64) (*unix.SockaddrInet4, byte) {
	k := int(i % uint64(len(p.targets)))
	sa := p.targets[k]
	if p.direct {
		return &sa, byte(k + 1)
	}
	return &sa, 0
}

// connectOnce is one connect op: socket, connect, one request and reply
// asking the server to close, the server's FIN, close. It must run on a
// thread in p.ns (inside p.ns.Do) with the process in p.cg.
func (p *path) connectOnce(x *exchanger, seq uint64) (byte, error) {
	sa, want := p.target(seq)
	fd, err := newSocket()
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	if err := connectFD(fd, sa); err != nil {
		return 0, fmt.Errorf("%s: connect %s: %w", p.name, saString(sa), err)
	}
	id, err := x.exchange(fd, seq, flagClose, want, p.nBackends)
	if err != nil {
		return 0, fmt.Errorf("%s: %s: %w", p.name, saString(sa), err)
	}
	// Wait for the server's close, so the server, not this client, keeps
	// the TIME_WAIT.
	if err := readEOF(fd, x.reply[:]); err != nil {
		return 0, fmt.Errorf("%s: %s: %w", p.name, saString(sa), err)
	}
	return id, nil
}

// conn is a persistent connection of a path and the backend it reached.
type conn struct {
	fd int
	id byte
}

// dial opens n persistent connections to the targets from first on
// (round robin), with one request each to learn the backend. The process
// must be in p.cg. On error it closes what it opened.
func (p *path) dial(first uint64, n int) ([]conn, error) {
	var conns []conn
	var x exchanger
	for i := range uint64(n) {
		sa, want := p.target(first + i)
		var fd int
		err := p.ns.Do(func() error {
			var err error
			fd, err = newSocket()
			return err
		})
		if err == nil {
			conns = append(conns, conn{fd: fd})
			err = connectFD(fd, sa)
		}
		if err == nil {
			err = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		}
		if err == nil {
			conns[len(conns)-1].id, err = x.exchange(fd, 0, 0, want, p.nBackends)
		}
		if err != nil {
			closeAll(conns)
			return nil, fmt.Errorf("%s: persistent connection to %s: %w", p.name, saString(sa), err)
		}
	}
	return conns, nil
}

// closeAll closes the connections; fd -1 stands for none.
func closeAll(conns []conn) {
	for _, c := range conns {
		if c.fd >= 0 {
			unix.Close(c.fd)
		}
	}
}

// exchanger holds the buffers of one goroutine's requests.
type exchanger struct {
	req, reply [msgSize]byte
}

// exchange sends one request (seq and flag in it) and checks the reply:
// the request echoed after a first byte naming the backend, which must be
// want (0: any of 1..nBackends).
func (x *exchanger) exchange(fd int, seq uint64, flag, want byte, nBackends int) (byte, error) {
	x.req[0], x.req[1] = 0, flag
	binary.LittleEndian.PutUint64(x.req[2:], seq)
	for i := 10; i < msgSize; i++ {
		x.req[i] = byte(i)
	}
	if err := writeAll(fd, x.req[:]); err != nil {
		return 0, fmt.Errorf("write: %w", err)
	}
	if err := readFull(fd, x.reply[:]); err != nil {
		return 0, fmt.Errorf("read reply: %w", err)
	}
	id := x.reply[0]
	if string(x.reply[1:]) != string(x.req[1:]) {
		return 0, fmt.Errorf("reply %x does not echo request %x", x.reply, x.req)
	}
	if id < 1 || int(id) > nBackends || want != 0 && id != want {
		return 0, fmt.Errorf("reply from backend %d, want %d (of %d)", id, want, nBackends)
	}
	return id, nil
}

// newSocket is a blocking TCP socket in the calling thread's namespace
// whose connect, reads and writes give up after ioTimeout.
func newSocket() (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	tv := unix.NsecToTimeval(ioTimeout.Nanoseconds())
	for _, opt := range []int{unix.SO_SNDTIMEO, unix.SO_RCVTIMEO} {
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, opt, &tv); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("setsockopt: %w", err)
		}
	}
	return fd, nil
}

// connectFD connects a blocking socket. A signal interrupting connect
// (EINTR: the timeout makes it unrestartable) leaves the handshake
// running: wait for it.
func connectFD(fd int, sa *unix.SockaddrInet4) error {
	err := unix.Connect(fd, sa)
	if !errors.Is(err, unix.EINTR) {
		return err
	}
	deadline := time.Now().Add(ioTimeout)
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return unix.ETIMEDOUT
		}
		n, err := unix.Poll(pfd, int(left/time.Millisecond)+1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return unix.ETIMEDOUT
		}
		soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			return err
		}
		if soErr != 0 {
			return unix.Errno(soErr)
		}
		return nil
	}
}

// maxEINTR bounds the retries of an interrupted read or write.
const maxEINTR = 100

func writeAll(fd int, b []byte) error {
	for tries := 0; len(b) > 0; {
		n, err := unix.Write(fd, b)
		if errors.Is(err, unix.EINTR) && tries < maxEINTR {
			tries++
			continue
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

func readFull(fd int, b []byte) error {
	for got, tries := 0, 0; got < len(b); {
		n, err := unix.Read(fd, b[got:])
		if errors.Is(err, unix.EINTR) && tries < maxEINTR {
			tries++
			continue
		}
		if errors.Is(err, unix.EAGAIN) {
			return fmt.Errorf("no reply in %v", ioTimeout)
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrUnexpectedEOF
		}
		got += n
	}
	return nil
}

// readEOF expects the peer's close and no more data.
func readEOF(fd int, buf []byte) error {
	for tries := 0; ; tries++ {
		n, err := unix.Read(fd, buf)
		if errors.Is(err, unix.EINTR) && tries < maxEINTR {
			continue
		}
		if errors.Is(err, unix.EAGAIN) {
			return fmt.Errorf("server did not close in %v", ioTimeout)
		}
		if err != nil {
			return fmt.Errorf("waiting for close: %w", err)
		}
		if n != 0 {
			return fmt.Errorf("%d unexpected bytes after the reply", n)
		}
		return nil
	}
}

func sockaddr(ap netip.AddrPort) unix.SockaddrInet4 {
	return unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}
}

func saString(sa *unix.SockaddrInet4) string {
	return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)).String()
}

// echoServer answers each 64-byte request with the same bytes, the first
// replaced by its id, and closes the connection after a request flagged
// flagClose. One goroutine per connection, until the client closes.
type echoServer struct {
	id    byte
	ln    net.Listener
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func startEchoServer(tb testing.TB, ns *netnstest.NS, addr string, id byte) {
	tb.Helper()
	s := &echoServer{id: id, conns: map[net.Conn]struct{}{}}
	err := ns.Do(func() error {
		var err error
		s.ln, err = net.Listen("tcp4", addr)
		return err
	})
	if err != nil {
		tb.Fatalf("echo server %d on %s: %v", id, addr, err)
	}
	s.wg.Add(1)
	go s.serve()
	tb.Cleanup(s.stop)
}

func (s *echoServer) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return // closed by stop
		}
		s.mu.Lock()
		if s.conns == nil {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.handle(c)
	}
}

func (s *echoServer) handle(c net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	var buf [msgSize]byte
	for {
		if _, err := io.ReadFull(c, buf[:]); err != nil {
			return
		}
		closeAfter := buf[1] == flagClose
		buf[0] = s.id
		if _, err := c.Write(buf[:]); err != nil || closeAfter {
			return
		}
	}
}

// stop closes the listener and every connection and waits (bounded) for
// the goroutines; the sockets' references to the namespace go with them.
func (s *echoServer) stop() {
	s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.conns = nil
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
}
