package shed

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard/switchyard/test/netnstest"
	"golang.org/x/sys/unix"
)

const ioTimeout = 3 * time.Second

// world is a client namespace and a server namespace joined by a veth,
// with a TCP listener per family in the server namespace.
type world struct {
	cli, srv             *netnstest.NS
	cliCookie, srvCookie uint64
	ln4, ln6             *net.TCPListener
}

func newWorld(t *testing.T) *world {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces and socket destroy")
	}
	w := &world{cli: netnstest.New(t, "sy-shc"), srv: netnstest.New(t, "sy-shs")}
	netnstest.Veth(t, w.cli, w.srv, "c0", "s0", netip.MustParsePrefix("10.0.0.1/24"), netip.MustParsePrefix("10.0.0.2/24"))
	netnstest.AddAddr(t, w.cli, "c0", netip.MustParsePrefix("fd00::1/64"))
	netnstest.AddAddr(t, w.srv, "s0", netip.MustParsePrefix("fd00::2/64"))
	w.ln4 = listen(t, w.srv, "tcp4", "10.0.0.2:0")
	w.ln6 = listen(t, w.srv, "tcp6", "[fd00::2]:0")
	w.cliCookie, w.srvCookie = nsCookie(t, w.cli), nsCookie(t, w.srv)
	if w.cliCookie == w.srvCookie {
		t.Fatalf("client and server namespaces share cookie %d", w.cliCookie)
	}
	return w
}

func listen(t *testing.T, ns *netnstest.NS, network, addr string) *net.TCPListener {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	}); err != nil {
		t.Fatalf("listen %s %s in %s: %v", network, addr, ns.Name(), err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

// nsCookie is the namespace's cookie as a socket made in it reports it
// (what bpf_get_netns_cookie records for the socket LB's sockets).
func nsCookie(t *testing.T, ns *netnstest.NS) uint64 {
	t.Helper()
	var c uint64
	if err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		c, err = SocketNetnsCookie(fd)
		return err
	}); err != nil {
		t.Fatalf("netns cookie of %s: %v", ns.Name(), err)
	}
	return c
}

// pair is one held TCP connection: the client pod's socket and the
// server pod's accepted one.
type pair struct {
	name           string
	client, server net.Conn
}

// connect dials ln from the client namespace, accepts, and proves the
// connection with one round trip.
func (w *world) connect(t *testing.T, ln *net.TCPListener, name string) pair {
	t.Helper()
	c, err := netnstest.Dial(w.cli, "tcp", ln.Addr().String(), ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return w.accept(t, ln, name, c)
}

func (w *world) accept(t *testing.T, ln *net.TCPListener, name string, c net.Conn) pair {
	t.Helper()
	if err := ln.SetDeadline(time.Now().Add(ioTimeout)); err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatalf("accept on %s: %v", ln.Addr(), err)
	}
	t.Cleanup(func() { s.Close() })
	p := pair{name: name, client: c, server: s}
	if c.LocalAddr().String() != s.RemoteAddr().String() {
		t.Fatalf("%s: accepted %s, dialed from %s (another client?)", name, s.RemoteAddr(), c.LocalAddr())
	}
	if err := p.pingPong("hello"); err != nil {
		t.Fatal(err)
	}
	return p
}

// clientTarget and serverTarget name the pair's socket in the client or
// server namespace.
func (p pair) clientTarget(w *world) Target {
	return Target{NetnsCookie: w.cliCookie, Local: addrPort(p.client.LocalAddr()), Remote: addrPort(p.client.RemoteAddr())}
}

func (p pair) serverTarget(w *world) Target {
	return Target{NetnsCookie: w.srvCookie, Local: addrPort(p.server.LocalAddr()), Remote: addrPort(p.server.RemoteAddr())}
}

func addrPort(a net.Addr) netip.AddrPort { return a.(*net.TCPAddr).AddrPort() }

// pingPong sends msg from the client, checks it arrives at the server,
// answers and checks the answer at the client.
func (p pair) pingPong(msg string) error {
	if err := sendLine(p.client, msg); err != nil {
		return fmt.Errorf("%s: client send: %w", p.name, err)
	}
	if got, err := readLine(p.server); err != nil || got != msg {
		return fmt.Errorf("%s: server got %q, %v; want %q", p.name, got, err, msg)
	}
	if err := sendLine(p.server, "re: "+msg); err != nil {
		return fmt.Errorf("%s: server send: %w", p.name, err)
	}
	if got, err := readLine(p.client); err != nil || got != "re: "+msg {
		return fmt.Errorf("%s: client got %q, %v; want %q", p.name, got, err, "re: "+msg)
	}
	return nil
}

func sendLine(c net.Conn, msg string) error {
	if err := c.SetWriteDeadline(time.Now().Add(ioTimeout)); err != nil {
		return err
	}
	_, err := c.Write([]byte(msg + "\n"))
	return err
}

// readLine reads up to a newline; lines here are tiny and one at a time,
// so nothing is read past it.
func readLine(c net.Conn) (string, error) {
	if err := c.SetReadDeadline(time.Now().Add(ioTimeout)); err != nil {
		return "", err
	}
	var got strings.Builder
	b := make([]byte, 1)
	for got.Len() < 1024 {
		n, err := c.Read(b)
		if n == 1 {
			if b[0] == '\n' {
				return got.String(), nil
			}
			got.WriteByte(b[0])
		}
		if err != nil {
			return got.String(), err
		}
	}
	return got.String(), errors.New("line too long")
}

// wantAborted checks the end whose socket was destroyed: its next read
// fails with ECONNABORTED, the one after that sees EOF.
func wantAborted(t *testing.T, name string, c net.Conn) {
	t.Helper()
	if _, err := readLine(c); !errors.Is(err, syscall.ECONNABORTED) {
		t.Errorf("%s: read on the destroyed socket: %v, want ECONNABORTED", name, err)
	}
	if _, err := readLine(c); err != io.EOF {
		t.Errorf("%s: second read on the destroyed socket: %v, want EOF", name, err)
	}
}

// wantReset checks the peer of a destroyed socket: the RST makes its next
// read fail with ECONNRESET, and a write after that with EPIPE.
func wantReset(t *testing.T, name string, c net.Conn) {
	t.Helper()
	if _, err := readLine(c); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("%s: read on the peer of the destroyed socket: %v, want ECONNRESET", name, err)
	}
	if err := sendLine(c, "anyone?"); !errors.Is(err, syscall.EPIPE) {
		t.Errorf("%s: write on the peer of the destroyed socket: %v, want EPIPE", name, err)
	}
}

// goneNetnsCookie returns the cookie of a namespace that existed and was
// deleted again (its subtest's cleanup removes it), after index saw it.
func goneNetnsCookie(t *testing.T, index *NetnsIndex) uint64 {
	t.Helper()
	var cookie uint64
	t.Run("short-lived-netns", func(t *testing.T) {
		ns := netnstest.New(t, "sy-shg")
		cookie = nsCookie(t, ns)
		if index != nil {
			h, err := index.Open(cookie)
			if err != nil {
				t.Fatalf("index does not find a live namespace: %v", err)
			}
			h.Close()
		}
	})
	if cookie == 0 {
		t.Fatal("no cookie for the short-lived namespace")
	}
	return cookie
}
