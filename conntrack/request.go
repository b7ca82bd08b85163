package conntrack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// requester sends ctnetlink dump and GET requests on one socket and reads
// the replies itself: the library's NetlinkRequest.Execute waits for each
// reply before the next request, and GETs for a thousand flows are much
// cheaper sent many per sendmsg. Not safe for concurrent use.
type requester struct {
	s   *nl.NetlinkSocket
	buf []byte
	seq uint32
	// batch is how many GETs go into one sendmsg: every reply must fit
	// in the socket's receive buffer until we read it (see get).
	batch int
	// reasked counts GETs sent again because their reply was dropped.
	reasked int
}

// requestTimeout bounds the wait for each reply datagram.
const requestTimeout = 10 * time.Second

// getReplyCost is what one GET reply may occupy in the receive buffer,
// with a margin: on Linux 6.18, 256 replies fit in the default 212992
// bytes (about 830 each once netlink trims them), 512 did not.
const getReplyCost = 2 << 10

func newRequester(s *nl.NetlinkSocket) *requester {
	r := &requester{s: s, buf: make([]byte, 64<<10), batch: 4}
	if rcvbuf, err := unix.GetsockoptInt(s.GetFd(), unix.SOL_SOCKET, unix.SO_RCVBUF); err == nil {
		r.batch = min(max(rcvbuf/getReplyCost, 4), 512)
	}
	return r
}

func (r *requester) nextSeq() uint32 {
	r.seq++
	if r.seq == 0 { // 0 is what the kernel uses for events
		r.seq++
	}
	return r.seq
}

