package shed

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// sock_diag wire format (include/uapi/linux/inet_diag.h). Ports and
// addresses are big-endian, everything else native.
const (
	nlmsgHdrLen    = 16
	inetDiagReqLen = 56 // struct inet_diag_req_v2
	inetDiagMsgLen = 72 // struct inet_diag_msg
	noCookie       = 0xffffffff
)

// TCP states (include/net/tcp_states.h).
const (
	tcpTimeWait = 6
	tcpClose    = 7
	tcpListen   = 10
)

var native = binary.NativeEndian

// diagRequest encodes one nlmsghdr + inet_diag_req_v2 asking about (typ
// SOCK_DIAG_BY_FAMILY) or destroying (SOCK_DESTROY) the TCP socket t,
// looked up as the kernel's inet_diag_find_one_icsk does: id.src is the
// socket's own address, id.dst its peer's. cookie 0 means any cookie.
func diagRequest(typ uint16, flags uint16, seq uint32, t Target, cookie uint64) []byte {
	b := make([]byte, nlmsgHdrLen+inetDiagReqLen)
	native.PutUint32(b[0:], uint32(len(b)))
	native.PutUint16(b[4:], typ)
	native.PutUint16(b[6:], flags|unix.NLM_F_REQUEST)
	native.PutUint32(b[8:], seq)
	// b[12:16] pid 0: the kernel fills in ours.
	r := b[nlmsgHdrLen:]
	if t.Local.Addr().Is4() {
		r[0] = unix.AF_INET
	} else {
		r[0] = unix.AF_INET6
	}
	r[1] = unix.IPPROTO_TCP
	native.PutUint32(r[4:], 0xffffffff) // idiag_states: any (ignored by exact lookups)
	id := r[8:]
	binary.BigEndian.PutUint16(id[0:], t.Local.Port())
	binary.BigEndian.PutUint16(id[2:], t.Remote.Port())
	putAddr(id[4:20], t.Local.Addr())
	putAddr(id[20:36], t.Remote.Addr())
	// id[36:40] idiag_if 0: any interface.
	lo, hi := uint32(noCookie), uint32(noCookie)
	if cookie != 0 {
		lo, hi = uint32(cookie), uint32(cookie>>32)
	}
	native.PutUint32(id[40:], lo)
	native.PutUint32(id[44:], hi)
	return b
}

// putAddr writes an IPv4 address into the first 4 bytes (the rest stays
// zero), an IPv6 address into all 16.
func putAddr(dst []byte, a netip.Addr) {
	if a.Is4() {
		v := a.As4()
		copy(dst, v[:])
		return
	}
	v := a.As16()
	copy(dst, v[:])
}

// diagInfo is what this package reads from an inet_diag_msg.
type diagInfo struct {
	state  uint8
	cookie uint64
}

// parseReply finds the answer to seq in a netlink datagram: an
// inet_diag_msg (info set), an error or ack (errno, 0 for an ack), or
// neither (ok false: the datagram held other messages).
func parseReply(b []byte, seq uint32) (info *diagInfo, errno syscall.Errno, ok bool, err error) {
	for len(b) >= nlmsgHdrLen {
		l := native.Uint32(b[0:])
		if l < nlmsgHdrLen || int(l) > len(b) {
			return nil, 0, false, fmt.Errorf("malformed netlink message (length %d of %d)", l, len(b))
		}
		msg := b[:l]
		b = b[min(int(nlmsgAlign(l)), len(b)):]
		if native.Uint32(msg[8:]) != seq {
			continue // a stale answer to an earlier, timed-out request
		}
		switch typ := native.Uint16(msg[4:]); typ {
		case unix.NLMSG_ERROR:
			if len(msg) < nlmsgHdrLen+4 {
				return nil, 0, false, errors.New("short netlink error message")
			}
			code := int32(native.Uint32(msg[nlmsgHdrLen:]))
			return nil, syscall.Errno(-code), true, nil
		case unix.SOCK_DIAG_BY_FAMILY:
			p := msg[nlmsgHdrLen:]
			if len(p) < inetDiagMsgLen {
				return nil, 0, false, fmt.Errorf("short inet_diag_msg (%d bytes)", len(p))
			}
			id := p[4:]
			c := uint64(native.Uint32(id[40:])) | uint64(native.Uint32(id[44:]))<<32
			return &diagInfo{state: p[1], cookie: c}, 0, true, nil
		case unix.NLMSG_DONE, unix.NLMSG_NOOP:
			continue
		default:
			return nil, 0, false, fmt.Errorf("unexpected netlink message type %d", typ)
		}
	}
	return nil, 0, false, nil
}

func nlmsgAlign(l uint32) uint32 { return (l + 3) &^ 3 }

// parseDumpEnd looks for the end of the dump seq in a netlink datagram:
// NLMSG_DONE (done; its payload may carry an error), or an error message.
func parseDumpEnd(b []byte, seq uint32) (done bool, errno syscall.Errno, err error) {
	for len(b) >= nlmsgHdrLen {
		l := native.Uint32(b[0:])
		if l < nlmsgHdrLen || int(l) > len(b) {
			return false, 0, fmt.Errorf("malformed netlink message (length %d of %d)", l, len(b))
		}
		msg := b[:l]
		b = b[min(int(nlmsgAlign(l)), len(b)):]
		if native.Uint32(msg[8:]) != seq {
			continue
		}
		switch native.Uint16(msg[4:]) {
		case unix.NLMSG_DONE, unix.NLMSG_ERROR:
			var code int32
			if len(msg) >= nlmsgHdrLen+4 {
				code = int32(native.Uint32(msg[nlmsgHdrLen:]))
			}
			return true, syscall.Errno(-code), nil
		}
	}
	return false, 0, nil
}
