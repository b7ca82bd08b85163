package netnstest

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// SCTP support: one-to-one style (SOCK_STREAM, IPPROTO_SCTP) sockets, which
// bind, listen, accept, connect, read and write like TCP. The standard
// library has no SCTP, so the sockets are made with raw syscalls, set
// non-blocking and wrapped in an *os.File: the runtime poller then serves
// Accept/Read/Write, deadlines bound every wait, and Close wakes blocked
// goroutines (a plain blocking accept(2) would not return on close).
//
// Each message is one write and the echo protocol is line based, so the
// TCP echo server code (serveTCP) and Exchange work on these connections
// unchanged.

// SCTPSupported reports whether this kernel can create SCTP sockets: nil,
// or the socket(2) error (EPROTONOSUPPORT or ESOCKTNOSUPPORT without the
// sctp module). Tests use it to skip, with that reason, where SCTP is
// missing.
func SCTPSupported() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_SCTP)
	if err != nil {
		return fmt.Errorf("socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP): %w", err)
	}
	unix.Close(fd)
	return nil
}

// IsNoSCTP reports whether err says the kernel has no SCTP at all (as
// opposed to SCTP failing on the way).
func IsNoSCTP(err error) bool {
	return errors.Is(err, unix.EPROTONOSUPPORT) || errors.Is(err, unix.ESOCKTNOSUPPORT)
}

// SCTPAddr is an SCTP endpoint's primary address.
type SCTPAddr struct{ netip.AddrPort }

// Network is "sctp".
func (SCTPAddr) Network() string { return "sctp" }

// StartSCTPEchoServer is StartEchoServer for SCTP: it listens on addr
// ("ip:port", port 0 picks one) inside ns (nil = root) and answers every
// line with "ID REMOTEADDR\n", REMOTEADDR being the peer's primary address.
func StartSCTPEchoServer(t testing.TB, ns *NS, addr, id string) *EchoServer {
	t.Helper()
	s := &EchoServer{ID: id, conns: map[net.Conn]struct{}{}}
	err := ns.Do(func() error {
		var err error
		s.ln, err = listenSCTP(addr)
		return err
	})
	if err != nil {
		t.Fatalf("netnstest: echo server %s on sctp %s in %s: %v", id, addr, ns.Name(), err)
	}
	s.Addr = s.ln.Addr().String()
	s.wg.Add(1)
	go s.serveTCP()
	t.Cleanup(s.stop)
	return s
}

// DialSCTP sets up an SCTP association from inside ns (nil = root) to addr
// ("ip:port"), waiting at most timeout. The connection is a net.Conn, so
// Exchange works on it.
func DialSCTP(ns *NS, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() error {
		var err error
		c, err = dialSCTP(addr, timeout)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial sctp %s from %s: %w", addr, ns.Name(), err)
	}
	return c, nil
}

// SCTPRequest is Request for SCTP: one association, one line out, the first
// reply line back, all within timeout.
func SCTPRequest(ns *NS, addr, msg string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	c, err := DialSCTP(ns, addr, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	reply, err := Exchange(c, msg, time.Until(deadline))
	if err != nil {
		return "", fmt.Errorf("request to sctp %s from %s: %w", addr, ns.Name(), err)
	}
	return reply, nil
}

// sctpSocket creates a non-blocking one-to-one SCTP socket of ap's family
// in the calling thread's namespace.
func sctpSocket(ap netip.AddrPort) (int, unix.Sockaddr, error) {
	family := unix.AF_INET
	var sa unix.Sockaddr = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	if ap.Addr().Is6() && !ap.Addr().Is4In6() {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_SCTP)
	if err != nil {
		return -1, nil, fmt.Errorf("socket: %w", err)
	}
	return fd, sa, nil
}

func parseAddrPort(addr string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("sctp address %q: %w", addr, err)
	}
	return ap, nil
}

func sockaddrAddr(sa unix.Sockaddr) SCTPAddr {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return SCTPAddr{netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))}
	case *unix.SockaddrInet6:
		return SCTPAddr{netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port))}
	}
	return SCTPAddr{}
}