func (r *requester) send(b []byte) error {
	for {
		err := unix.Sendto(r.s.GetFd(), b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// errWouldBlock is recv's answer when nothing is queued and wait is 0.
var errWouldBlock = errors.New("no reply queued")

// recv reads one datagram, waiting up to wait for it (0: not at all).
// The messages point into r.buf: use them before the next recv. An
// overflow of the receive buffer is reported as unix.ENOBUFS.
func (r *requester) recv(wait time.Duration) ([]syscall.NetlinkMessage, error) {
	fd := r.s.GetFd()
	deadline := time.Now().Add(wait)
	for {
		n, _, flags, _, err := unix.Recvmsg(fd, r.buf, nil, 0)
		switch {
		case err == nil:
			if flags&unix.MSG_TRUNC != 0 {
				return nil, fmt.Errorf("netlink datagram larger than %d bytes", len(r.buf))
			}
			msgs, err := syscall.ParseNetlinkMessage(r.buf[:n])
			if err != nil {
				return nil, fmt.Errorf("parse netlink datagram: %w", err)
			}
			return msgs, nil
		case errors.Is(err, unix.EINTR):
			continue
		case !errors.Is(err, unix.EAGAIN):
			return nil, err
		}
		left := time.Until(deadline)
		if left <= 0 {
			if wait == 0 {
				return nil, errWouldBlock
			}
			return nil, fmt.Errorf("no reply within %v", wait)
		}
		// The socket is non-blocking (the nl package makes it so);
		// poll for the wait.
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(pfd, int(left.Milliseconds())+1); err != nil && !errors.Is(err, unix.EINTR) {
			return nil, fmt.Errorf("poll: %w", err)
		}
	}
}

// nlError is the errno of an NLMSG_ERROR message (0 for an ACK).
func nlError(m syscall.NetlinkMessage) (unix.Errno, error) {
	if len(m.Data) < 4 {
		return 0, fmt.Errorf("%w: short NLMSG_ERROR", errMalformed)
	}
	return unix.Errno(-int32(nl.NativeEndian().Uint32(m.Data[:4]))), nil
}

// dump reads the whole conntrack table, IPv4 and IPv6 at once (nfgenmsg
// family AF_UNSPEC), calling fn for each entry.
func (r *requester) dump(fn func(Flow)) error {
	seq := r.nextSeq()
	req := nl.NewNetlinkRequest(unix.NFNL_SUBSYS_CTNETLINK<<8|nl.IPCTNL_MSG_CT_GET, unix.NLM_F_DUMP)
	req.Seq = seq
	req.AddData(&nl.Nfgenmsg{NfgenFamily: unix.AF_UNSPEC, Version: nl.NFNETLINK_V0})
	if err := r.send(req.Serialize()); err != nil {
		return fmt.Errorf("conntrack: send dump request: %w", err)
	}
	for {
		msgs, err := r.recv(requestTimeout)
		if err != nil {
			return fmt.Errorf("conntrack: read dump: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Seq != seq {
				continue // a late reply to an abandoned request
			}
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return nil
			case unix.NLMSG_ERROR:
				errno, err := nlError(m)
				if err == nil {
					err = errno
				}
				return fmt.Errorf("conntrack: dump: %w", err)
			}
			fl, _, err := parseFlow(m.Data)
			if err != nil {
				return fmt.Errorf("conntrack: dump: %w", err)
			}
			fn(fl)
		}
	}
}

// ErrInvalidFlow is wrapped by GetFlows' error for a flow that does not
// name one entry (see ValidateMark: the same rules apply).
var ErrInvalidFlow = errors.New("invalid conntrack flow to look up")

// GetFlows reads the entries of flows afresh, one IPCTNL_MSG_CT_GET per
// flow by its original tuple (zone 0), many requests per sendmsg, and
// returns those that still exist in flows' order: current timer (for
// Flow.Idle), mark and TCP state. Entries that are gone are left out.
// Flows that do not name one entry fail with ErrInvalidFlow before
// anything is sent.
func (n *Netlink) GetFlows(flows []Flow) ([]Flow, error) {
	return newRequester(n.upd.Socket).get(flows)
}

// get looks up each flow's entry by its original tuple (IPCTNL_MSG_CT_GET
// in zone 0) and returns the entries found, fresh, in flows' order;
// entries that are gone (ENOENT) are left out.
//
// The kernel answers a GET while our sendmsg runs (nfnetlink handles
// requests synchronously), so after sending a batch all its replies are
// queued: read them without waiting. A reply that did not fit in the
// receive buffer is dropped (the socket then reports ENOBUFS); those
// flows are asked again, in smaller batches.
func (r *requester) get(flows []Flow) ([]Flow, error) {
	for _, fl := range flows {
		if err := checkOrig(fl); err != nil {
			return nil, fmt.Errorf("conntrack: get: %w: %w", ErrInvalidFlow, err)
		}
	}
	type answer struct {
		fl    Flow
		found bool
		err   error
	}
	answers := make([]*answer, len(flows))
	pending := make([]int, len(flows))
	for i := range pending {
		pending[i] = i
	}
	batch := r.batch
	var msg []byte
	for len(pending) > 0 {
		chunk := pending[:min(batch, len(pending))]
		bySeq := make(map[uint32]int, len(chunk))
		msg = msg[:0]
		for _, i := range chunk {
			seq := r.nextSeq()
			msg = appendGetRequest(msg, seq, flows[i])
			bySeq[seq] = i
		}
		if err := r.send(msg); err != nil {
			return nil, fmt.Errorf("conntrack: send %d GET requests: %w", len(chunk), err)
		}
		overflow := false
		wait := time.Duration(0)
		for len(bySeq) > 0 {
			msgs, err := r.recv(wait)
			if errors.Is(err, errWouldBlock) {
				if overflow {
					break // the rest were dropped: ask again
				}
				// Not expected (replies come synchronously), but
				// wait rather than give up on a slower kernel.
				wait = requestTimeout
				continue
			}
			if errors.Is(err, unix.ENOBUFS) {
				overflow = true
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("conntrack: read GET replies: %w", err)
			}
			for _, m := range msgs {
				i, ok := bySeq[m.Header.Seq]
				if !ok {
					continue
				}
				if m.Header.Type == unix.NLMSG_ERROR {
					errno, err := nlError(m)
					switch {
					case err != nil:
						return nil, fmt.Errorf("conntrack: get %s: %w", flows[i], err)
					case errno == unix.ENOENT:
						answers[i] = &answer{}
					case errno == unix.ENOBUFS || errno == unix.EAGAIN:
						overflow = true
						continue // ask again
					default:
						answers[i] = &answer{err: fmt.Errorf("conntrack: get %s: %w", flows[i], errno)}
					}
					delete(bySeq, m.Header.Seq)
					continue
				}
				fl, _, err := parseFlow(m.Data)
				if err != nil {
					return nil, fmt.Errorf("conntrack: get %s: %w", flows[i], err)
				}
				answers[i] = &answer{fl: fl, found: true}
				delete(bySeq, m.Header.Seq)
			}
		}
		rest := pending[len(chunk):]
		if len(bySeq) > 0 {
			if len(bySeq) == len(chunk) && batch == 1 {
				return nil, fmt.Errorf("conntrack: get %s: reply dropped even alone (receive buffer too small)", flows[chunk[0]])
			}
			batch = max(1, batch/2)
			var again []int
			for _, i := range chunk {
				if answers[i] == nil {
					again = append(again, i)
				}
			}
			r.reasked += len(again)
			rest = append(again, rest...)
		}
		pending = rest
	}
	var (
		out  []Flow
		errs []error
	)
	for _, a := range answers {
		switch {
		case a.err != nil:
			errs = append(errs, a.err)
		case a.found:
			out = append(out, a.fl)
		}
	}
	return out, errors.Join(errs...)
}

// appendGetRequest appends the IPCTNL_MSG_CT_GET request for fl's entry
// (the nfgenmsg and origTupleAttr's CTA_TUPLE_ORIG; no ACK: the reply or
// an error is the answer). Encoded by hand: building it with nl.RtAttr
// trees cost 37 allocations per flow, a third of a 1000-flow GetFlows.
func appendGetRequest(b []byte, seq uint32, fl Flow) []byte {
	ne := nl.NativeEndian()
	start := len(b)
	fam, srcT, dstT := uint8(unix.AF_INET), uint16(nl.CTA_IP_V4_SRC), uint16(nl.CTA_IP_V4_DST)
	if fl.Orig.Src.Addr().Is6() {
		fam, srcT, dstT = unix.AF_INET6, nl.CTA_IP_V6_SRC, nl.CTA_IP_V6_DST
	}
	b = append(b, make([]byte, unix.NLMSG_HDRLEN)...)
	b = append(b, fam, nl.NFNETLINK_V0, 0, 0)
	orig := len(b)
	b = appendAttrHeader(b, unix.NLA_F_NESTED|nl.CTA_TUPLE_ORIG)
	ip := len(b)
	b = appendAttrHeader(b, unix.NLA_F_NESTED|nl.CTA_TUPLE_IP)
	b = appendAttr(b, srcT, fl.Orig.Src.Addr().AsSlice())
	b = appendAttr(b, dstT, fl.Orig.Dst.Addr().AsSlice())
	ne.PutUint16(b[ip:], uint16(len(b)-ip))
	proto := len(b)
	b = appendAttrHeader(b, unix.NLA_F_NESTED|nl.CTA_TUPLE_PROTO)
	b = appendAttr(b, nl.CTA_PROTO_NUM, []byte{protoNumber(fl.Protocol)})
	b = appendAttr(b, nl.CTA_PROTO_SRC_PORT, binary.BigEndian.AppendUint16(nil, fl.Orig.Src.Port()))
	b = appendAttr(b, nl.CTA_PROTO_DST_PORT, binary.BigEndian.AppendUint16(nil, fl.Orig.Dst.Port()))
	ne.PutUint16(b[proto:], uint16(len(b)-proto))
	ne.PutUint16(b[orig:], uint16(len(b)-orig))

	ne.PutUint32(b[start:], uint32(len(b)-start))
	ne.PutUint16(b[start+4:], unix.NFNL_SUBSYS_CTNETLINK<<8|nl.IPCTNL_MSG_CT_GET)
	ne.PutUint16(b[start+6:], unix.NLM_F_REQUEST)
	ne.PutUint32(b[start+8:], seq)
	ne.PutUint32(b[start+12:], 0) // port id: the kernel fills it in
	return b
}

// appendAttrHeader starts a nested attribute; its length is patched in
// once its children are appended.
func appendAttrHeader(b []byte, typ uint16) []byte {
	b = append(b, 0, 0, 0, 0)
	nl.NativeEndian().PutUint16(b[len(b)-2:], typ)
	return b
}

// appendAttr appends one attribute and its padding.
func appendAttr(b []byte, typ uint16, val []byte) []byte {
	ne := nl.NativeEndian()
	start := len(b)
	b = append(b, 0, 0, 0, 0)
	ne.PutUint16(b[start:], uint16(unix.SizeofNlAttr+len(val)))
	ne.PutUint16(b[start+2:], typ)
	b = append(b, val...)
	return append(b, make([]byte, nlaAlign(len(val))-len(val))...)
}
