package conntrack

import (
	"bytes"
	"encoding/hex"
	"errors"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/switchyard/switchyard/dataplane"
)

// Event payloads (after the nlmsghdr) captured on Linux 6.18 from a TCP
// connection 10.0.0.2:42828 -> 10.96.0.10:80 DNAT'd to 10.244.0.1:8080,
// with net.netfilter.nf_conntrack_timestamp=1.
const (
	// Type 0x100, flags NLM_F_CREATE|NLM_F_EXCL: NEW, SYN_SENT, 120s.
	capturedNew = "020000003400018014000180080001000a000002080002000a60000a1c000280050001000600000006000200a74c000006000300005000003400028014000180080001000af40001080002000a0000021c0002800500010006000000060002001f90000006000300a74c000008000c001c8d5bea08000300000001a80800070000000078300004802c0001800500010001000000050002000a0000000500030000000000060004000300000006000500000000000c001b0018eb598f8445bfa5"
	// Type 0x100, no flags: UPDATE after MarkFlows(0x10), ESTABLISHED.
	capturedMark = "020000003400018014000180080001000a000002080002000a60000a1c000280050001000600000006000200a74c000006000300005000003400028014000180080001000af40001080002000a0000021c0002800500010006000000060002001f90000006000300a74c000008000c001c8d5bea08000300000001ae080007000006977f300004802c0001800500010003000000050002000a000000050003000a0000000600040023000000060005002300000008000800000000100c001b0018eb598f9140a353"
	// Type 0x102: DESTROY after ClearFlows, TIME_WAIT, with start and
	// stop timestamps.
	capturedDestroy = "020000003400018014000180080001000a000002080002000a60000a1c000280050001000600000006000200a74c000006000300005000003400028014000180080001000af40001080002000a0000021c0002800500010006000000060002001f90000006000300a74c000008000c001c8d5bea08000300000003ae08000700000000771c0014800c00010018eb598f8445dc980c00020018eb598faface31c100004800c000180050001000700000008000800000000100c001b0018eb598faface3e5"
)

func capturedMsg(t *testing.T, typ, flags uint16, payload string) syscall.NetlinkMessage {
	t.Helper()
	b, err := hex.DecodeString(payload)
	if err != nil {
		t.Fatal(err)
	}
	return syscall.NetlinkMessage{Header: syscall.NlMsghdr{Type: typ, Flags: flags}, Data: b}
}

func TestParseCapturedEvents(t *testing.T) {
	msgs := []syscall.NetlinkMessage{
		capturedMsg(t, 0x100, unix.NLM_F_CREATE|unix.NLM_F_EXCL, capturedNew),
		capturedMsg(t, 0x100, 0, capturedMark),
		// Not ctnetlink (an expectation, subsystem 2): skipped.
		capturedMsg(t, 0x200, unix.NLM_F_CREATE, capturedNew),
		capturedMsg(t, 0x102, 0, capturedDestroy),
	}
	evs, err := parseEvents(msgs)
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.MustParseAddrPort
	conn := Flow{
		Protocol: dataplane.TCP,
		Orig:     Tuple{Src: ap("10.0.0.2:42828"), Dst: ap("10.96.0.10:80")},
		Reply:    Tuple{Src: ap("10.244.0.1:8080"), Dst: ap("10.0.0.2:42828")},
	}
	with := func(state string, mark uint32, timeout time.Duration, start int64) Flow {
		f := conn
		f.TCPState, f.Mark, f.Timeout = state, mark, timeout
		if start != 0 {
			f.Start = time.Unix(0, start)
		}
		return f
	}
	want := []Event{
		// NEW has no CTA_TIMESTAMP: Start is its event timestamp.
		{Type: EventNew, Flow: with("SYN_SENT", 0, 120*time.Second, 0x18eb598f8445bfa5), HasTCPState: true, HasTimeout: true},
		{Type: EventUpdate, Flow: with("ESTABLISHED", 0x10, 431999*time.Second, 0), HasTCPState: true, HasTimeout: true},
		{Type: EventDestroy, Flow: with("TIME_WAIT", 0x10, 119*time.Second, 0x18eb598f8445dc98), HasTCPState: true, HasTimeout: true},
	}
	if len(evs) != len(want) {
		t.Fatalf("got %d events, want %d: %+v", len(evs), len(want), evs)
	}
	for i := range want {
		if evs[i] != want[i] {
			t.Errorf("event %d:\n got %+v\nwant %+v", i, evs[i], want[i])
		}
	}
}