func listenSCTP(addr string) (net.Listener, error) {
	ap, err := parseAddrPort(addr)
	if err != nil {
		return nil, err
	}
	fd, sa, err := sctpSocket(ap)
	if err != nil {
		return nil, err
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("SO_REUSEADDR: %w", err)
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind %s: %w", ap, err)
	}
	if err := unix.Listen(fd, 128); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("listen %s: %w", ap, err)
	}
	local, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("getsockname: %w", err)
	}
	return &sctpListener{f: os.NewFile(uintptr(fd), "sctp-listener"), addr: sockaddrAddr(local)}, nil
}

type sctpListener struct {
	f    *os.File
	addr SCTPAddr
}

func (l *sctpListener) Accept() (net.Conn, error) {
	rc, err := l.f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var (
		nfd    int
		peer   unix.Sockaddr
		accErr error
	)
	err = rc.Read(func(fd uintptr) bool {
		nfd, peer, accErr = unix.Accept4(int(fd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		return !errors.Is(accErr, unix.EAGAIN)
	})
	if err != nil {
		return nil, err // closed
	}
	if accErr != nil {
		return nil, fmt.Errorf("accept: %w", accErr)
	}
	return &sctpConn{File: os.NewFile(uintptr(nfd), "sctp"), local: l.addr, remote: sockaddrAddr(peer)}, nil
}

func (l *sctpListener) Close() error   { return l.f.Close() }
func (l *sctpListener) Addr() net.Addr { return l.addr }

func dialSCTP(addr string, timeout time.Duration) (net.Conn, error) {
	ap, err := parseAddrPort(addr)
	if err != nil {
		return nil, err
	}
	fd, sa, err := sctpSocket(ap)
	if err != nil {
		return nil, err
	}
	if err := unix.Connect(fd, sa); err != nil && !errors.Is(err, unix.EINPROGRESS) {
		unix.Close(fd)
		return nil, fmt.Errorf("connect: %w", err)
	}
	f := os.NewFile(uintptr(fd), "sctp")
	fail := func(err error) (net.Conn, error) {
		f.Close()
		return nil, err
	}
	if err := f.SetWriteDeadline(time.Now().Add(timeout)); err != nil {
		return fail(fmt.Errorf("set deadline: %w", err))
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return fail(err)
	}
	// The association is up once the socket has a peer (getpeername stops
	// failing with ENOTCONN); a failed INIT (ABORT, unreachable, retries
	// exhausted) shows as SO_ERROR.
	var connErr error
	var peer unix.Sockaddr
	err = rc.Write(func(fd uintptr) bool {
		if soerr, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR); err != nil || soerr != 0 {
			connErr = err
			if err == nil {
				connErr = unix.Errno(soerr)
			}
			return true
		}
		p, err := unix.Getpeername(int(fd))
		if err == nil {
			peer = p
			return true
		}
		return false
	})
	if err == nil {
		err = connErr
	}
	if err != nil {
		return fail(fmt.Errorf("connect: %w", err))
	}
	if err := f.SetWriteDeadline(time.Time{}); err != nil {
		return fail(fmt.Errorf("clear deadline: %w", err))
	}
	local, err := unix.Getsockname(fd)
	if err != nil {
		return fail(fmt.Errorf("getsockname: %w", err))
	}
	return &sctpConn{File: f, local: sockaddrAddr(local), remote: sockaddrAddr(peer)}, nil
}

// sctpConn is a one-to-one SCTP association as a net.Conn. Read and Write
// (and the deadlines) come from *os.File; read(2)/write(2) on such a socket
// carry the association's data like recvmsg/sendmsg without ancillary data.
type sctpConn struct {
	*os.File
	local, remote SCTPAddr
}

func (c *sctpConn) LocalAddr() net.Addr  { return c.local }
func (c *sctpConn) RemoteAddr() net.Addr { return c.remote }

var (
	_ net.Conn     = (*sctpConn)(nil)
	_ net.Listener = (*sctpListener)(nil)
)
