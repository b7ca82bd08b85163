package conntrack

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/sysctl"
)

// Marker sets bits of the conntrack mark (the "ct mark" nftables rules
// match) on existing entries. It is separate from Interface: stale-flow
// clearing never marks, and the rebalancer needs nothing else from it.
type Marker interface {
	// MarkFlows sets the bits mask selects to mark's on every entry whose
	// original tuple (protocol, source, destination) is one of flows',
	// leaving the entry's other mark bits alone, and returns how many
	// entries it updated. Entries that are gone are skipped: not counted,
	// not an error. Invalid input (ValidateMark) fails before anything is
	// sent; an error after that may come with a partial count.
	MarkFlows(flows []Flow, mark, mask uint32) (int, error)
}

var (
	_ Marker = (*Netlink)(nil)
	_ Marker = (*Fake)(nil)
)

// ErrInvalidMark is wrapped by every ValidateMark error.
var ErrInvalidMark = errors.New("invalid conntrack mark request")

// ValidateMark rejects mark requests that cannot be what the caller
// meant: an empty mask (it changes nothing), mark bits outside the mask
// (the kernel would XOR them into the mark), and flows that do not name
// one entry: an unknown protocol, a missing or IPv4-mapped address, a
// missing port, or addresses of two families.
func ValidateMark(flows []Flow, mark, mask uint32) error {
	if mask == 0 {
		return fmt.Errorf("%w: empty mask", ErrInvalidMark)
	}
	if mark&^mask != 0 {
		return fmt.Errorf("%w: mark %#x has bits outside mask %#x", ErrInvalidMark, mark, mask)
	}
	var errs []error
	for _, fl := range flows {
		if err := validateOrig(fl); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func validateOrig(fl Flow) error {
	if err := checkOrig(fl); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidMark, err)
	}
	return nil
}

// checkOrig is validateOrig without the sentinel, for requests other
// than marking that name entries the same way (GetFlows).
func checkOrig(fl Flow) error {
	switch fl.Protocol {
	case dataplane.TCP, dataplane.UDP, dataplane.SCTP:
	default:
		return fmt.Errorf("%s: protocol %q has no ports", fl, fl.Protocol)
	}
	src, dst := fl.Orig.Src, fl.Orig.Dst
	for _, ap := range []netip.AddrPort{src, dst} {
		if !ap.IsValid() || ap.Port() == 0 {
			return fmt.Errorf("%s: original tuple needs addresses and ports", fl)
		}
		if ap.Addr().Is4In6() || ap.Addr().Zone() != "" {
			return fmt.Errorf("%s: address %s must be plain IPv4 or IPv6", fl, ap.Addr())
		}
	}
	if src.Addr().Is4() != dst.Addr().Is4() {
		return fmt.Errorf("%s mixes address families", fl)
	}
	return nil
}

// ctaMarkMask is CTA_MARK_MASK (enum ctattr_type), which the nl package
// does not name. On an update the kernel computes (mark & ~mask) ^ value
// (ctnetlink_change_mark), so the other bits survive, whatever the
// datapath writes into them meanwhile.
const ctaMarkMask = 21

// MarkFlows implements Marker: one ctnetlink update (IPCTNL_MSG_CT_NEW
// without NLM_F_CREATE, like `conntrack -U`) per flow, carrying only the
// original tuple, CTA_MARK and CTA_MARK_MASK: the library's
// ConntrackUpdate would also rewrite the timeout and the whole mark from a
// possibly stale copy. Entries are looked up in conntrack zone 0.
func (n *Netlink) MarkFlows(flows []Flow, mark, mask uint32) (int, error) {
	if err := ValidateMark(flows, mark, mask); err != nil {
		return 0, err
	}
	var (
		marked int
		errs   []error
	)
	for _, fl := range flows {
		req := markRequest(fl, mark, mask)
		req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_NETFILTER: n.upd}
		_, err := req.Execute(unix.NETLINK_NETFILTER, 0)
		switch {
		case err == nil:
			marked++
		case errors.Is(err, fs.ErrNotExist):
			// ENOENT: the connection ended meanwhile.
		default:
			errs = append(errs, fmt.Errorf("conntrack: mark %s: %w", fl, err))
		}
	}
	return marked, errors.Join(errs...)
}

// markRequest encodes the update of fl's entry (see MarkFlows). The flow
// must have passed ValidateMark.
func markRequest(fl Flow, mark, mask uint32) *nl.NetlinkRequest {
	fam, orig := origTupleAttr(fl)
	req := nl.NewNetlinkRequest(int(netlink.ConntrackTable)<<8|nl.IPCTNL_MSG_CT_NEW, unix.NLM_F_ACK)
	req.AddData(&nl.Nfgenmsg{NfgenFamily: fam, Version: nl.NFNETLINK_V0})
	req.AddData(orig)
	req.AddData(nl.NewRtAttr(nl.CTA_MARK, nl.BEUint32Attr(mark)))
	req.AddData(nl.NewRtAttr(ctaMarkMask, nl.BEUint32Attr(mask)))
	return req
}

