package shed

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// SockDiag is the Closer over sock_diag SOCK_DESTROY (CONFIG_INET_DIAG_DESTROY,
// Linux 4.5+; built in on the host and the IPVS VM's Debian kernel). It
// needs CAP_NET_ADMIN over each target's namespace.
//
// For each namespace it opens one NETLINK_SOCK_DIAG socket inside it (the
// kernel looks sockets up in the netlink socket's namespace). For each
// target it first asks for the socket (an exact SOCK_DIAG_BY_FAMILY
// request), because the kernel's lookup (inet_diag_find_one_icsk) falls
// back to a listening socket on the local port when no connection matches.
// 6.1 and 6.18 both answer a destroy of that listener with EINVAL (and
// the listener lives on), so without the check a connection that is gone
// already would read as a failure; and a backend's listener is never put
// at the mercy of tcp_abort, which has code to stop listeners. Then it
// destroys the socket it found by that socket's cookie, so a socket that
// replaced it meanwhile is safe too.
type SockDiag struct {
	index *NetnsIndex
	// timeout bounds each netlink round trip (the kernel answers at once;
	// this only guards against a wedged socket).
	timeout time.Duration
}

var _ Closer = (*SockDiag)(nil)

// NewSockDiag returns a SockDiag finding namespaces through index.
func NewSockDiag(index *NetnsIndex) (*SockDiag, error) {
	if index == nil {
		return nil, errors.New("shed: NewSockDiag needs a NetnsIndex")
	}
	return &SockDiag{index: index, timeout: 5 * time.Second}, nil
}

// Close implements Closer.
func (s *SockDiag) Close(ctx context.Context, targets []Target) (Result, error) {
	return closeByNetns(ctx, s.index, targets, false, func(h netns.NsHandle, nc uint64, idx []int, norm []Target, res *Result, errs *[]error) {
		d, err := s.openDiag(h)
		if err != nil {
			failAll(res, errs, idx, fmt.Errorf("shed: %d targets in netns %d: %w", len(idx), nc, err))
			return
		}
		defer d.close()
		probeFailed := map[error]int{} // one error per family, not per target
		for n, i := range idx {
			if err := ctx.Err(); err != nil {
				failAll(res, errs, idx[n:], fmt.Errorf("shed: %d targets in netns %d not tried: %w", len(idx)-n, nc, err))
				break
			}
			st, err := d.destroy(norm[i])
			res.set(i, st)
			switch {
			case err == nil:
			case d.isProbeError(err):
				probeFailed[err]++
			default:
				*errs = append(*errs, fmt.Errorf("shed: close %s: %w", norm[i], err))
			}
		}
		for err, n := range probeFailed {
			*errs = append(*errs, fmt.Errorf("shed: %d targets in netns %d: %w", n, nc, err))
		}
	})
}

func failAll(res *Result, errs *[]error, idx []int, err error) {
	for _, i := range idx {
		res.set(i, Failed)
	}
	*errs = append(*errs, err)
}

// diagConn is a NETLINK_SOCK_DIAG socket bound to one namespace.
type diagConn struct {
	fd  int
	seq uint32
	buf []byte
	// probed holds each address family's probe result (see probe).
	probed map[uint8]error
}

func (s *SockDiag) openDiag(h netns.NsHandle) (*diagConn, error) {
	var fd int
	err := inNetns(h, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open sock_diag socket: %w", err)
	}
	tv := unix.NsecToTimeval(s.timeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("sock_diag socket timeout: %w", err)
	}
	return &diagConn{fd: fd, buf: make([]byte, 8192), probed: map[uint8]error{}}, nil
}

func (d *diagConn) close() { _ = unix.Close(d.fd) }

