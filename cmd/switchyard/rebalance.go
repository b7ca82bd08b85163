package main

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"time"

	"github.com/vishvananda/netns"
	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/agentapi"
	"github.com/switchyard/switchyard/conntrack"
	"github.com/switchyard/switchyard/conntrack/rebalance"
	"github.com/switchyard/switchyard/conntrack/shed"
	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/ebpf"
	"github.com/switchyard/switchyard/iptables"
	"github.com/switchyard/switchyard/nftables"
	"github.com/switchyard/switchyard/sysctl"
)

// newRebalancer wires the rebalancer's mechanisms for what this node
// runs: the socket LB's sockets (closed with sock_diag in their network
// namespace) and, with the nftables or IPVS dataplane, the flows it
// NATs (conntrack-marked, reset by nftables' or iptables' reset rules,
// which run before IPVS sees the packet). nil when there is
// no mechanism. The returned func releases what it opened.
func newRebalancer(ctx context.Context, cfg *config, dp dataplane.Dataplane, observer rebalance.Observer) (*rebalance.Runner, func(), error) {
	var mechs []rebalance.Mechanism
	var closers []func()
	release := func() {
		for _, c := range closers {
			c()
		}
	}
	if lb, ok := findPart[*ebpf.SocketLB](dp); ok && cfg.bpfCountConnections {
		index := shed.NewNetnsIndex(shed.NetnsIndexConfig{})
		closer, err := shed.NewSockDiag(index)
		if err != nil {
			release()
			return nil, nil, fmt.Errorf("socket closer: %w", err)
		}
		closers = append(closers, func() { index.Close() })
		mechs = append(mechs, &socketMechanism{lb: lb, closer: closer})
	}
	// The mark bit the dataplane resets: nftables', or iptables' in front
	// of IPVS; 0 when its reset rules are off.
	var mark uint32
	if p, ok := findPart[*nftables.Proxier](dp); ok {
		mark = p.ResetMark()
	} else if p, ok := findPart[*iptables.Proxier](dp); ok {
		mark = p.ResetMark()
	}
	if mark != 0 {
		ct, err := conntrack.NewNetlink(netns.None())
		if err != nil {
			release()
			return nil, nil, fmt.Errorf("conntrack: %w", err)
		}
		closers = append(closers, ct.Close)
		// The TCP flows, followed by conntrack events: the full table
		// is read at start and after lost events only.
		table, err := conntrack.NewFlowTable(netns.None(), func(f conntrack.Flow) bool { return f.Protocol == dataplane.TCP })
		if err != nil {
			release()
			return nil, nil, fmt.Errorf("conntrack events: %w", err)
		}
		closers = append(closers, table.Close)
		go func() {
			if err := table.Run(ctx); err != nil && ctx.Err() == nil {
				klog.ErrorS(err, "Rebalancer: following conntrack events stopped")
			}
		}()
		// Idle times come from what is left of each entry's timer; the
		// timeouts are read once (a failure only loses the preference
		// for idle connections).
		timeouts, err := conntrack.ReadTCPTimeouts(sysctl.New())
		if err != nil {
			klog.InfoS("Rebalancer cannot tell idle connections apart", "err", err)
		}
		mechs = append(mechs, &flowMechanism{flows: table, marker: ct, mark: mark, timeouts: timeouts, firstSeen: map[string]time.Time{}})
	}
	if len(mechs) == 0 {
		return nil, release, nil
	}
	var names []string
	for _, m := range mechs {
		names = append(names, m.Name())
	}
	klog.InfoS("Rebalancer ready for Services that opt in", "annotation", dataplane.AnnotationRebalance, "mechanisms", names)
	return rebalance.NewRunner(rebalance.Timing{}, observer, mechs...), release, nil
}

// steerSyncMargin is how long, beyond --min-sync-period, a round waits for
// the dataplane to apply its steering before it sheds anyway.
const steerSyncMargin = 2 * time.Second

