package conntrack

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Interface is the kernel's conntrack table, as much as this package needs.
type Interface interface {
	// ClearFlows deletes every entry that matches at least one filter and
	// returns how many it deleted. Invalid filters (ValidateFilters) make
	// it fail before deleting anything. An error after that may come with
	// a partial count.
	ClearFlows(filters []Filter) (deleted int, err error)
	// ListFlows returns the IPv4 and IPv6 entries (for tests and debugging;
	// it dumps the whole table).
	ListFlows() ([]Flow, error)
}

// Netlink is Interface and Marker over ctnetlink (vishvananda/netlink),
// bound to one network namespace.
type Netlink struct {
	h *netlink.Handle
	// upd is a second socket in the same namespace for the requests the
	// library does not build (MarkFlows); the Handle keeps its sockets to
	// itself.
	upd *nl.SocketHandle
}

var _ Interface = (*Netlink)(nil)

// NewNetlink opens a NETLINK_NETFILTER socket in the network namespace ns;
// netns.None() means the caller's namespace. ns may be closed once
// NewNetlink returns: the socket stays in the namespace it was made in.
func NewNetlink(ns netns.NsHandle) (*Netlink, error) {
	var (
		h   *netlink.Handle
		err error
	)
	if ns.IsOpen() {
		h, err = netlink.NewHandleAt(ns, unix.NETLINK_NETFILTER)
	} else {
		h, err = netlink.NewHandle(unix.NETLINK_NETFILTER)
	}
	if err != nil {
		return nil, fmt.Errorf("conntrack: open netfilter netlink socket: %w", err)
	}
	// With ns closed, GetNetlinkSocketAt opens the socket where we are.
	s, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_NETFILTER)
	if err == nil {
		err = s.SetSendTimeout(&nl.SocketTimeoutTv)
		if err == nil {
			err = s.SetReceiveTimeout(&nl.SocketTimeoutTv)
		}
		if err != nil {
			s.Close()
		}
	}
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("conntrack: open netfilter netlink socket: %w", err)
	}
	return &Netlink{h: h, upd: &nl.SocketHandle{Socket: s}}, nil
}

// Close closes the sockets.
func (n *Netlink) Close() {
	n.h.Close()
	n.upd.Close()
}

// ClearFlows implements Interface. ctnetlink has no server-side filter for
// these fields: each family's table is dumped once and every matching entry
// deleted by its tuple (an entry that vanished meanwhile counts as deleted).
func (n *Netlink) ClearFlows(filters []Filter) (int, error) {
	if err := ValidateFilters(filters); err != nil {
		return 0, err
	}
	byFamily := map[uint8][]netlink.CustomConntrackFilter{}
	for _, f := range filters {
		nf, err := toNetlink(f)
		if err != nil {
			return 0, err
		}
		switch f.family() {
		case 0:
			byFamily[unix.AF_INET] = append(byFamily[unix.AF_INET], nf)
			byFamily[unix.AF_INET6] = append(byFamily[unix.AF_INET6], nf)
		default:
			byFamily[f.family()] = append(byFamily[f.family()], nf)
		}
	}
	var (
		total int
		errs  []error
	)
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		if len(byFamily[fam]) == 0 {
			continue
		}
		n, err := n.h.ConntrackDeleteFilters(netlink.ConntrackTable, netlink.InetFamily(fam), byFamily[fam]...)
		total += int(n)
		if err != nil {
			errs = append(errs, fmt.Errorf("conntrack: delete %s flows: %w", familyName(fam), err))
		}
	}
	return total, errors.Join(errs...)
}

// ListFlows implements Interface.
func (n *Netlink) ListFlows() ([]Flow, error) {
	var out []Flow
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		flows, err := n.h.ConntrackTableList(netlink.ConntrackTable, netlink.InetFamily(fam))
		if err != nil {
			return nil, fmt.Errorf("conntrack: list %s flows: %w", familyName(fam), err)
		}
		for _, f := range flows {
			fl := Flow{
				Protocol: protoName(f.Forward.Protocol),
				Orig:     tuple(f.Forward),
				Reply:    tuple(f.Reverse),
				Mark:     f.Mark,
				Timeout:  time.Duration(f.TimeOut) * time.Second,
			}
			if f.TimeStart != 0 {
				fl.Start = time.Unix(0, int64(f.TimeStart))
			}
			if tcp, ok := f.ProtoInfo.(*netlink.ProtoInfoTCP); ok {
				fl.TCPState = tcpStateName(tcp.State)
			}
			out = append(out, fl)
		}
	}
	return out, nil
}

func toNetlink(f Filter) (*netlink.ConntrackFilter, error) {
	nf := &netlink.ConntrackFilter{}
	// The protocol goes first: AddPort refuses ports without it.
	err := nf.AddProtocol(protoNumber(f.Protocol))
	if err == nil && f.OrigDst.IsValid() {
		err = nf.AddIP(netlink.ConntrackOrigDstIP, f.OrigDst.AsSlice())
	}
	if err == nil && f.OrigDstPort != 0 {
		err = nf.AddPort(netlink.ConntrackOrigDstPort, f.OrigDstPort)
	}
	if err == nil && f.ReplySrc.IsValid() {
		err = nf.AddIP(netlink.ConntrackReplySrcIP, f.ReplySrc.AsSlice())
	}
	if err != nil {
		return nil, fmt.Errorf("conntrack: filter %q: %w", f, err)
	}
	return nf, nil
}

func tuple(t netlink.IPTuple) Tuple {
	src, _ := netip.AddrFromSlice(t.SrcIP)
	dst, _ := netip.AddrFromSlice(t.DstIP)
	return Tuple{
		Src: netip.AddrPortFrom(src.Unmap(), t.SrcPort),
		Dst: netip.AddrPortFrom(dst.Unmap(), t.DstPort),
	}
}

func familyName(fam uint8) string {
	if fam == unix.AF_INET6 {
		return "IPv6"
	}
	return "IPv4"
}

// tcpStateName names enum tcp_conntrack (linux/netfilter/nf_conntrack_tcp.h).
func tcpStateName(s uint8) string {
	names := []string{"NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2"}
	if int(s) < len(names) {
		return names[s]
	}
	return fmt.Sprintf("state-%d", s)
}
