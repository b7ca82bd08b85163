package conntrack

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/dataplane"
)

// maxAttempts bounds how often filters that failed to clear are retried on
// later syncs before they are dropped (logged): a persistent netlink failure
// must not turn every later sync into an error forever.
const maxAttempts = 3

// Cleaner clears stale conntrack entries after each successful sync. Append
// it to a dataplane.Chain after the dataplane that programs the Service
// rules: the Chain calls it only when those rules are in place, so a packet
// that arrives after the entry is gone is NATed by the new rules.
//
// Cleaner remembers the State of its last Sync (a copy of the UDP and SCTP
// Service ports, as the tracker mutates State in place) and clears what
// StaleFlows finds between that and the new State. Before the first Sync
// it knows nothing: the first Sync lists the table and clears only the
// flows to a frontend whose reply source is not one of its reachable
// endpoints (see reconcileFilters), so an agent restart does not reset
// every long-lived UDP session while entries made while it was down, to
// endpoints that have gone since, are still cleared.
//
// A failed ClearFlows is logged and returned (the runner retries and the
// rules stay as programmed); its filters are retried with the next Sync,
// up to maxAttempts times. Sync and Cleanup are meant for the single sync
// goroutine; Cleaner is not safe for concurrent use.
type Cleaner struct {
	ct      Interface
	nodeIPs func() []netip.Addr

	prev        *dataplane.State // nil until the first Sync
	prevNodeIPs []netip.Addr
	pending     map[Filter]int // filters that failed to clear -> attempts so far
}

var _ dataplane.Dataplane = (*Cleaner)(nil)

// NewCleaner returns a Cleaner clearing through ct. nodeIPs returns the
// addresses NodePorts are served on (called once per Sync); nil, or an
// empty result, makes NodePort filters match the port on any destination
// address, like kube-proxy's.
func NewCleaner(ct Interface, nodeIPs func() []netip.Addr) *Cleaner {
	if ct == nil {
		panic("conntrack: NewCleaner with nil Interface")
	}
	return &Cleaner{ct: ct, nodeIPs: nodeIPs, pending: map[Filter]int{}}
}

// Name implements dataplane.Dataplane.
func (c *Cleaner) Name() string { return "conntrack" }

// Cleanup implements dataplane.Dataplane: Cleaner owns no kernel object.
func (c *Cleaner) Cleanup(context.Context) error { return nil }

// Sync implements dataplane.Dataplane: it clears the flows StaleFlows finds
// between the previous Sync's State and st (plus earlier failures), then
// remembers st. Every Service is compared, so changes is not needed: a full
// and a partial sync of the same State clear the same flows.
func (c *Cleaner) Sync(ctx context.Context, st *dataplane.State, _ dataplane.Changes) error {
	logger := klog.FromContext(ctx).WithValues("dataplane", c.Name())
	var nodeIPs []netip.Addr
	if c.nodeIPs != nil {
		nodeIPs = slices.Clone(c.nodeIPs())
		slices.SortFunc(nodeIPs, netip.Addr.Compare)
		nodeIPs = slices.Compact(nodeIPs)
	}

	var stale []Filter
	if c.prev == nil {
		var err error
		if stale, err = c.reconcileFilters(st, nodeIPs); err != nil {
			// Nothing cleared; the next syncs still handle changes.
			logger.Error(err, "Cannot list conntrack entries to reconcile at start")
		}
	} else {
		stale = staleFlows(c.prev, c.prevNodeIPs, st, nodeIPs)
	}
	c.remember(st, nodeIPs)

	set := make(map[Filter]bool, len(stale)+len(c.pending))
	for _, f := range stale {
		set[f] = true
	}
	for f := range c.pending {
		set[f] = true
	}
	if len(set) == 0 {
		return nil
	}
	filters := slices.SortedFunc(maps.Keys(set), CompareFilters)
	deleted, err := c.ct.ClearFlows(filters)
	if err == nil {
		clear(c.pending)
		logger.V(2).Info("Cleared stale conntrack entries", "filters", len(filters), "deleted", deleted)
		if v := logger.V(4); v.Enabled() {
			for _, f := range filters {
				v.Info("Conntrack filter", "filter", f.String())
			}
		}
		return nil
	}

	var dropped int
	for _, f := range filters {
		c.pending[f]++
		if c.pending[f] >= maxAttempts {
			delete(c.pending, f)
			dropped++
		}
	}
	logger.Error(err, "Failed to clear stale conntrack entries", "filters", len(filters),
		"deleted", deleted, "willRetry", len(c.pending), "givenUp", dropped)
	if errors.Is(err, ErrInvalidFilter) {
		// A bug, not a kernel hiccup: retrying cannot help.
		clear(c.pending)
	}
	return fmt.Errorf("clear stale conntrack entries: %w", err)
}

