package shed

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/switchyard/switchyard/test/netnstest"
	"github.com/switchyard/switchyard/test/vm/guest"
	"golang.org/x/sys/unix"
)

func newSockDiag(t *testing.T) (*SockDiag, *NetnsIndex) {
	t.Helper()
	if guest.InVM() && !tcpDiagPresent(t) {
		// Not on the host, where it is built in: a missing handler fails
		// these tests there.
		t.Skip("the VM's initramfs has no inet_diag/tcp_diag modules (test/vm DefaultModules); TestSockDiagWithoutTCPDiag covers it")
	}
	index := NewNetnsIndex(NetnsIndexConfig{})
	t.Cleanup(func() {
		if err := index.Close(); err != nil {
			t.Errorf("close index: %v", err)
		}
	})
	sd, err := NewSockDiag(index)
	if err != nil {
		t.Fatal(err)
	}
	return sd, index
}

// untouched checks that connections nobody targeted still carry payloads
// both ways.
func untouched(t *testing.T, pairs ...pair) {
	t.Helper()
	for _, p := range pairs {
		if err := p.pingPong("still there?"); err != nil {
			t.Errorf("untargeted connection broke: %v", err)
		}
	}
}

func wantResult(t *testing.T, res Result, want ...Status) {
	t.Helper()
	var closed, notFound, failed int
	for _, s := range want {
		switch s {
		case Closed:
			closed++
		case NotFound:
			notFound++
		default:
			failed++
		}
	}
	if !slices.Equal(res.Status, want) || res.Closed != closed || res.NotFound != notFound || res.Failed != failed {
		t.Fatalf("result %+v, want statuses %v", res, want)
	}
}

