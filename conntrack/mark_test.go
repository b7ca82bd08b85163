package conntrack

import (
	"encoding/binary"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/sysctl"
)

func TestValidateMark(t *testing.T) {
	ok := flow(dataplane.TCP, "10.0.0.2:40001", "10.96.0.10:80", "10.244.1.2:8080")
	ok6 := flow(dataplane.TCP, "[fd00::2]:40001", "[fd00:96::10]:80", "[fd00:244::2]:8080")
	for _, tc := range []struct {
		name       string
		flows      []Flow
		mark, mask uint32
		valid      bool
	}{
		{"one bit", []Flow{ok, ok6}, 0x8000, 0x8000, true},
		{"clear a bit", []Flow{ok}, 0, 0x8000, true},
		{"no flows", nil, 0x8000, 0x8000, true},
		{"empty mask", []Flow{ok}, 0, 0, false},
		{"mark outside mask", []Flow{ok}, 0x8001, 0x8000, false},
		{"no ports", []Flow{flow(dataplane.Protocol("proto-1"), "10.0.0.2:0", "10.96.0.10:0", "10.244.1.2:0")}, 0x8000, 0x8000, false},
		{"zero port", []Flow{flow(dataplane.TCP, "10.0.0.2:0", "10.96.0.10:80", "10.244.1.2:8080")}, 0x8000, 0x8000, false},
		{"no tuple", []Flow{{Protocol: dataplane.TCP}}, 0x8000, 0x8000, false},
		{"mixed families", []Flow{flow(dataplane.TCP, "10.0.0.2:1", "[fd00::10]:80", "10.244.1.2:8080")}, 0x8000, 0x8000, false},
		{"mapped address", []Flow{flow(dataplane.TCP, "[::ffff:10.0.0.2]:1", "[::ffff:10.96.0.10]:80", "10.244.1.2:8080")}, 0x8000, 0x8000, false},
	} {
		err := ValidateMark(tc.flows, tc.mark, tc.mask)
		if (err == nil) != tc.valid {
			t.Errorf("%s: ValidateMark = %v, want valid=%v", tc.name, err, tc.valid)
		}
		if err != nil && !errors.Is(err, ErrInvalidMark) {
			t.Errorf("%s: %v does not wrap ErrInvalidMark", tc.name, err)
		}
	}
}

// attr is one decoded netlink attribute.
type attr struct {
	typ  uint16
	data []byte
}

func attrs(t *testing.T, b []byte) []attr {
	t.Helper()
	var out []attr
	for len(b) > 0 {
		if len(b) < 4 {
			t.Fatalf("truncated attribute header %x", b)
		}
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		if l < 4 || l > len(b) {
			t.Fatalf("attribute length %d of %d bytes", l, len(b))
		}
		out = append(out, attr{binary.NativeEndian.Uint16(b[2:4]), b[4:l]})
		b = b[min((l+3)&^3, len(b)):]
	}
	return out
}