// origTupleAttr encodes fl's original tuple as CTA_TUPLE_ORIG, which
// names the entry in requests (zone 0), and returns its address family
// for the nfgenmsg. The flow must have passed validateOrig.
func origTupleAttr(fl Flow) (uint8, *nl.RtAttr) {
	fam, srcAttr, dstAttr := uint8(unix.AF_INET), nl.CTA_IP_V4_SRC, nl.CTA_IP_V4_DST
	if fl.Orig.Src.Addr().Is6() {
		fam, srcAttr, dstAttr = unix.AF_INET6, nl.CTA_IP_V6_SRC, nl.CTA_IP_V6_DST
	}
	orig := nl.NewRtAttr(unix.NLA_F_NESTED|nl.CTA_TUPLE_ORIG, nil)
	ip := orig.AddRtAttr(unix.NLA_F_NESTED|nl.CTA_TUPLE_IP, nil)
	ip.AddRtAttr(srcAttr, fl.Orig.Src.Addr().AsSlice())
	ip.AddRtAttr(dstAttr, fl.Orig.Dst.Addr().AsSlice())
	proto := orig.AddRtAttr(unix.NLA_F_NESTED|nl.CTA_TUPLE_PROTO, nil)
	proto.AddRtAttr(nl.CTA_PROTO_NUM, []byte{protoNumber(fl.Protocol)})
	proto.AddRtAttr(nl.CTA_PROTO_SRC_PORT, nl.BEUint16Attr(fl.Orig.Src.Port()))
	proto.AddRtAttr(nl.CTA_PROTO_DST_PORT, nl.BEUint16Attr(fl.Orig.Dst.Port()))
	return fam, orig
}

// MarkCall is one successful Fake.MarkFlows call.
type MarkCall struct {
	Flows      []Flow
	Mark, Mask uint32
}

// MarkFlows implements Marker on the fake table: entries with the same
// protocol and original tuple as one of flows get the masked bits; calls
// that validate are recorded in Marked.
func (f *Fake) MarkFlows(flows []Flow, mark, mask uint32) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Err != nil {
		return 0, f.Err
	}
	if err := ValidateMark(flows, mark, mask); err != nil {
		return 0, err
	}
	want := make(map[origKey]bool, len(flows))
	for _, fl := range flows {
		want[keyOf(fl)] = true
	}
	marked := 0
	for i := range f.Flows {
		if want[keyOf(f.Flows[i])] {
			f.Flows[i].Mark = f.Flows[i].Mark&^mask | mark
			marked++
		}
	}
	f.Marked = append(f.Marked, MarkCall{Flows: append([]Flow(nil), flows...), Mark: mark, Mask: mask})
	return marked, nil
}

// origKey identifies a conntrack entry (in one zone): its protocol and
// original tuple.
type origKey struct {
	proto dataplane.Protocol
	orig  Tuple
}

func keyOf(fl Flow) origKey { return origKey{fl.Protocol, fl.Orig} }

// TCPTimeouts are the conntrack timeouts Flow.Idle needs, from the
// network namespace the entries live in.
type TCPTimeouts struct {
	// Established is net.netfilter.nf_conntrack_tcp_timeout_established:
	// what an ESTABLISHED entry's timer restarts at on each packet.
	Established time.Duration
	// Unacknowledged is the larger of
	// nf_conntrack_tcp_timeout_unacknowledged and
	// nf_conntrack_tcp_timeout_max_retrans: the timer restarts at this
	// instead while data is in flight (or retransmitted).
	Unacknowledged time.Duration
}

// ReadTCPTimeouts reads TCPTimeouts through procSys (a /proc/sys of the
// entries' network namespace, e.g. sysctl.NewAt).
func ReadTCPTimeouts(procSys sysctl.Interface) (TCPTimeouts, error) {
	var out TCPTimeouts
	for _, p := range []struct {
		name string
		into *time.Duration
	}{
		{sysctlTCPEstablishedTimeout, &out.Established},
		{"net/netfilter/nf_conntrack_tcp_timeout_unacknowledged", &out.Unacknowledged},
		{"net/netfilter/nf_conntrack_tcp_timeout_max_retrans", nil},
	} {
		v, err := procSys.Get(p.name)
		if err != nil {
			return TCPTimeouts{}, fmt.Errorf("conntrack: read %s: %w", p.name, err)
		}
		secs, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			return TCPTimeouts{}, fmt.Errorf("conntrack: read %s: %q: %w", p.name, v, err)
		}
		d := time.Duration(secs) * time.Second
		if p.into == nil {
			out.Unacknowledged = max(out.Unacknowledged, d)
			continue
		}
		*p.into = d
	}
	return out, nil
}

// Idle estimates how long an ESTABLISHED TCP entry has seen no packet:
// conntrack restarts its timer at t.Established on every packet, so the
// time since is t.Established - Timeout. While data is unacknowledged the
// timer restarts at t.Unacknowledged instead, so a Timeout at or below
// that says nothing (a busy connection, or one about to expire): Idle
// then returns 0, unknown, as it does for other states and protocols and
// when t is zero.
func (f Flow) Idle(t TCPTimeouts) time.Duration {
	if f.Protocol != dataplane.TCP || f.TCPState != "ESTABLISHED" || t.Established <= 0 ||
		f.Timeout <= t.Unacknowledged || f.Timeout > t.Established {
		return 0
	}
	return t.Established - f.Timeout
}

// Age is how long ago the entry was created, as of now; 0 when Start is
// unknown (conntrack timestamps off: net.netfilter.nf_conntrack_timestamp
// is 0 by default).
func (f Flow) Age(now time.Time) time.Duration {
	if f.Start.IsZero() || now.Before(f.Start) {
		return 0
	}
	return now.Sub(f.Start)
}
