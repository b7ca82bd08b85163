// Package conntrack removes conntrack entries that would keep UDP and SCTP
// clients stuck after the Service model changed.
//
// NAT happens only on a flow's first packet; later packets follow the
// conntrack entry. For TCP that is harmless (a dead backend resets or times
// out the connection), but UDP and SCTP clients that keep their source port
// keep hitting an entry that points at a deleted endpoint, or at nothing
// (the Service had no endpoints when the flow started), until the entry
// times out, which never happens while the client keeps sending. kube-proxy
// deletes those entries after every sync (pkg/proxy/conntrack); this package
// does the same for switchyard:
//
//   - StaleFlows is a pure function from the previous and current
//     dataplane.State to the Filters that must be cleared;
//   - Interface is the kernel side (Netlink, over vishvananda/netlink, in
//     any network namespace; Fake for tests);
//   - Cleaner is a dataplane.Dataplane meant to run last in a
//     dataplane.Chain: it keeps a snapshot of the last synced State and
//     clears what changed.
//
// The same table serves the conntrack-aware rebalancer: ListFlows reports
// each entry's mark, timer (Flow.Idle estimates the time since its last
// packet) and, with nf_conntrack_timestamp=1, its start (Flow.Age); Marker
// sets mark bits on chosen entries by their original tuple. The nftables
// dataplane resets both ends of a TCP connection whose entry carries its
// reset bit (nftables.Config.ResetMarkBit): that is how connections this
// node forwards, whose sockets live elsewhere, are shed.
package conntrack

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/switchyard/switchyard/dataplane"
)

// Filter selects conntrack entries, like `conntrack -D -p PROTO --orig-dst
// IP --orig-port-dst PORT --reply-src IP`. Zero fields match anything, but a
// Filter must set Protocol and at least one other field (see Validate).
type Filter struct {
	Protocol dataplane.Protocol
	// OrigDst is the destination the client used (a Service frontend).
	OrigDst netip.Addr
	// OrigDstPort is the destination port the client used.
	OrigDstPort uint16
	// ReplySrc is the source of replies, i.e. where the flow was DNAT'd to
	// (the endpoint's IP).
	ReplySrc netip.Addr
}

// Flow is one conntrack entry as this package reads it back.
type Flow struct {
	// Protocol is TCP, UDP or SCTP, or "proto-N" for any other protocol.
	Protocol dataplane.Protocol
	Orig     Tuple // as sent by the client
	Reply    Tuple // as expected back; Reply.Src is the DNAT destination
	// TCPState is conntrack's TCP state ("ESTABLISHED", "TIME_WAIT", ...);
	// "" for other protocols.
	TCPState string
	// Mark is the entry's conntrack mark ("ct mark"); see Marker.
	Mark uint32
	// Timeout is what was left of the entry's timer when it was listed
	// (whole seconds). The kernel restarts the timer on every packet, at
	// the timeout of the entry's state; see Idle.
	Timeout time.Duration
	// Start is when the entry was created; zero unless conntrack
	// timestamps are on (net.netfilter.nf_conntrack_timestamp=1). See Age.
	Start time.Time
}

// Tuple is one direction of a Flow.
type Tuple struct {
	Src, Dst netip.AddrPort
}

func (f Flow) String() string {
	return fmt.Sprintf("%s %s->%s reply %s->%s", strings.ToLower(string(f.Protocol)),
		f.Orig.Src, f.Orig.Dst, f.Reply.Src, f.Reply.Dst)
}

// String renders the filter in conntrack(8) terms, for logs.
func (f Filter) String() string {
	var b strings.Builder
	b.WriteString(strings.ToLower(string(f.Protocol)))
	if f.OrigDst.IsValid() {
		b.WriteString(" orig-dst=" + f.OrigDst.String())
	}
	if f.OrigDstPort != 0 {
		fmt.Fprintf(&b, " orig-port-dst=%d", f.OrigDstPort)
	}
	if f.ReplySrc.IsValid() {
		b.WriteString(" reply-src=" + f.ReplySrc.String())
	}
	return b.String()
}

