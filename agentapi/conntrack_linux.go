package agentapi

import (
	"github.com/vishvananda/netns"

	"github.com/switchyard/switchyard/conntrack"
)

// NetlinkFlows lists the conntrack table, with TCP states, for yardctl
// and the metrics: conntrack.Netlink's dump as this package's Flows.
type NetlinkFlows struct {
	n *conntrack.Netlink
}

// NewNetlinkFlows opens a NETLINK_NETFILTER socket in ns (netns.None():
// the caller's namespace).
func NewNetlinkFlows(ns netns.NsHandle) (*NetlinkFlows, error) {
	n, err := conntrack.NewNetlink(ns)
	if err != nil {
		return nil, err
	}
	return &NetlinkFlows{n: n}, nil
}

// Close closes the socket.
func (n *NetlinkFlows) Close() { n.n.Close() }

// ListFlows implements FlowLister: the IPv4 and IPv6 tables.
func (n *NetlinkFlows) ListFlows() ([]Flow, error) {
	flows, err := n.n.ListFlows()
	if err != nil {
		return nil, err
	}
	out := make([]Flow, len(flows))
	for i, f := range flows {
		out[i] = Flow{Flow: f}
	}
	return out, nil
}
