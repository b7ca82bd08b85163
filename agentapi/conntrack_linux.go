package agentapi

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/switchyard/switchyard/conntrack"
	"github.com/switchyard/switchyard/dataplane"
)

// NetlinkFlows lists the conntrack table over ctnetlink, with TCP states.
//
// It is conntrack.Netlink.ListFlows plus the TCP state, which
// conntrack.Flow does not carry: read-only, the same dump. Once the
// conntrack package reports states it should be used instead.
type NetlinkFlows struct {
	h *netlink.Handle
}

// NewNetlinkFlows opens a NETLINK_NETFILTER socket in ns (netns.None():
// the caller's namespace).
func NewNetlinkFlows(ns netns.NsHandle) (*NetlinkFlows, error) {
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
	return &NetlinkFlows{h: h}, nil
}

// Close closes the socket.
func (n *NetlinkFlows) Close() { n.h.Close() }

// ListFlows implements FlowLister: the IPv4 and IPv6 tables.
func (n *NetlinkFlows) ListFlows() ([]Flow, error) {
	var out []Flow
	for _, fam := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
		flows, err := n.h.ConntrackTableList(netlink.ConntrackTable, fam)
		if err != nil {
			return nil, fmt.Errorf("conntrack: list flows: %w", err)
		}
		for _, f := range flows {
			fl := Flow{Flow: conntrack.Flow{
				Protocol: protocolName(f.Forward.Protocol),
				Orig:     flowTuple(f.Forward),
				Reply:    flowTuple(f.Reverse),
			}}
			if tcp, ok := f.ProtoInfo.(*netlink.ProtoInfoTCP); ok {
				fl.TCPState = tcpStateName(tcp.State)
			}
			out = append(out, fl)
		}
	}
	return out, nil
}

func flowTuple(t netlink.IPTuple) conntrack.Tuple {
	src, _ := netip.AddrFromSlice(t.SrcIP)
	dst, _ := netip.AddrFromSlice(t.DstIP)
	return conntrack.Tuple{Src: netip.AddrPortFrom(src.Unmap(), t.SrcPort), Dst: netip.AddrPortFrom(dst.Unmap(), t.DstPort)}
}

func protocolName(p uint8) dataplane.Protocol {
	switch p {
	case unix.IPPROTO_TCP:
		return dataplane.TCP
	case unix.IPPROTO_UDP:
		return dataplane.UDP
	case unix.IPPROTO_SCTP:
		return dataplane.SCTP
	}
	return dataplane.Protocol(fmt.Sprintf("proto-%d", p))
}

// tcpStateName names enum tcp_conntrack (linux/netfilter/nf_conntrack_tcp.h).
func tcpStateName(s uint8) string {
	names := []string{"NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2"}
	if int(s) < len(names) {
		return names[s]
	}
	return fmt.Sprintf("state-%d", s)
}