// TestMarkRequestEncoding decodes the update message MarkFlows sends: an
// IPCTNL_MSG_CT_NEW without NLM_F_CREATE (update only) carrying the
// original tuple, the mark and the mask, and nothing that would change
// anything else of the entry.
func TestMarkRequestEncoding(t *testing.T) {
	for _, tc := range []struct {
		fl       Flow
		fam      uint8
		src, dst uint16 // CTA_IP_* attribute types
	}{
		{flow(dataplane.TCP, "10.0.0.2:40001", "10.96.0.10:80", "10.244.1.2:8080"), unix.AF_INET, nl.CTA_IP_V4_SRC, nl.CTA_IP_V4_DST},
		{flow(dataplane.SCTP, "[fd00::2]:40001", "[fd00:96::10]:3868", "[fd00:244::2]:3868"), unix.AF_INET6, nl.CTA_IP_V6_SRC, nl.CTA_IP_V6_DST},
	} {
		msg := markRequest(tc.fl, 0x8000, 0x8000).Serialize()
		typ := binary.NativeEndian.Uint16(msg[4:6])
		flags := binary.NativeEndian.Uint16(msg[6:8])
		if typ != 1<<8|nl.IPCTNL_MSG_CT_NEW {
			t.Errorf("%s: message type %#x, want ctnetlink NEW", tc.fl, typ)
		}
		if flags&(unix.NLM_F_CREATE|unix.NLM_F_EXCL|unix.NLM_F_REPLACE) != 0 || flags&unix.NLM_F_ACK == 0 {
			t.Errorf("%s: flags %#x, want an acknowledged update that never creates", tc.fl, flags)
		}
		if got := msg[16]; got != tc.fam {
			t.Errorf("%s: nfgenmsg family %d, want %d", tc.fl, got, tc.fam)
		}
		top := attrs(t, msg[20:])
		if len(top) != 3 {
			t.Fatalf("%s: %d top-level attributes, want tuple, mark and mask", tc.fl, len(top))
		}
		if top[0].typ != unix.NLA_F_NESTED|nl.CTA_TUPLE_ORIG {
			t.Errorf("%s: first attribute %#x, want the original tuple", tc.fl, top[0].typ)
		}
		if top[1].typ != nl.CTA_MARK || binary.BigEndian.Uint32(top[1].data) != 0x8000 ||
			top[2].typ != ctaMarkMask || binary.BigEndian.Uint32(top[2].data) != 0x8000 {
			t.Errorf("%s: mark attributes %+v %+v", tc.fl, top[1], top[2])
		}
		tuple := attrs(t, top[0].data)
		if len(tuple) != 2 {
			t.Fatalf("%s: tuple has %d attributes", tc.fl, len(tuple))
		}
		ip, proto := attrs(t, tuple[0].data), attrs(t, tuple[1].data)
		wantIP := []attr{{tc.src, tc.fl.Orig.Src.Addr().AsSlice()}, {tc.dst, tc.fl.Orig.Dst.Addr().AsSlice()}}
		if !slices.EqualFunc(ip, wantIP, func(a, b attr) bool { return a.typ == b.typ && slices.Equal(a.data, b.data) }) {
			t.Errorf("%s: addresses %+v, want %+v", tc.fl, ip, wantIP)
		}
		num, _ := tc.fl.Protocol.Number()
		if len(proto) != 3 || proto[0].typ != nl.CTA_PROTO_NUM || proto[0].data[0] != num ||
			proto[1].typ != nl.CTA_PROTO_SRC_PORT || binary.BigEndian.Uint16(proto[1].data) != tc.fl.Orig.Src.Port() ||
			proto[2].typ != nl.CTA_PROTO_DST_PORT || binary.BigEndian.Uint16(proto[2].data) != tc.fl.Orig.Dst.Port() {
			t.Errorf("%s: protocol part %+v", tc.fl, proto)
		}
	}
}

func TestFakeMarkFlows(t *testing.T) {
	a := flow(dataplane.TCP, "10.0.0.2:40001", "10.96.0.10:80", "10.244.1.2:8080")
	b := flow(dataplane.TCP, "10.0.0.2:40002", "10.96.0.10:80", "10.244.1.3:8080")
	udp := flow(dataplane.UDP, "10.0.0.2:40001", "10.96.0.10:80", "10.244.1.2:8080") // a's tuple, another protocol
	b.Mark = 0x1
	ct := NewFake(a, b, udp)

	// Only the protocol and original tuple matter; gone flows are not counted.
	query := a
	query.Reply, query.Mark = Tuple{}, 0xffff
	gone := flow(dataplane.TCP, "10.0.0.2:49999", "10.96.0.10:80", "10.244.1.2:8080")
	if n, err := ct.MarkFlows([]Flow{query, b, gone}, 0x8000, 0x8000); n != 2 || err != nil {
		t.Fatalf("MarkFlows = %d, %v; want 2, nil", n, err)
	}
	got, _ := ct.ListFlows()
	if marks := []uint32{got[0].Mark, got[1].Mark, got[2].Mark}; !slices.Equal(marks, []uint32{0x8000, 0x8001, 0}) {
		t.Errorf("marks %#x, want a's bit set, b's other bit kept, the UDP flow untouched", marks)
	}
	// Clearing the bit leaves the other one.
	if n, err := ct.MarkFlows([]Flow{b}, 0, 0x8000); n != 1 || err != nil {
		t.Fatalf("clearing MarkFlows = %d, %v", n, err)
	}
	if got, _ := ct.ListFlows(); got[1].Mark != 0x1 {
		t.Errorf("b's mark after clearing %#x, want 0x1", got[1].Mark)
	}
	if len(ct.Marked) != 2 || ct.Marked[0].Mark != 0x8000 || len(ct.Marked[0].Flows) != 3 || ct.Marked[1].Mark != 0 {
		t.Errorf("recorded calls %+v", ct.Marked)
	}

	// Invalid requests and injected errors change and record nothing.
	ct.Reset()
	if _, err := ct.MarkFlows([]Flow{a}, 0x8000, 0); !errors.Is(err, ErrInvalidMark) {
		t.Errorf("empty mask: %v", err)
	}
	ct.Err = errors.New("netlink down")
	if _, err := ct.MarkFlows([]Flow{a}, 0x4000, 0x4000); err == nil {
		t.Error("Err not returned")
	}
	if got, _ := ct.ListFlows(); got[0].Mark != 0x8000 || len(ct.Marked) != 0 {
		t.Errorf("failed calls changed the table (%#x) or were recorded (%d)", got[0].Mark, len(ct.Marked))
	}
}

