package hostport

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/conntrack"
	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/dataplane/source"
	"github.com/switchyard/switchyard/sysctl"
)

// Config wires a Proxier.
type Config struct {
	// Conn programs nftables in the node's network namespace (NewConn).
	// Required.
	Conn Conn
	// Conntrack clears the UDP and SCTP flows a mapping change leaves
	// stuck (conntrack.NewNetlink in the node's namespace). Required.
	Conntrack conntrack.Interface
	// Sysctl tells whether the node has IPv6 (net.ipv6.conf.all.
	// disable_ipv6); nil means both families are programmed.
	Sysctl sysctl.Interface
	// Notify asks the sync loop for a sync (dataplane.Syncer.Notify); it is
	// called after a Pod event that changes hostPorts, from the event's
	// goroutine, without locks held. May be nil.
	Notify func()
	// Report receives the current problems whenever they change (after a
	// Sync): the input for metrics. Each new problem is also logged once.
	// Called from Sync's goroutine. May be nil.
	Report func(Problems)
}

// Problems are the hostPorts this node cannot honour as asked.
type Problems struct {
	Conflicts  []Conflict
	Collisions []Collision
	Invalid    []InvalidPort
}

// Proxier programs the Pods' hostPorts of this node. It implements
// dataplane.Dataplane (put it in the agent's dataplane.Chain) and
// source.PodHandler (give it the Pods of this node). Pod events may come
// from any goroutine; Sync, Cleanup and Dump are serialized.
type Proxier struct {
	cfg Config

	podMu sync.Mutex
	// pods holds the Pods with at least one hostPort, as delivered
	// (read-only: informers share them).
	pods        map[types.NamespacedName]*v1.Pod
	podsSynced  bool
	podsChanged bool

	mu sync.Mutex
	// families are the tables programmed, ip first; nil until the first
	// Sync decides whether the node has IPv6.
	families []*familyState
	// pending are conntrack filters not cleared yet (ClearFlows failed);
	// retried on every Sync until they succeed.
	pending map[conntrack.Filter]bool
	// reported are the problems last reported, by their text.
	reported map[string]bool
	// repairs counts the syncs that repaired drift (see Repairs).
	repairs atomic.Uint64
}

type familyState struct {
	f *family
	// synced: the last Sync left the table as wanted. Until the next Pod
	// change or full sync, a Sync only checks that the table still
	// exists.
	synced bool
}

// Repairs implements dataplane.RepairReporter: the successful syncs that
// wrote to a table this process had left as wanted, with no Pod changed
// since (the table deleted or edited behind the agent's back).
func (p *Proxier) Repairs() uint64 { return p.repairs.Load() }

var (
	_ dataplane.RepairReporter = (*Proxier)(nil)
	_ dataplane.Dataplane      = (*Proxier)(nil)
	_ source.PodHandler        = (*Proxier)(nil)
)

// NewProxier returns a Proxier. Nothing changes in the kernel until Sync or
// Cleanup.
func NewProxier(cfg Config) (*Proxier, error) {
	if cfg.Conn == nil {
		return nil, errors.New("hostport proxier: nil Conn")
	}
	if cfg.Conntrack == nil {
		return nil, errors.New("hostport proxier: nil conntrack Interface")
	}
	if cfg.Notify == nil {
		cfg.Notify = func() {}
	}
	return &Proxier{cfg: cfg, pods: map[types.NamespacedName]*v1.Pod{}, pending: map[conntrack.Filter]bool{}}, nil
}

// Name implements dataplane.Dataplane.
func (p *Proxier) Name() string { return "hostport" }

// OnPodUpsert implements source.PodHandler. Pods without hostPorts are not
// kept, and updates that change nothing hostPorts depend on (most status
// updates) do not ask for a sync.
func (p *Proxier) OnPodUpsert(pod *v1.Pod) {
	if pod == nil {
		return
	}
	name := podName(pod)
	p.podMu.Lock()
	old, had := p.pods[name]
	switch {
	case !hasHostPort(pod) && !had:
		p.podMu.Unlock()
		return
	case !hasHostPort(pod):
		delete(p.pods, name)
	default:
		p.pods[name] = pod
		if had && podView(old) == podView(pod) {
			p.podMu.Unlock()
			return
		}
	}
	p.podsChanged = true
	p.podMu.Unlock()
	p.cfg.Notify()
}

// OnPodDelete implements source.PodHandler.
func (p *Proxier) OnPodDelete(namespace, name string) {
	key := types.NamespacedName{Namespace: namespace, Name: name}
	p.podMu.Lock()
	_, had := p.pods[key]
	delete(p.pods, key)
	if had {
		p.podsChanged = true
	}
	p.podMu.Unlock()
	if had {
		p.cfg.Notify()
	}
}

