package shed

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netns"
)

// Target is one TCP socket on this node to close, seen from its own end:
// Local is the socket's own address, Remote its peer's. A client pod's
// socket has the pod address as Local and the backend as Remote; a backend
// pod's accepted socket the other way round.
type Target struct {
	// NetnsCookie is the socket's network namespace (SO_NETNS_COOKIE,
	// bpf_get_netns_cookie; ebpf.Socket.NetnsCookie).
	NetnsCookie uint64
	Local       netip.AddrPort
	Remote      netip.AddrPort
	// Cookie, when not zero, is the socket's cookie (SO_COOKIE,
	// bpf_get_socket_cookie; ebpf.Socket.Cookie): only that very socket is
	// closed, never a newer one that reuses its addresses. Required by
	// BPFIter, optional for SockDiag.
	Cookie uint64
}

func (t Target) String() string {
	return fmt.Sprintf("%s->%s@netns:%d", t.Local, t.Remote, t.NetnsCookie)
}

// Status is what happened to one Target.
type Status uint8

const (
	// Failed: the socket may still be open (see the error).
	Failed Status = iota
	// Closed: the socket was aborted.
	Closed
	// NotFound: no such open socket (it closed already, or its addresses
	// now belong to a socket with another cookie). Not an error: the
	// connection is gone either way.
	NotFound
)

func (s Status) String() string {
	switch s {
	case Closed:
		return "closed"
	case NotFound:
		return "not-found"
	default:
		return "failed"
	}
}

// Result counts what a Close call did; Status has one entry per target,
// in the targets' order.
type Result struct {
	Closed, NotFound, Failed int
	Status                   []Status
}

func newResult(n int) Result { return Result{Status: make([]Status, n)} }

func (r *Result) set(i int, s Status) {
	r.Status[i] = s
	switch s {
	case Closed:
		r.Closed++
	case NotFound:
		r.NotFound++
	default:
		r.Failed++
	}
}

// Closer closes TCP sockets on this node so that both ends see the
// connection end (see the package doc for what each end sees).
type Closer interface {
	// Close closes the targets, best effort: a failure for one target (a
	// namespace that is gone, a malformed target) fails only that target.
	// The error joins the failures; Result says what happened to each
	// target. A cancelled ctx fails the targets not yet tried.
	Close(ctx context.Context, targets []Target) (Result, error)
}

var (
	// ErrNetnsNotFound: no network namespace with that cookie exists any
	// more (or it was never seen on this node).
	ErrNetnsNotFound = errors.New("network namespace not found")
	// ErrInvalidTarget: a target's addresses are unset, or mix IPv4 and
	// IPv6.
	ErrInvalidTarget = errors.New("invalid target")
	// ErrNotSupported: the kernel cannot destroy sockets this way.
	ErrNotSupported = errors.New("socket destroy not supported by this kernel")
)

// validate normalizes a target's addresses (IPv4-mapped IPv6 to IPv4, as
// the kernel looks both up in the same table) and rejects what no socket
// can have.
func validate(t Target, needCookie bool) (Target, error) {
	if !t.Local.IsValid() || !t.Remote.IsValid() || t.Local.Port() == 0 || t.Remote.Port() == 0 {
		return t, fmt.Errorf("%w %s: addresses and ports must be set", ErrInvalidTarget, t)
	}
	if t.NetnsCookie == 0 {
		return t, fmt.Errorf("%w %s: no network namespace cookie", ErrInvalidTarget, t)
	}
	if needCookie && t.Cookie == 0 {
		return t, fmt.Errorf("%w %s: no socket cookie", ErrInvalidTarget, t)
	}
	l := netip.AddrPortFrom(t.Local.Addr().Unmap(), t.Local.Port())
	r := netip.AddrPortFrom(t.Remote.Addr().Unmap(), t.Remote.Port())
	if l.Addr().Is4() != r.Addr().Is4() {
		return t, fmt.Errorf("%w %s: mixes IPv4 and IPv6", ErrInvalidTarget, t)
	}
	if l.Addr().Zone() != "" || r.Addr().Zone() != "" {
		// sock_diag takes an interface index, resolved in the socket's
		// namespace; pod traffic never needs it.
		return t, fmt.Errorf("%w %s: scoped addresses are not supported", ErrInvalidTarget, t)
	}
	t.Local, t.Remote = l, r
	return t, nil
}

// groupByNetns returns the targets' indexes per namespace cookie, the
// cookies in order of first appearance. Invalid targets (validate) are
// marked failed in res and left out.
func groupByNetns(targets []Target, needCookie bool, res *Result, errs *[]error) (order []uint64, groups map[uint64][]int, norm []Target) {
	groups = map[uint64][]int{}
	norm = make([]Target, len(targets))
	for i, t := range targets {
		n, err := validate(t, needCookie)
		if err != nil {
			res.set(i, Failed)
			*errs = append(*errs, err)
			continue
		}
		norm[i] = n
		if _, ok := groups[n.NetnsCookie]; !ok {
			order = append(order, n.NetnsCookie)
		}
		groups[n.NetnsCookie] = append(groups[n.NetnsCookie], i)
	}
	return order, groups, norm
}

// closeByNetns is the frame both closers share: the targets validated and
// grouped by namespace, one handle per namespace, and per namespace either
// one failure for all its targets (the context ended, the namespace is
// gone) or closeIn with the namespace's handle, the indexes of its targets
// and the normalized targets, recording outcomes in res and errs.
func closeByNetns(ctx context.Context, index *NetnsIndex, targets []Target, needCookie bool,
	closeIn func(h netns.NsHandle, nc uint64, idx []int, norm []Target, res *Result, errs *[]error)) (Result, error) {
	res := newResult(len(targets))
	var errs []error
	order, groups, norm := groupByNetns(targets, needCookie, &res, &errs)
	handles, nsErrs := index.OpenAll(order)
	defer func() {
		for _, h := range handles {
			_ = h.Close()
		}
	}()
	for _, nc := range order {
		idx := groups[nc]
		if err := ctx.Err(); err != nil {
			failAll(&res, &errs, idx, fmt.Errorf("shed: %d targets in netns %d not tried: %w", len(idx), nc, err))
			continue
		}
		if err := nsErrs[nc]; err != nil {
			failAll(&res, &errs, idx, fmt.Errorf("shed: %d targets: %w", len(idx), err))
			continue
		}
		closeIn(handles[nc], nc, idx, norm, &res, &errs)
	}
	return res, errors.Join(errs...)
}