// remember replaces the snapshot with a copy of st. It copies every
// UDP/SCTP Service port even on partial syncs: that costs little next to
// CategorizeEndpoints, and a snapshot that always equals the last State
// cannot drift from what StaleFlows compared against.
func (c *Cleaner) remember(st *dataplane.State, nodeIPs []netip.Addr) {
	c.prevNodeIPs = nodeIPs
	c.prev = snapshot(st)
}

// snapshot deep-copies the UDP and SCTP Service ports of st, with what
// StaleFlows reads: frontends, policies and endpoints.
func snapshot(st *dataplane.State) *dataplane.State {
	out := dataplane.NewState()
	out.NodeName, out.NodeZone = st.NodeName, st.NodeZone
	for name, sp := range st.Services {
		if sp == nil || !tracked(name.Protocol) {
			continue
		}
		out.Services[name] = &dataplane.ServicePort{
			Name:                name,
			Port:                sp.Port,
			NodePort:            sp.NodePort,
			ClusterIPs:          slices.Clone(sp.ClusterIPs),
			ExternalIPs:         slices.Clone(sp.ExternalIPs),
			LoadBalancerIPs:     slices.Clone(sp.LoadBalancerIPs),
			ExternalPolicyLocal: sp.ExternalPolicyLocal,
			InternalPolicyLocal: sp.InternalPolicyLocal,
		}
		if eps := st.Endpoints[name]; len(eps) > 0 {
			cp := make([]dataplane.Endpoint, len(eps))
			for i, e := range eps {
				e.ZoneHints = slices.Clone(e.ZoneHints)
				e.NodeHints = slices.Clone(e.NodeHints)
				cp[i] = e
			}
			out.Endpoints[name] = cp
		}
	}
	return out
}

// reconcileFilters returns, for the first Sync, one filter per flow in the
// table that goes to a UDP/SCTP frontend of st but was not DNAT'd to one of
// that frontend's reachable endpoints (a dead endpoint, or no DNAT at all:
// the reply source is then the frontend itself). NodePort frontends with
// unknown node addresses are left alone: a port-only match could hit flows
// that never were Service traffic.
func (c *Cleaner) reconcileFilters(st *dataplane.State, nodeIPs []netip.Addr) ([]Filter, error) {
	flows, err := c.ct.ListFlows()
	if err != nil {
		return nil, err
	}
	fes := frontends(st, nodeIPs)
	set := map[Filter]bool{}
	for _, fl := range flows {
		fe := frontend{fl.Protocol, fl.Orig.Dst.Addr().Unmap(), fl.Orig.Dst.Port()}
		info, ok := fes[fe]
		if !ok {
			continue
		}
		src := fl.Reply.Src.Addr().Unmap()
		if info.reach[src] {
			continue
		}
		set[Filter{Protocol: fe.proto, OrigDst: fe.addr, OrigDstPort: fe.port, ReplySrc: src}] = true
	}
	return slices.SortedFunc(maps.Keys(set), CompareFilters), nil
}
