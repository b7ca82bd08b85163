package hostport

import (
	"maps"
	"slices"

	"github.com/switchyard/switchyard/conntrack"
	"github.com/switchyard/switchyard/dataplane"
)

// staleFlowFilters returns the conntrack filters that clear the UDP and
// SCTP flows a change of the DNAT map entries (before -> after) leaves
// stuck. NAT is decided on a flow's first packet only; a client that keeps
// its source port keeps following the flow's entry:
//
//   - to the old Pod when a mapping moved or went away;
//   - to no Pod at all when its first packets came before the mapping
//     existed (the classic CNI portmap UDP bug: the node answered "port
//     unreachable", or a NodePort took it, and the flow stays that way).
//
// So every entry added, changed or removed gets its flows cleared: protocol,
// original destination port = hostPort and, for a hostIP mapping, original
// destination = hostIP. A wildcard entry clears every flow to that port,
// whatever the destination (hostport does not track the node's addresses),
// in both families (conntrack.Filter has no family without an address),
// which may also clear unrelated flows through the node to that port;
// they lose nothing but a fresh NAT decision, as with CNI portmap. TCP
// needs nothing: a connection to a Pod that went away fails and the client
// connects again.
func staleFlowFilters(before, after entries) []conntrack.Filter {
	seen := map[conntrack.Filter]bool{}
	check := func(k entryKey) {
		if k.proto != dataplane.UDP && k.proto != dataplane.SCTP {
			return
		}
		b, inBefore := before[k]
		a, inAfter := after[k]
		if inBefore && inAfter && a == b {
			return
		}
		seen[conntrack.Filter{Protocol: k.proto, OrigDst: k.hostIP, OrigDstPort: k.port}] = true
	}
	for k := range before {
		check(k)
	}
	for k := range after {
		check(k)
	}
	return slices.SortedFunc(maps.Keys(seen), conntrack.CompareFilters)
}