// TestParseBuiltFlow covers what the captures do not: IPv6, an UPDATE
// without TCP state or timer, a UDP entry, unknown attributes.
func TestParseBuiltFlow(t *testing.T) {
	tuple := func(typ int, src, dst netip.AddrPort, proto uint8) *nl.RtAttr {
		srcA, dstA := nl.CTA_IP_V4_SRC, nl.CTA_IP_V4_DST
		if src.Addr().Is6() {
			srcA, dstA = nl.CTA_IP_V6_SRC, nl.CTA_IP_V6_DST
		}
		a := nl.NewRtAttr(unix.NLA_F_NESTED|typ, nil)
		ip := a.AddRtAttr(unix.NLA_F_NESTED|nl.CTA_TUPLE_IP, nil)
		ip.AddRtAttr(srcA, src.Addr().AsSlice())
		ip.AddRtAttr(dstA, dst.Addr().AsSlice())
		p := a.AddRtAttr(unix.NLA_F_NESTED|nl.CTA_TUPLE_PROTO, nil)
		p.AddRtAttr(nl.CTA_PROTO_NUM, []byte{proto})
		p.AddRtAttr(nl.CTA_PROTO_SRC_PORT, nl.BEUint16Attr(src.Port()))
		p.AddRtAttr(nl.CTA_PROTO_DST_PORT, nl.BEUint16Attr(dst.Port()))
		return a
	}
	payload := func(fam uint8, attrs ...*nl.RtAttr) []byte {
		b := (&nl.Nfgenmsg{NfgenFamily: fam}).Serialize()
		for _, a := range attrs {
			b = append(b, a.Serialize()...)
		}
		return b
	}
	ap := netip.MustParseAddrPort
	c, s := ap("[fd00::2]:40000"), ap("[fd00:96::10]:443")
	e := ap("[fd00:244::1]:8443")

	b := payload(unix.AF_INET6,
		tuple(nl.CTA_TUPLE_ORIG, c, s, unix.IPPROTO_TCP),
		tuple(nl.CTA_TUPLE_REPLY, e, c, unix.IPPROTO_TCP),
		nl.NewRtAttr(nl.CTA_MARK, nl.BEUint32Attr(0x4000)),
		nl.NewRtAttr(99, []byte{1, 2, 3}), // unknown, odd length: skipped with its padding
		nl.NewRtAttr(nl.CTA_ID, nl.BEUint32Attr(7)),
	)
	fl, has, err := parseFlow(b)
	if err != nil {
		t.Fatal(err)
	}
	want := Flow{Protocol: dataplane.TCP, Orig: Tuple{c, s}, Reply: Tuple{e, c}, Mark: 0x4000}
	if fl != want || has.tcpState || has.timeout {
		t.Errorf("IPv6 mark-only update: %+v %+v, want %+v and no state or timer", fl, has, want)
	}

	u := payload(unix.AF_INET,
		tuple(nl.CTA_TUPLE_ORIG, ap("10.0.0.2:5353"), ap("10.96.0.10:53"), unix.IPPROTO_UDP),
		tuple(nl.CTA_TUPLE_REPLY, ap("10.244.0.1:53"), ap("10.0.0.2:5353"), unix.IPPROTO_UDP),
		nl.NewRtAttr(nl.CTA_TIMEOUT, nl.BEUint32Attr(30)),
	)
	fl, has, err = parseFlow(u)
	if err != nil {
		t.Fatal(err)
	}
	if fl.Protocol != dataplane.UDP || fl.TCPState != "" || fl.Timeout != 30*time.Second || !has.timeout ||
		fl.Reply.Src != ap("10.244.0.1:53") {
		t.Errorf("UDP entry: %+v %+v", fl, has)
	}
}

// TestParseMalformed: truncated or inconsistent messages are errors, never
// panics or half-filled flows.
func TestParseMalformed(t *testing.T) {
	full, err := hex.DecodeString(capturedNew)
	if err != nil {
		t.Fatal(err)
	}
	// Every truncation that cuts into the original tuple must fail;
	// the tuple ends at byte 4+52.
	for n := 0; n < 4+52; n++ {
		if fl, _, err := parseFlow(full[:n]); !errors.Is(err, errMalformed) {
			t.Errorf("%d bytes: %+v, %v; want errMalformed", n, fl, err)
		}
	}
	// Truncations elsewhere either fail or parse: no panic.
	for n := 4 + 52; n <= len(full); n++ {
		_, _, _ = parseFlow(full[:n])
	}
	bad := append([]byte(nil), full...)
	bad[4] = 0xff // CTA_TUPLE_ORIG's length beyond the message
	if _, _, err := parseFlow(bad); !errors.Is(err, errMalformed) {
		t.Errorf("oversized attribute: %v, want errMalformed", err)
	}
	if _, err := parseEvents([]syscall.NetlinkMessage{{Header: syscall.NlMsghdr{Type: 0x100}, Data: full[:20]}}); !errors.Is(err, errMalformed) {
		t.Errorf("parseEvents on a truncated event: %v, want errMalformed", err)
	}
}

// TestGetRequestEncoding: the hand-encoded GET request is byte for byte
// what the nl package builds from origTupleAttr (the tuple MarkFlows
// sends), for IPv4 and IPv6.
func TestGetRequestEncoding(t *testing.T) {
	ap := netip.MustParseAddrPort
	for _, fl := range []Flow{
		{Protocol: dataplane.TCP, Orig: Tuple{ap("10.0.0.2:42828"), ap("10.96.0.10:80")}},
		{Protocol: dataplane.SCTP, Orig: Tuple{ap("[fd00::2]:40000"), ap("[fd00:96::10]:443")}},
	} {
		fam, orig := origTupleAttr(fl)
		req := nl.NewNetlinkRequest(unix.NFNL_SUBSYS_CTNETLINK<<8|nl.IPCTNL_MSG_CT_GET, 0)
		req.Seq = 77
		req.AddData(&nl.Nfgenmsg{NfgenFamily: fam, Version: nl.NFNETLINK_V0})
		req.AddData(orig)
		want := req.Serialize()
		prefix := []byte{0xde, 0xad}
		got := appendGetRequest(append([]byte(nil), prefix...), 77, fl)
		if !bytes.Equal(got[:2], prefix) || !bytes.Equal(got[2:], want) {
			t.Errorf("%s:\n got %x\nwant %x", fl, got[2:], want)
		}
	}
}
