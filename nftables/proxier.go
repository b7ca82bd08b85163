package nftables

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/sysctl"
)

// Proxier is the nftables dataplane. It implements dataplane.Dataplane;
// Sync, Cleanup and Dump are serialized.
type Proxier struct {
	cfg    Config
	conn   Conn
	sysctl Sysctl
	// closer closes a connection the Proxier opened itself (New).
	closer func() error

	mu sync.Mutex
	// tables are the families programmed, IPv4 first; nil until the first
	// Sync decides whether the node has IPv6 (see detectFamilies).
	tables []*familyTable
	// last counts the writes of the last successful sync.
	last syncStats
	// repairs counts the syncs that repaired drift (see Repairs).
	repairs atomic.Uint64
}

// familyTable is the sync state of one family's table.
type familyTable struct {
	fam *family
	// applied is what the last successful sync left in the table. nil
	// before the first sync, after a failed one and after Cleanup: the
	// next sync of the table then reads the kernel and is full.
	applied *tableState
}

var (
	_ dataplane.Dataplane      = (*Proxier)(nil)
	_ dataplane.RepairReporter = (*Proxier)(nil)
)

// Repairs implements dataplane.RepairReporter: the successful syncs that
// found a table this process had programmed gone, or that wrote anything
// in a full sync with no Service changed since the last one (a periodic
// resync finding the kernel edited behind the agent's back).
func (p *Proxier) Repairs() uint64 { return p.repairs.Load() }

// NewProxier returns a Proxier programming through conn (NewConn gives one
// for any network namespace). sysctl may be nil unless
// cfg.ConntrackTCPBeLiberal is set. Nothing changes in the kernel until
// Sync or Cleanup.
func NewProxier(cfg Config, conn Conn, sysctl Sysctl) (*Proxier, error) {
	if conn == nil {
		return nil, errors.New("nftables proxier: nil Conn")
	}
	if cfg.ConntrackTCPBeLiberal && sysctl == nil {
		return nil, errors.New("nftables proxier: ConntrackTCPBeLiberal needs a Sysctl")
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("nftables proxier: %w", err)
	}
	return &Proxier{cfg: cfg, conn: conn, sysctl: sysctl}, nil
}

// New returns a Proxier for the caller's network namespace (the node's,
// for the agent), with its own netlink connection and /proc/sys.
// ResetMark is the conntrack mark bit the dataplane's rules turn into a
// reset (0 when they are off): the rebalancer's.
func (p *Proxier) ResetMark() uint32 { return p.cfg.ResetMark() }

func New(cfg Config) (*Proxier, error) {
	conn, err := NewConn(0)
	if err != nil {
		return nil, fmt.Errorf("nftables proxier: %w", err)
	}
	p, err := NewProxier(cfg, conn, sysctl.New())
	if err != nil {
		conn.Close()
		return nil, err
	}
	p.closer = conn.Close
	return p, nil
}

// Close releases the connection New opened; the kernel state stays.
func (p *Proxier) Close() error {
	if p.closer == nil {
		return nil
	}
	return p.closer()
}

// Name implements dataplane.Dataplane.
func (p *Proxier) Name() string { return "nftables" }