// Matches reports whether the filter selects the flow, with the semantics of
// netlink.ConntrackFilter.
func (f Filter) Matches(fl Flow) bool {
	if f.Protocol != fl.Protocol {
		return false
	}
	if f.OrigDst.IsValid() && f.OrigDst != fl.Orig.Dst.Addr() {
		return false
	}
	if f.OrigDstPort != 0 && f.OrigDstPort != fl.Orig.Dst.Port() {
		return false
	}
	if f.ReplySrc.IsValid() && f.ReplySrc != fl.Reply.Src.Addr() {
		return false
	}
	return true
}

// family is unix.AF_INET or AF_INET6 when the filter's addresses pin one, 0
// when it has none (a port-only filter applies to both families).
func (f Filter) family() uint8 {
	for _, a := range []netip.Addr{f.OrigDst, f.ReplySrc} {
		if a.IsValid() {
			if a.Is4() {
				return unix.AF_INET
			}
			return unix.AF_INET6
		}
	}
	return 0
}

// ErrInvalidFilter is wrapped by every Validate error.
var ErrInvalidFilter = errors.New("invalid conntrack filter")

// Validate rejects filters that cannot be what a caller meant: an unknown
// protocol, no field besides the protocol (that would delete every flow of
// the protocol), addresses of two families (no entry can match; the caller
// mixed up its families), and IPv4-mapped IPv6 addresses (the kernel never
// reports those for IPv4 flows).
func (f Filter) Validate() error {
	switch f.Protocol {
	case dataplane.TCP, dataplane.UDP, dataplane.SCTP:
	default:
		return fmt.Errorf("%w: protocol %q", ErrInvalidFilter, f.Protocol)
	}
	if !f.OrigDst.IsValid() && f.OrigDstPort == 0 && !f.ReplySrc.IsValid() {
		return fmt.Errorf("%w: %q matches every %s flow", ErrInvalidFilter, f, f.Protocol)
	}
	for _, a := range []netip.Addr{f.OrigDst, f.ReplySrc} {
		if a.Is4In6() || a.Zone() != "" {
			return fmt.Errorf("%w: %q: address %s must be plain IPv4 or IPv6", ErrInvalidFilter, f, a)
		}
	}
	if f.OrigDst.IsValid() && f.ReplySrc.IsValid() && f.OrigDst.Is4() != f.ReplySrc.Is4() {
		return fmt.Errorf("%w: %q mixes address families", ErrInvalidFilter, f)
	}
	return nil
}

// ValidateFilters validates each filter and rejects duplicates, which mean
// the caller built its list carelessly. Both Netlink and Fake call it before
// touching anything, so a bad list clears nothing.
func ValidateFilters(filters []Filter) error {
	seen := make(map[Filter]bool, len(filters))
	var errs []error
	for _, f := range filters {
		if err := f.Validate(); err != nil {
			errs = append(errs, err)
			continue
		}
		if seen[f] {
			errs = append(errs, fmt.Errorf("%w: %q given twice", ErrInvalidFilter, f))
		}
		seen[f] = true
	}
	return errors.Join(errs...)
}

// CompareFilters orders filters by protocol, original destination, port and
// reply source; unset addresses sort first.
func CompareFilters(a, b Filter) int {
	return cmp.Or(
		strings.Compare(string(a.Protocol), string(b.Protocol)),
		a.OrigDst.Compare(b.OrigDst),
		cmp.Compare(a.OrigDstPort, b.OrigDstPort),
		a.ReplySrc.Compare(b.ReplySrc),
	)
}

// protoNumber is 0 for a protocol the model does not have (Validate
// refuses such filters).
func protoNumber(p dataplane.Protocol) uint8 {
	n, _ := p.Number()
	return n
}

func protoName(n uint8) dataplane.Protocol {
	if p, ok := dataplane.ProtocolFromNumber(n); ok {
		return p
	}
	return dataplane.Protocol(fmt.Sprintf("proto-%d", n))
}