// SetPodsSynced implements source.PodHandler. Until it is called, Sync
// adds and updates mappings but deletes none it finds in the kernel, so a
// restarted agent keeps the hostPorts of Pods it has not heard of yet.
func (p *Proxier) SetPodsSynced() {
	p.podMu.Lock()
	if p.podsSynced {
		p.podMu.Unlock()
		return
	}
	p.podsSynced, p.podsChanged = true, true
	p.podMu.Unlock()
	p.cfg.Notify()
}

// podView renders what the mappings of a Pod depend on.
func podView(pod *v1.Pod) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s|%v|%v|%s|%s|%v|", pod.Spec.NodeName, pod.Spec.HostNetwork,
		pod.Status.Phase == v1.PodSucceeded || pod.Status.Phase == v1.PodFailed,
		pod.CreationTimestamp.UTC().Format(time.RFC3339Nano), pod.Status.PodIP, pod.Status.PodIPs)
	for _, c := range pod.Spec.Containers {
		for _, port := range c.Ports {
			if port.HostPort != 0 {
				fmt.Fprintf(&b, "%s/%s/%s/%d/%d;", c.Name, port.Protocol, port.HostIP, port.HostPort, port.ContainerPort)
			}
		}
	}
	return b.String()
}

// Sync makes the hostport tables match the Pods (st gives the node name and
// the Services, for NodePort collisions).
//
// When the Pods changed, on full syncs and after a failure, it reads each
// table back and writes only the difference (drift is repaired; a table
// that matches, as after a restart, gets no writes); otherwise it only
// checks that the tables still exist. All writes go in one transaction.
// Then it clears the conntrack flows the change left stuck (see
// staleFlowFilters); a failure there is returned, and retried by every
// Sync until it succeeds.
func (p *Proxier) Sync(ctx context.Context, st *dataplane.State, changes dataplane.Changes) error {
	if st == nil {
		return errors.New("sync: nil state")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	logger := klog.FromContext(ctx).WithValues("dataplane", p.Name())
	if p.families == nil {
		p.families = p.detectFamilies(logger)
	}

	p.podMu.Lock()
	pods := slices.Collect(maps.Values(p.pods))
	podsSynced, podsChanged := p.podsSynced, p.podsChanged
	p.podsChanged = false
	p.podMu.Unlock()

	mappings, conflicts, invalid := Desired(pods, st.NodeName)
	p.report(logger, Problems{Conflicts: conflicts, Collisions: NodePortCollisions(mappings, st), Invalid: invalid})
	if podsChanged && len(p.families) == 1 && slices.ContainsFunc(mappings, Mapping.IPv6) {
		logger.V(2).Info("Ignoring IPv6 hostPorts: the node has no IPv6")
	}

	fail := func(err error) error {
		for _, fs := range p.families {
			fs.synced = false
		}
		return err
	}
	var (
		batches       []*batch
		planned       []*familyState
		before, after []entries
		// drift: a family's table was left as wanted by the last sync
		// and no Pod changed, so any write to it is a repair.
		drift []bool
	)
	for _, fs := range p.families {
		full := changes.Full || podsChanged || !fs.synced
		if !full {
			// Whatever deletes the table (`nft flush ruleset` by a
			// firewall reload, say) breaks every hostPort: one small
			// request per family finds it.
			exists, err := tableExists(p.cfg.Conn, fs.f)
			if err != nil {
				return fail(fmt.Errorf("sync: %w", err))
			}
			if exists {
				continue
			}
			logger.Info("hostport table is gone; recreating it", "table", fs.f.name+" "+TableName)
		}
		kt, err := readTable(p.cfg.Conn, fs.f)
		if err != nil {
			return fail(fmt.Errorf("sync: read %s table: %w", fs.f.name, err))
		}
		have := decodeEntries(fs.f, kt.elems)
		want := entriesOf(fs.f, mappings)
		if !podsSynced {
			// Keep what an earlier agent programmed for Pods not
			// delivered yet.
			for k, v := range have {
				if _, ok := want[k]; !ok {
					want[k] = v
				}
			}
		}
		b := plan(fs.f, kt, want)
		switch {
		case b.rebuild != "":
			logger.Info("hostport table differs in structure; recreating it", "table", fs.f.name+" "+TableName, "reason", b.rebuild)
		case !kt.exists:
			logger.V(2).Info("Creating hostport table", "table", fs.f.name+" "+TableName)
		}
		batches, planned = append(batches, b), append(planned, fs)
		before, after = append(before, have), append(after, want)
		drift = append(drift, fs.synced && podsSynced && !podsChanged)
	}
	stats, err := runBatches(p.cfg.Conn, batches)
	if err != nil {
		return fail(fmt.Errorf("sync: %w", err))
	}
	repaired := false
	for i, fs := range planned {
		repaired = repaired || drift[i] && batches[i].stats.Messages > 0
		fs.synced = true
		for _, f := range staleFlowFilters(before[i], after[i]) {
			p.pending[f] = true
		}
	}
	if repaired {
		p.repairs.Add(1)
		logger.Info("Repaired hostport drift: a table differed from what this agent had programmed", "messages", stats.Messages)
	}
	if stats.Messages > 0 {
		logger.V(2).Info("Synced hostport tables", "mappings", len(mappings), "messages", stats.Messages,
			"tablesCreated", stats.TablesCreated, "chainsRewritten", stats.ChainsRewritten,
			"elementsAdded", stats.ElementsAdded, "elementsDeleted", stats.ElementsDeleted)
	}
	return p.clearPendingFlows(logger)
}

// clearPendingFlows deletes the flows of p.pending; they stay pending when
// that fails.
func (p *Proxier) clearPendingFlows(logger klog.Logger) error {
	if len(p.pending) == 0 {
		return nil
	}
	filters := slices.SortedFunc(maps.Keys(p.pending), conntrack.CompareFilters)
	n, err := p.cfg.Conntrack.ClearFlows(filters)
	if err != nil {
		return fmt.Errorf("sync: clear stale conntrack flows of changed hostPorts (retried next sync): %w", err)
	}
	clear(p.pending)
	logger.V(2).Info("Cleared conntrack flows of changed hostPorts", "filters", len(filters), "deleted", n)
	return nil
}

// report logs each problem not reported before and, when the set changed,
// hands the current ones to cfg.Report.
func (p *Proxier) report(logger klog.Logger, pr Problems) {
	now := map[string]bool{}
	for _, c := range pr.Conflicts {
		k := "conflict: " + c.String()
		now[k] = true
		if !p.reported[k] {
			logger.Info("hostPort conflict: the earlier Pod keeps the port, the other one gets none",
				"hostPort", c.Loser.Key().String(), "pod", c.Loser.Pod.String(),
				"winnerHostPort", c.Winner.Key().String(), "winnerPod", c.Winner.Pod.String())
		}
	}
	for _, c := range pr.Collisions {
		k := "collision: " + c.String()
		now[k] = true
		if !p.reported[k] {
			what := "nodePort"
			if c.HealthCheck {
				what = "healthCheckNodePort"
			}
			logger.Info("hostPort takes the port of a Service on this node", "hostPort", c.Mapping.Key().String(),
				"pod", c.Mapping.Pod.String(), "service", c.Service.String(), "servicePort", what)
		}
	}
	for _, ip := range pr.Invalid {
		k := "invalid: " + ip.String()
		now[k] = true
		if !p.reported[k] {
			logger.Info("Ignoring a hostPort that cannot be mapped", "pod", ip.Pod.String(), "container", ip.Container,
				"reason", ip.Reason, "detail", ip.Detail)
		}
	}
	if maps.Equal(now, p.reported) {
		return
	}
	p.reported = now
	if p.cfg.Report != nil {
		p.cfg.Report(pr)
	}
}

// sysctlDisableIPv6 exists when the kernel has IPv6; 1 disables it on every
// interface of the network namespace.
const sysctlDisableIPv6 = "net/ipv6/conf/all/disable_ipv6"

// detectFamilies returns the tables to program: ip always, ip6 when the
// node has IPv6 (decided once, as the nftables dataplane does).
func (p *Proxier) detectFamilies(logger klog.Logger) []*familyState {
	out := []*familyState{{f: ipv4}}
	if p.cfg.Sysctl != nil {
		v, err := p.cfg.Sysctl.Get(sysctlDisableIPv6)
		switch {
		case err != nil:
			logger.Info("IPv6 is not available on this node; hostPorts for IPv4 only", "table", "ip6 "+TableName, "err", err)
			return out
		case strings.TrimSpace(v) != "0":
			logger.Info("IPv6 is disabled on this node; hostPorts for IPv4 only", "table", "ip6 "+TableName,
				"sysctl", sysctlDisableIPv6, "value", v)
			return out
		}
	}
	return append(out, &familyState{f: ipv6})
}

// Cleanup deletes hostport's tables in both families (whether or not the
// node has IPv6 now) and nothing else, in one transaction. It needs no
// prior Sync and succeeds when there is nothing to delete.
func (p *Proxier) Cleanup(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, fs := range p.families {
		fs.synced = false
	}
	clear(p.pending)
	var gone []*family
	for _, f := range allFamilies {
		exists, err := tableExists(p.cfg.Conn, f)
		if err != nil {
			return fmt.Errorf("cleanup: %w", err)
		}
		if exists {
			gone = append(gone, f)
		}
	}
	if len(gone) == 0 {
		return nil
	}
	var deleted []string
	for _, f := range gone {
		p.cfg.Conn.DelTable(f.tableRef())
		deleted = append(deleted, f.name+" "+TableName)
	}
	if err := p.cfg.Conn.Flush(); err != nil {
		return fmt.Errorf("cleanup: delete %v: %w", deleted, err)
	}
	klog.FromContext(ctx).V(2).Info("Deleted hostport tables", "tables", deleted)
	return nil
}

// Dump renders hostport's tables as the kernel has them (see DumpTables).
func (p *Proxier) Dump() (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return DumpTables(p.cfg.Conn)
}