// Sync makes the tables (ip, and ip6 when the node has IPv6) match st.
//
// A table's sync is full (changes.Full, its first sync, any sync after a
// failure, or when the table disappeared): it reads the whole table back
// (chains, their rules, named set elements), compares it with the desired
// state and writes only differences: a chain or element deleted or altered
// behind our back is restored, stale chains and elements are removed, and
// a new process whose tables already match (a restart) writes nothing.
//
// A partial sync trusts the last applied state and recomputes only the
// changed Services: it flushes and refills the chains of the Service ports
// that changed and adds or deletes their map elements. Its cost does not
// depend on how many Services there are.
//
// Either way all writes, of both families, go in one transaction, which
// the kernel applies atomically.
func (p *Proxier) Sync(ctx context.Context, st *dataplane.State, changes dataplane.Changes) error {
	if st == nil {
		return errors.New("sync: nil state")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	logger := klog.FromContext(ctx).WithValues("dataplane", p.Name())
	start := time.Now()
	if p.tables == nil {
		p.tables = p.detectFamilies(logger)
	}
	fail := func(err error) error {
		for _, ft := range p.tables {
			ft.applied = nil
		}
		return err
	}
	fulls := make([]bool, len(p.tables))
	anyFull := false
	// drift[i]: writing anything to family i's table repairs drift. The
	// state this process applied is known (not the first sync, nor one
	// after a failure) and nothing in the model changed, or the table
	// was deleted.
	drift := make([]bool, len(p.tables))
	for i, ft := range p.tables {
		drift[i] = ft.applied != nil && len(changes.Services) == 0
		full := changes.Full || ft.applied == nil
		if !full {
			// Whatever deletes a whole table (`nft flush ruleset` by a
			// firewall reload, say) breaks every Service: check for it on
			// every sync, it costs one small request per family.
			exists, err := tableExists(p.conn, ft.fam)
			if err != nil {
				return fail(fmt.Errorf("partial sync: %w", err))
			}
			if !exists {
				logger.Info("nftables table is gone; syncing it in full", "table", tableName, "family", ft.fam.name)
				full = true
				drift[i] = true
			}
		}
		fulls[i] = full
		anyFull = anyFull || full
	}
	if anyFull {
		p.ensureSysctls(logger)
	}
	batches := make([]*batch, len(p.tables))
	wants := make([]*tableState, len(p.tables))
	for i, ft := range p.tables {
		if fulls[i] {
			b, want, err := p.planFullSync(logger, ft.fam, st)
			if err != nil {
				return fail(err)
			}
			batches[i], wants[i] = b, want
		} else {
			// Updates ft.applied in place; a failure below clears it.
			batches[i] = planPartial(logger, p.cfg, ft.fam, ft.applied, st, changes)
			wants[i] = ft.applied
		}
	}
	stats, err := runBatches(p.conn, batches)
	if err != nil {
		what := "partial sync"
		if anyFull {
			what = "full sync"
		}
		return fail(fmt.Errorf("%s: %w", what, err))
	}
	repaired := false
	for i, ft := range p.tables {
		ft.applied = wants[i]
		repaired = repaired || fulls[i] && drift[i] && !batches[i].empty()
	}
	if repaired {
		p.repairs.Add(1)
		logger.Info("Repaired nftables drift: the table differed from what this agent had programmed", "messages", stats.Messages)
	}
	p.last = stats
	logger.V(2).Info("Synced nftables", "full", anyFull, "took", time.Since(start), "messages", stats.Messages,
		"chainsAdded", stats.ChainsAdded, "chainsRewritten", stats.ChainsRewritten, "chainsDeleted", stats.ChainsDeleted,
		"elementsAdded", stats.ElementsAdded, "elementsDeleted", stats.ElementsDeleted)
	return nil
}

// sysctlDisableIPv6 exists when the kernel has IPv6 (not booted with
// ipv6.disable=1); set to 1 it disables IPv6 on every interface of the
// network namespace.
const sysctlDisableIPv6 = "net/ipv6/conf/all/disable_ipv6"

// detectFamilies returns the tables to program: ip always, ip6 when the
// node has IPv6. Without IPv6 the ip6 table is skipped (one log line) and
// IPv4 works as usual. Decided once per Proxier, as kube-proxy decides its
// families at start. Without a Sysctl nothing can be checked and both are
// programmed.
func (p *Proxier) detectFamilies(logger klog.Logger) []*familyTable {
	tables := []*familyTable{{fam: ipv4}}
	if p.sysctl != nil {
		v, err := p.sysctl.Get(sysctlDisableIPv6)
		switch {
		case err != nil:
			logger.Info("IPv6 is not available on this node; programming IPv4 only", "table", "ip6 "+tableName, "err", err)
			return tables
		case v != "0":
			logger.Info("IPv6 is disabled on this node; programming IPv4 only", "table", "ip6 "+tableName,
				"sysctl", sysctlDisableIPv6, "value", v)
			return tables
		}
	}
	return append(tables, &familyTable{fam: ipv6})
}

// ensureSysctls applies the conntrack sysctl. Failing to write it (a
// read-only /proc/sys in a container, say) is logged, not fatal: Services
// work without it, only out-of-window TCP segments are handled worse.
func (p *Proxier) ensureSysctls(logger klog.Logger) {
	if !p.cfg.ConntrackTCPBeLiberal {
		return
	}
	if v, err := p.sysctl.Get(sysctlTCPBeLiberal); err == nil && v == "1" {
		return
	}
	if err := p.sysctl.Set(sysctlTCPBeLiberal, "1"); err != nil {
		logger.Info("Warning: cannot set sysctl, continuing without it", "sysctl", sysctlTCPBeLiberal, "err", err)
		return
	}
	logger.V(2).Info("Set sysctl", "sysctl", sysctlTCPBeLiberal, "value", "1")
}

// Cleanup deletes switchyard's table (and with it everything switchyard
// created) in every family, ip and ip6, whether or not this node has IPv6
// now, and nothing else. It needs no prior Sync and succeeds when there is
// nothing to delete.
func (p *Proxier) Cleanup(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, ft := range p.tables {
		ft.applied = nil
	}
	var errs []error
	for _, f := range allFamilies {
		exists, err := tableExists(p.conn, f)
		if err != nil {
			errs = append(errs, fmt.Errorf("cleanup: %w", err))
			continue
		}
		if !exists {
			continue
		}
		p.conn.DelTable(f.tableRef())
		if err := p.conn.Flush(); err != nil {
			errs = append(errs, fmt.Errorf("cleanup: delete table %s %s: %w", f.name, tableName, err))
			continue
		}
		klog.FromContext(ctx).V(2).Info("Deleted nftables table", "family", f.name, "table", tableName)
	}
	return errors.Join(errs...)
}

// Dump renders switchyard's tables as the kernel has them (see DumpTable).
func (p *Proxier) Dump() (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return DumpTable(p.conn)
}
