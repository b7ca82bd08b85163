package shed

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// The request layout is struct nlmsghdr + struct inet_diag_req_v2.
func TestDiagRequestLayout(t *testing.T) {
	for _, tc := range []struct {
		name         string
		t            Target
		cookie       uint64
		family       byte
		local, remot []byte
	}{
		{"v4", Target{Local: netip.MustParseAddrPort("10.0.0.1:40000"), Remote: netip.MustParseAddrPort("10.0.0.2:80")}, 0,
			unix.AF_INET, append([]byte{10, 0, 0, 1}, make([]byte, 12)...), append([]byte{10, 0, 0, 2}, make([]byte, 12)...)},
		{"v6", Target{Local: netip.MustParseAddrPort("[fd00::1]:40000"), Remote: netip.MustParseAddrPort("[fd00::2]:80")}, 0x1122334455667788,
			unix.AF_INET6, netip.MustParseAddr("fd00::1").AsSlice(), netip.MustParseAddr("fd00::2").AsSlice()},
	} {
		b := diagRequest(unix.SOCK_DESTROY, unix.NLM_F_ACK, 7, tc.t, tc.cookie)
		if len(b) != 72 || native.Uint32(b) != 72 {
			t.Fatalf("%s: length %d (header says %d), want 72", tc.name, len(b), native.Uint32(b))
		}
		if native.Uint16(b[4:]) != unix.SOCK_DESTROY || native.Uint16(b[6:]) != unix.NLM_F_REQUEST|unix.NLM_F_ACK || native.Uint32(b[8:]) != 7 {
			t.Errorf("%s: header % x", tc.name, b[:16])
		}
		r := b[16:]
		if r[0] != tc.family || r[1] != unix.IPPROTO_TCP {
			t.Errorf("%s: family %d proto %d", tc.name, r[0], r[1])
		}
		id := r[8:]
		if binary.BigEndian.Uint16(id) != 40000 || binary.BigEndian.Uint16(id[2:]) != 80 {
			t.Errorf("%s: ports % x", tc.name, id[:4])
		}
		if !slices.Equal(id[4:20], tc.local) || !slices.Equal(id[20:36], tc.remot) {
			t.Errorf("%s: addresses % x / % x", tc.name, id[4:20], id[20:36])
		}
		lo, hi := native.Uint32(id[40:]), native.Uint32(id[44:])
		wantLo, wantHi := uint32(tc.cookie), uint32(tc.cookie>>32)
		if tc.cookie == 0 {
			wantLo, wantHi = noCookie, noCookie
		}
		if lo != wantLo || hi != wantHi {
			t.Errorf("%s: cookie %#x %#x, want %#x %#x", tc.name, lo, hi, wantLo, wantHi)
		}
	}
}

func nlmsg(typ uint16, seq uint32, payload []byte) []byte {
	b := make([]byte, 16, 16+len(payload)+3)
	native.PutUint32(b, uint32(16+len(payload)))
	native.PutUint16(b[4:], typ)
	native.PutUint32(b[8:], seq)
	b = append(b, payload...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func TestParseReply(t *testing.T) {
	errMsg := func(errno int32) []byte {
		p := make([]byte, 4+16)
		native.PutUint32(p, uint32(-errno))
		return p
	}
	diag := make([]byte, inetDiagMsgLen)
	diag[1] = 1 // ESTABLISHED
	native.PutUint32(diag[4+40:], 0x55667788)
	native.PutUint32(diag[4+44:], 0x11223344)

	// A stale answer to seq 1 precedes ours (seq 2) in one datagram.
	info, errno, ok, err := parseReply(append(nlmsg(unix.NLMSG_ERROR, 1, errMsg(int32(unix.ENOENT))), nlmsg(unix.SOCK_DIAG_BY_FAMILY, 2, diag)...), 2)
	if err != nil || !ok || errno != 0 || info == nil || info.state != 1 || info.cookie != 0x1122334455667788 {
		t.Errorf("diag message: %+v %v %v %v", info, errno, ok, err)
	}
	_, errno, ok, err = parseReply(nlmsg(unix.NLMSG_ERROR, 3, errMsg(int32(unix.ENOENT))), 3)
	if err != nil || !ok || errno != syscall.ENOENT {
		t.Errorf("error message: %v %v %v", errno, ok, err)
	}
	_, errno, ok, err = parseReply(nlmsg(unix.NLMSG_ERROR, 4, errMsg(0)), 4)
	if err != nil || !ok || errno != 0 {
		t.Errorf("ack: %v %v %v", errno, ok, err)
	}
	if _, _, ok, err = parseReply(nlmsg(unix.NLMSG_ERROR, 4, errMsg(0)), 5); ok || err != nil {
		t.Errorf("someone else's answer taken for ours: %v %v", ok, err)
	}
	if _, _, _, err = parseReply(nlmsg(unix.SOCK_DIAG_BY_FAMILY, 6, diag[:10]), 6); err == nil {
		t.Error("short inet_diag_msg accepted")
	}
	bad := nlmsg(unix.NLMSG_ERROR, 7, errMsg(0))
	native.PutUint32(bad, 1000)
	if _, _, _, err = parseReply(bad, 7); err == nil {
		t.Error("length past the datagram accepted")
	}
}

func TestParseDumpEnd(t *testing.T) {
	errMsg := make([]byte, 20)
	enoent := -int32(unix.ENOENT)
	native.PutUint32(errMsg, uint32(enoent))
	done := make([]byte, 4)
	for _, tc := range []struct {
		name  string
		b     []byte
		done  bool
		errno syscall.Errno
	}{
		{"done", nlmsg(unix.NLMSG_DONE, 9, done), true, 0},
		{"no handler", nlmsg(unix.NLMSG_ERROR, 9, errMsg), true, syscall.ENOENT},
		{"an entry, then done", append(nlmsg(unix.SOCK_DIAG_BY_FAMILY, 9, make([]byte, inetDiagMsgLen)), nlmsg(unix.NLMSG_DONE, 9, done)...), true, 0},
		{"someone else's", nlmsg(unix.NLMSG_DONE, 8, done), false, 0},
	} {
		d, errno, err := parseDumpEnd(tc.b, 9)
		if err != nil || d != tc.done || errno != tc.errno {
			t.Errorf("%s: done %v errno %v err %v; want %v %v", tc.name, d, errno, err, tc.done, tc.errno)
		}
	}
}