// syncSteerer steers through the model: the rebalancer's weights go into
// the Tracker (State.Weights; the nftables dataplane spreads new
// connections by them) and a sync; Steer returns once that sync is done,
// so shed clients reconnect under the new weights. IPVS steers by its wlc
// scheduler and the socket LB by its connection counts, without weights.
type syncSteerer struct {
	tracker *dataplane.Tracker
	syncer  *dataplane.Syncer
	timeout time.Duration
	set     map[dataplane.ServicePortName]bool // ports with weights now
}

func (s *syncSteerer) Steer(ctx context.Context, weights map[dataplane.ServicePortName]map[netip.AddrPort]int) error {
	since := time.Now()
	changed := false
	for name := range s.set {
		if weights[name] == nil {
			changed = s.tracker.SetWeights(name, nil) || changed
			delete(s.set, name)
		}
	}
	for name, w := range weights {
		changed = s.tracker.SetWeights(name, w) || changed
		s.set[name] = true
	}
	if !changed {
		return nil
	}
	s.syncer.Notify()
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.syncer.WaitSynced(ctx, since); err != nil {
		return fmt.Errorf("waiting for the dataplane to apply steering weights: %w", err)
	}
	return nil
}

// socketMechanism sees the sockets of this node the socket LB translated
// (direction out: a pod or process here connected to a Service) and
// closes them with sock_diag: the client gets an error and reconnects,
// the backend a reset.
type socketMechanism struct {
	lb      *ebpf.SocketLB
	closer  shed.Closer
	targets map[string]shed.Target
}

func (m *socketMechanism) Name() string { return "socketlb" }

func (m *socketMechanism) Collect(_ context.Context, _ *dataplane.State, now time.Time) (map[dataplane.ServicePortName][]rebalance.Conn, error) {
	socks, err := m.lb.Sockets()
	if err != nil {
		return nil, err
	}
	out := map[dataplane.ServicePortName][]rebalance.Conn{}
	m.targets = map[string]shed.Target{}
	for _, s := range socks {
		if s.Direction != ebpf.Out || s.Service == (dataplane.ServicePortName{}) {
			continue
		}
		id := strconv.FormatUint(s.Cookie, 10)
		m.targets[id] = shed.Target{NetnsCookie: s.NetnsCookie, Local: s.Local, Remote: s.Remote, Cookie: s.Cookie}
		out[s.Service] = append(out[s.Service], rebalance.Conn{ID: id, Backend: s.Remote, Age: now.Sub(s.Established)})
	}
	return out, nil
}

func (m *socketMechanism) Shed(ctx context.Context, conns []rebalance.Conn) (int, error) {
	var targets []shed.Target
	for _, c := range conns {
		if t, ok := m.targets[c.ID]; ok {
			targets = append(targets, t)
		}
	}
	res, err := m.closer.Close(ctx, targets)
	return res.Closed, err
}

// flowMechanism sees the TCP flows this node NATs to Services (conntrack,
// followed by events) and sheds them by setting the reset bit of their
// conntrack mark: the dataplane (nftables, or iptables in front of IPVS)
// turns the next packet of either end into a TCP reset.
type flowMechanism struct {
	flows interface {
		Flows() []conntrack.Flow
		// GetFlows rereads the given flows (fresh timers, for idle
		// times); gone ones are left out.
		GetFlows(flows []conntrack.Flow) ([]conntrack.Flow, error)
	}
	marker interface {
		MarkFlows(flows []conntrack.Flow, mark, mask uint32) (int, error)
	}
	mark     uint32
	timeouts conntrack.TCPTimeouts
	// firstSeen ages flows when the kernel keeps no start time
	// (nf_conntrack_timestamp off): from the first round that saw them.
	firstSeen map[string]time.Time
	shown     map[string]conntrack.Flow
}

// maxIdleRefresh bounds the flows a round rereads for their idle times;
// beyond it the round plans without them (young first).
const maxIdleRefresh = 20000

func (m *flowMechanism) Name() string { return "conntrack" }