func TestFlowIdleAndAge(t *testing.T) {
	tt := TCPTimeouts{Established: 432000 * time.Second, Unacknowledged: 300 * time.Second}
	est := func(timeout time.Duration) Flow {
		return Flow{Protocol: dataplane.TCP, TCPState: "ESTABLISHED", Timeout: timeout}
	}
	for _, tc := range []struct {
		name string
		fl   Flow
		t    TCPTimeouts
		want time.Duration
	}{
		{"fresh packet", est(432000 * time.Second), tt, 0},
		{"idle an hour", est(428400 * time.Second), tt, time.Hour},
		{"data in flight", est(120 * time.Second), tt, 0},
		{"at the unacknowledged timeout", est(300 * time.Second), tt, 0},
		{"timeout lowered since", est(500000 * time.Second), tt, 0},
		{"unknown timeouts", est(1000 * time.Second), TCPTimeouts{}, 0},
		{"not established", Flow{Protocol: dataplane.TCP, TCPState: "TIME_WAIT", Timeout: 60 * time.Second}, tt, 0},
		{"udp", Flow{Protocol: dataplane.UDP, Timeout: 20 * time.Second}, tt, 0},
	} {
		if got := tc.fl.Idle(tc.t); got != tc.want {
			t.Errorf("%s: Idle = %v, want %v", tc.name, got, tc.want)
		}
	}

	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	if got := (Flow{Start: now.Add(-90 * time.Second)}).Age(now); got != 90*time.Second {
		t.Errorf("Age = %v, want 1m30s", got)
	}
	if got := (Flow{}).Age(now); got != 0 {
		t.Errorf("Age without a start = %v, want 0", got)
	}
	if got := (Flow{Start: now.Add(time.Second)}).Age(now); got != 0 {
		t.Errorf("Age of a start in the future = %v, want 0", got)
	}
}

func TestReadTCPTimeouts(t *testing.T) {
	fake := sysctl.NewFake(map[string]string{
		"net/netfilter/nf_conntrack_tcp_timeout_established":    "432000\n",
		"net/netfilter/nf_conntrack_tcp_timeout_unacknowledged": "300",
		"net/netfilter/nf_conntrack_tcp_timeout_max_retrans":    "600",
	})
	got, err := ReadTCPTimeouts(fake)
	if err != nil {
		t.Fatal(err)
	}
	if want := (TCPTimeouts{Established: 120 * time.Hour, Unacknowledged: 600 * time.Second}); got != want {
		t.Errorf("ReadTCPTimeouts = %+v, want %+v (the larger of unacknowledged and max_retrans)", got, want)
	}
	if _, err := ReadTCPTimeouts(sysctl.NewFake(nil)); err == nil {
		t.Error("missing parameters: no error")
	}
	bad := sysctl.NewFake(map[string]string{
		"net/netfilter/nf_conntrack_tcp_timeout_established":    "soon",
		"net/netfilter/nf_conntrack_tcp_timeout_unacknowledged": "300",
		"net/netfilter/nf_conntrack_tcp_timeout_max_retrans":    "300",
	})
	if _, err := ReadTCPTimeouts(bad); err == nil {
		t.Error("unparsable parameter: no error")
	}
}