// Destroying client pods' sockets: the client sees ECONNABORTED, the
// backend an RST; other connections, in both families and through the
// echo server, keep working. A socket that does not exist is NotFound, a
// namespace that is gone fails only its own target.
func TestSockDiagClosesClientSockets(t *testing.T) {
	w := newWorld(t)
	sd, index := newSockDiag(t)
	gone := goneNetnsCookie(t, index)

	var v4, v6 []pair
	for _, n := range []string{"a", "b", "c"} {
		v4 = append(v4, w.connect(t, w.ln4, "v4-"+n))
		v6 = append(v6, w.connect(t, w.ln6, "v6-"+n))
	}
	echo := netnstest.StartEchoServer(t, w.srv, "tcp", "10.0.0.2:0", "echo")
	held, err := netnstest.Dial(w.cli, "tcp", echo.Addr, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if reply, err := netnstest.Exchange(held, "before", ioTimeout); err != nil || !strings.HasPrefix(reply, "echo 10.0.0.1:") {
		t.Fatalf("echo before: %q, %v", reply, err)
	}

	missing := v4[2].clientTarget(w)
	missing.Local = netip.AddrPortFrom(missing.Local.Addr(), 1) // no socket uses port 1
	elsewhere := v6[2].clientTarget(w)
	elsewhere.NetnsCookie = gone
	res, err := sd.Close(context.Background(), []Target{v4[0].clientTarget(w), v6[1].clientTarget(w), missing, elsewhere})
	wantResult(t, res, Closed, Closed, NotFound, Failed)
	if !errors.Is(err, ErrNetnsNotFound) {
		t.Errorf("error %v, want ErrNetnsNotFound for the gone namespace", err)
	}

	wantAborted(t, "v4 client", v4[0].client)
	wantReset(t, "v4 server", v4[0].server)
	wantAborted(t, "v6 client", v6[1].client)
	wantReset(t, "v6 server", v6[1].server)
	untouched(t, v4[1], v4[2], v6[0], v6[2])
	if reply, err := netnstest.Exchange(held, "after", ioTimeout); err != nil || !strings.HasPrefix(reply, "echo 10.0.0.1:") {
		t.Errorf("echo after: %q, %v", reply, err)
	}

	// Closing again finds nothing: the sockets are gone.
	res, err = sd.Close(context.Background(), []Target{v4[0].clientTarget(w), v6[1].clientTarget(w)})
	if err != nil {
		t.Fatal(err)
	}
	wantResult(t, res, NotFound, NotFound)
}

// Destroying backend pods' sockets: the backend sees ECONNABORTED, the
// client an RST. A target naming the listener's address with no
// connection behind it must not take the listener down.
func TestSockDiagClosesServerSockets(t *testing.T) {
	w := newWorld(t)
	sd, _ := newSockDiag(t)

	a4, b4 := w.connect(t, w.ln4, "v4-a"), w.connect(t, w.ln4, "v4-b")
	a6, b6 := w.connect(t, w.ln6, "v6-a"), w.connect(t, w.ln6, "v6-b")
	// The kernel's lookup falls back to the listener for these.
	noConn4 := Target{NetnsCookie: w.srvCookie, Local: addrPort(w.ln4.Addr()), Remote: netip.MustParseAddrPort("10.0.0.1:1")}
	noConn6 := Target{NetnsCookie: w.srvCookie, Local: addrPort(w.ln6.Addr()), Remote: netip.MustParseAddrPort("[fd00::1]:1")}

	res, err := sd.Close(context.Background(), []Target{a4.serverTarget(w), noConn4, a6.serverTarget(w), noConn6})
	if err != nil {
		t.Fatal(err)
	}
	wantResult(t, res, Closed, NotFound, Closed, NotFound)
	wantAborted(t, "v4 server", a4.server)
	wantReset(t, "v4 client", a4.client)
	wantAborted(t, "v6 server", a6.server)
	wantReset(t, "v6 client", a6.client)
	untouched(t, b4, b6)
	// The listeners still accept: reconnecting clients land somewhere.
	untouched(t, w.connect(t, w.ln4, "v4-reconnect"), w.connect(t, w.ln6, "v6-reconnect"))
}

// A target's Cookie pins the very socket: a wrong one closes nothing.
func TestSockDiagCookie(t *testing.T) {
	w := newWorld(t)
	sd, _ := newSockDiag(t)
	p := w.connect(t, w.ln6, "v6")
	cookie := socketCookie(t, p.client)

	wrong := p.clientTarget(w)
	wrong.Cookie = cookie + 1
	res, err := sd.Close(context.Background(), []Target{wrong})
	if err != nil {
		t.Fatal(err)
	}
	wantResult(t, res, NotFound)
	untouched(t, p)

	right := p.clientTarget(w)
	right.Cookie = cookie
	res, err = sd.Close(context.Background(), []Target{right})
	if err != nil {
		t.Fatal(err)
	}
	wantResult(t, res, Closed)
	wantAborted(t, "client", p.client)
	wantReset(t, "server", p.server)
}

// A dual-stack (AF_INET6) socket connected to an IPv4-mapped address is
// found by its plain IPv4 addresses, as ebpf.Socket reports them, and by
// the mapped ones.
func TestSockDiagDualStackSocket(t *testing.T) {
	w := newWorld(t)
	sd, _ := newSockDiag(t)
	var pairs []pair
	for _, name := range []string{"plain", "mapped"} {
		var c net.Conn
		err := w.cli.Do(func() error {
			fd, err := syscall.Socket(syscall.AF_INET6, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			f := os.NewFile(uintptr(fd), "tcp6")
			defer f.Close()
			mapped := netip.AddrFrom16(addrPort(w.ln4.Addr()).Addr().As16())
			sa := &syscall.SockaddrInet6{Port: int(addrPort(w.ln4.Addr()).Port()), Addr: mapped.As16()}
			if err := syscall.Connect(fd, sa); err != nil {
				return err
			}
			c, err = net.FileConn(f)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		pairs = append(pairs, w.accept(t, w.ln4, name, c))
	}
	plain := pairs[0].clientTarget(w)
	plain.Local = netip.AddrPortFrom(plain.Local.Addr().Unmap(), plain.Local.Port())
	plain.Remote = netip.AddrPortFrom(plain.Remote.Addr().Unmap(), plain.Remote.Port())
	mapped := pairs[1].clientTarget(w)
	if !mapped.Local.Addr().Is4In6() {
		t.Fatalf("dual-stack socket's local address %s is not IPv4-mapped", mapped.Local)
	}
	res, err := sd.Close(context.Background(), []Target{plain, mapped})
	if err != nil {
		t.Fatal(err)
	}
	wantResult(t, res, Closed, Closed)
	for _, p := range pairs {
		wantAborted(t, p.name+" client", p.client)
		wantReset(t, p.name+" server", p.server)
	}
}

// A cancelled context fails the targets it did not try and closes nothing.
func TestSockDiagCancelled(t *testing.T) {
	w := newWorld(t)
	sd, _ := newSockDiag(t)
	p4, p6 := w.connect(t, w.ln4, "v4"), w.connect(t, w.ln6, "v6")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	res, err := sd.Close(ctx, []Target{p4.clientTarget(w), p6.serverTarget(w)})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("error %v, want context.Canceled", err)
	}
	wantResult(t, res, Failed, Failed)
	untouched(t, p4, p6)
}

// Invalid targets fail alone, before anything reaches the kernel.
func TestSockDiagInvalidTargets(t *testing.T) {
	w := newWorld(t)
	sd, _ := newSockDiag(t)
	p := w.connect(t, w.ln4, "v4")
	mixed := p.clientTarget(w)
	mixed.Remote = netip.MustParseAddrPort("[fd00::2]:80")
	noNetns := p.clientTarget(w)
	noNetns.NetnsCookie = 0
	res, err := sd.Close(context.Background(), []Target{mixed, {}, noNetns, p.clientTarget(w)})
	if !errors.Is(err, ErrInvalidTarget) {
		t.Errorf("error %v, want ErrInvalidTarget", err)
	}
	wantResult(t, res, Failed, Failed, Failed, Closed)
	wantAborted(t, "client", p.client)
}

// socketCookie is SO_COOKIE of a connection or listener (what the socket
// LB records as ebpf.Socket.Cookie).
func socketCookie(t *testing.T, c any) uint64 {
	t.Helper()
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var cookie uint64
	var serr error
	if err := rc.Control(func(fd uintptr) {
		cookie, serr = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_COOKIE)
	}); err != nil || serr != nil {
		t.Fatalf("SO_COOKIE: %v %v", err, serr)
	}
	return cookie
}

// tcpDiagPresent probes this kernel for a TCP sock_diag handler (built in
// on the host; modules on Debian).
func tcpDiagPresent(t *testing.T) bool {
	t.Helper()
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		t.Fatal(err)
	}
	d := &diagConn{fd: fd, buf: make([]byte, 8192), probed: map[uint8]error{}}
	defer d.close()
	err = d.probe(Target{Local: netip.MustParseAddrPort("10.0.0.1:1"), Remote: netip.MustParseAddrPort("10.0.0.2:1")})
	if err != nil && !errors.Is(err, ErrNotSupported) {
		t.Fatal(err)
	}
	return err == nil
}

// Without a TCP sock_diag handler every lookup fails with ENOENT; that must
// read as ErrNotSupported, once per family, never as "not found".
func TestSockDiagWithoutTCPDiag(t *testing.T) {
	w := newWorld(t)
	if tcpDiagPresent(t) {
		t.Skip("this kernel has a TCP sock_diag handler (the IPVS VM has none: vmtest -pkg ./conntrack/shed)")
	}
	index := NewNetnsIndex(NetnsIndexConfig{})
	defer index.Close()
	sd, err := NewSockDiag(index)
	if err != nil {
		t.Fatal(err)
	}
	a, b := w.connect(t, w.ln4, "v4-a"), w.connect(t, w.ln4, "v4-b")
	res, err := sd.Close(context.Background(), []Target{a.clientTarget(w), b.serverTarget(w)})
	wantResult(t, res, Failed, Failed)
	if !errors.Is(err, ErrNotSupported) {
		t.Fatalf("error %v, want ErrNotSupported", err)
	}
	if n := strings.Count(err.Error(), "no TCP sock_diag handler"); n != 2 {
		t.Errorf("error %q: want one line per namespace and family, 2 in all", err)
	}
	untouched(t, a, b)
}