func (m *flowMechanism) Collect(_ context.Context, st *dataplane.State, now time.Time) (map[dataplane.ServicePortName][]rebalance.Conn, error) {
	idx := agentapi.NewFlowIndex(st)
	type opted struct {
		name dataplane.ServicePortName
		flow conntrack.Flow
	}
	var mine []opted
	for _, f := range m.flows.Flows() {
		if f.TCPState != "ESTABLISHED" {
			continue
		}
		if name, ok := idx.Lookup(agentapi.Flow{Flow: f}); ok && st.Services[name] != nil {
			mine = append(mine, opted{name, f})
		}
	}
	// The table's timers are as of each flow's last event: reread the
	// opted-in Services' flows (only those) for their idle times.
	idle := map[string]time.Duration{}
	if m.timeouts.Established > 0 && len(mine) <= maxIdleRefresh {
		flows := make([]conntrack.Flow, len(mine))
		for i, o := range mine {
			flows[i] = o.flow
		}
		fresh, err := m.flows.GetFlows(flows)
		if err != nil {
			klog.V(2).InfoS("Rebalancer: rereading flows for their idle times failed; planning without them", "err", err)
		}
		for _, f := range fresh {
			idle[flowID(f)] = f.Idle(m.timeouts)
		}
	}
	out := map[dataplane.ServicePortName][]rebalance.Conn{}
	seen := map[string]time.Time{}
	m.shown = map[string]conntrack.Flow{}
	for _, o := range mine {
		f, id := o.flow, flowID(o.flow)
		first, ok := m.firstSeen[id]
		if !ok {
			first = now
		}
		seen[id] = first
		age := now.Sub(first)
		if !f.Start.IsZero() {
			age = now.Sub(f.Start)
		}
		m.shown[id] = f
		// A marked flow is waiting for its next packet to be reset.
		out[o.name] = append(out[o.name], rebalance.Conn{ID: id, Backend: f.Reply.Src, Age: age, Idle: idle[id], Closing: f.Mark&m.mark != 0})
	}
	m.firstSeen = seen
	return out, nil
}

// flowID names a flow by its original direction.
func flowID(f conntrack.Flow) string { return f.Orig.Src.String() + ">" + f.Orig.Dst.String() }

func (m *flowMechanism) Shed(_ context.Context, conns []rebalance.Conn) (int, error) {
	var flows []conntrack.Flow
	for _, c := range conns {
		if f, ok := m.shown[c.ID]; ok {
			flows = append(flows, f)
		}
	}
	return m.marker.MarkFlows(flows, m.mark, m.mark)
}

// eventObserver adds a Kubernetes Event on the Service to each round that
// closes connections (with a cluster; the recorder's correlator folds
// similar events of one episode together).
type eventObserver struct {
	rebalance.Observer
	recorder record.EventRecorder
	node     string
}

func (o eventObserver) Round(name dataplane.ServicePortName, plan rebalance.Plan, toClose int, dryRun bool) {
	o.Observer.Round(name, plan, toClose, dryRun)
	if toClose == 0 {
		return
	}
	ref := &v1.ObjectReference{APIVersion: "v1", Kind: "Service", Namespace: name.Namespace, Name: name.Name}
	o.recorder.Eventf(ref, v1.EventTypeNormal, "Rebalancing",
		"node %s, port %s: closing %d connections (plan %d) so they even out: max/mean %.2f -> %.2f; per backend %s -> %s",
		o.node, name, toClose, len(plan.Shed), plan.Ratio, plan.RatioAfter, rebalance.FormatCounts(plan.Before), rebalance.FormatCounts(plan.After))
}

// newEventRecorder sends Events through client as "switchyard" on node.
// The returned func stops the broadcaster.
func newEventRecorder(client kubernetes.Interface, node string) (record.EventRecorder, func()) {
	b := record.NewBroadcaster()
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	return b.NewRecorder(scheme.Scheme, v1.EventSource{Component: "switchyard", Host: node}), b.Shutdown
}