// destroy looks t up and aborts it unless it is a listener, in TIME_WAIT
// or closed (the connection is gone: NotFound), or has a cookie other than
// t.Cookie (another socket took its addresses: NotFound).
func (d *diagConn) destroy(t Target) (Status, error) {
	if err := d.probe(t); err != nil {
		return Failed, err
	}
	info, errno, err := d.roundTrip(unix.SOCK_DIAG_BY_FAMILY, 0, t, t.Cookie)
	switch {
	case err != nil:
		return Failed, fmt.Errorf("look up: %w", err)
	case errno == unix.ENOENT || errno == unix.ESTALE:
		return NotFound, nil
	case errno != 0:
		return Failed, fmt.Errorf("look up: %w", errno)
	case info == nil:
		return Failed, errors.New("look up: no answer")
	}
	switch info.state {
	case tcpListen, tcpTimeWait, tcpClose:
		return NotFound, nil
	}
	_, errno, err = d.roundTrip(unix.SOCK_DESTROY, unix.NLM_F_ACK, t, info.cookie)
	switch {
	case err != nil:
		return Failed, fmt.Errorf("destroy: %w", err)
	case errno == 0:
		return Closed, nil
	case errno == unix.ENOENT || errno == unix.ESTALE:
		return NotFound, nil // closed between the two requests
	case errno == unix.EOPNOTSUPP:
		return Failed, fmt.Errorf("destroy: %w (CONFIG_INET_DIAG_DESTROY): %w", ErrNotSupported, errno)
	default:
		return Failed, fmt.Errorf("destroy: %w", errno)
	}
}

// probe checks, once per family, that the kernel has a TCP sock_diag
// handler: without one (Debian builds inet_diag and tcp_diag as modules,
// normally autoloaded; the test VM's initramfs lacks them) every lookup
// fails with ENOENT, which would otherwise read as "socket not found". An
// empty dump (no states asked for) ends in NLMSG_DONE when the handler is
// there.
func (d *diagConn) probe(t Target) error {
	fam := uint8(unix.AF_INET6)
	if t.Local.Addr().Is4() {
		fam = unix.AF_INET
	}
	if err, ok := d.probed[fam]; ok {
		return err
	}
	err := d.dumpNothing(t)
	if errors.Is(err, unix.ENOENT) {
		err = fmt.Errorf("%w: no TCP sock_diag handler for address family %d (kernel modules inet_diag, tcp_diag): %w", ErrNotSupported, fam, err)
	} else if err != nil {
		err = fmt.Errorf("probe sock_diag: %w", err)
	}
	d.probed[fam] = err
	return err
}

func (d *diagConn) isProbeError(err error) bool {
	for _, p := range d.probed {
		if p != nil && p == err {
			return true
		}
	}
	return false
}

func (d *diagConn) dumpNothing(t Target) error {
	d.seq++
	req := diagRequest(unix.SOCK_DIAG_BY_FAMILY, unix.NLM_F_DUMP, d.seq, Target{Local: t.Local, Remote: t.Remote}, 0)
	native.PutUint32(req[nlmsgHdrLen+4:], 0) // idiag_states: none
	if err := unix.Sendto(d.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	for range 16 {
		n, _, err := unix.Recvfrom(d.fd, d.buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("receive: %w", err)
		}
		done, errno, err := parseDumpEnd(d.buf[:n], d.seq)
		switch {
		case err != nil:
			return err
		case errno != 0:
			return errno
		case done:
			return nil
		}
	}
	return errors.New("no end to an empty dump")
}

// roundTrip sends one request and waits for its answer.
func (d *diagConn) roundTrip(typ, flags uint16, t Target, cookie uint64) (*diagInfo, syscall.Errno, error) {
	d.seq++
	req := diagRequest(typ, flags, d.seq, t, cookie)
	if err := unix.Sendto(d.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, 0, fmt.Errorf("send: %w", err)
	}
	for range 16 { // stale answers to earlier requests are skipped, boundedly
		n, _, err := unix.Recvfrom(d.fd, d.buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, 0, fmt.Errorf("receive: %w", err)
		}
		info, errno, ok, err := parseReply(d.buf[:n], d.seq)
		if err != nil {
			return nil, 0, err
		}
		if ok {
			return info, errno, nil
		}
	}
	return nil, 0, errors.New("no answer to our request")
}
