package nftables

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/dataplane"
)

// Proxier is the nftables dataplane. It implements dataplane.Dataplane;
// Sync, Cleanup and Dump are serialized.
type Proxier struct {
	cfg    Config
	fam    *family
	conn   Conn
	sysctl Sysctl
	// closer closes a connection the Proxier opened itself (New).
	closer func() error

	mu sync.Mutex
	// applied is what the last successful sync left in the table. nil
	// before the first sync, after a failed one and after Cleanup: the
	// next sync then reads the kernel and is full.
	applied *tableState
	// last counts the writes of the last successful sync.
	last syncStats
}

var _ dataplane.Dataplane = (*Proxier)(nil)

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
	return &Proxier{cfg: cfg, fam: ipv4, conn: conn, sysctl: sysctl}, nil
}

// New returns a Proxier for the caller's network namespace (the node's,
// for the agent), with its own netlink connection and /proc/sys.
func New(cfg Config) (*Proxier, error) {
	conn, err := NewConn(0)
	if err != nil {
		return nil, fmt.Errorf("nftables proxier: %w", err)
	}
	p, err := NewProxier(cfg, conn, NewProcSysctl())
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

// Sync makes the table match st.
//
// A full sync (changes.Full, the first sync, or any sync after a failure)
// reads the whole table back (chains, their rules, named set elements),
// compares it with the desired state and writes only differences: a chain
// or element deleted or altered behind our back is restored, stale chains
// and elements are removed, and a new process whose table already matches
// (a restart) writes nothing.
//
// A partial sync trusts the last applied state and recomputes only the
// changed Services: it flushes and refills the chains of the Service ports
// that changed and adds or deletes their map elements. Its cost does not
// depend on how many Services there are.
//
// Either way all writes go in one transaction, which the kernel applies
// atomically.
func (p *Proxier) Sync(ctx context.Context, st *dataplane.State, changes dataplane.Changes) error {
	if st == nil {
		return errors.New("sync: nil state")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	logger := klog.FromContext(ctx).WithValues("dataplane", p.Name())
	start := time.Now()
	full := changes.Full || p.applied == nil
	if !full {
		// Whatever deletes the whole table (`nft flush ruleset` by a
		// firewall reload, say) breaks every Service: check for it on
		// every sync, it costs one small request.
		exists, err := tableExists(p.conn, p.fam)
		if err != nil {
			p.applied = nil
			return fmt.Errorf("partial sync: %w", err)
		}
		if !exists {
			logger.Info("nftables table is gone; syncing in full", "table", tableName, "family", p.fam.name)
			full = true
		}
	}
	if full {
		p.ensureSysctls(logger)
	}
	var b *batch
	var err error
	if full {
		b, err = p.syncFull(logger, st)
	} else {
		b, err = p.syncPartial(logger, st, changes)
	}
	if err != nil {
		p.applied = nil
		return err
	}
	p.last = b.stats
	logger.V(2).Info("Synced nftables", "full", full, "took", time.Since(start), "messages", b.stats.Messages,
		"chainsAdded", b.stats.ChainsAdded, "chainsRewritten", b.stats.ChainsRewritten, "chainsDeleted", b.stats.ChainsDeleted,
		"elementsAdded", b.stats.ElementsAdded, "elementsDeleted", b.stats.ElementsDeleted)
	return nil
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
// created) in every family, and nothing else. It needs no prior Sync and
// succeeds when there is nothing to delete.
func (p *Proxier) Cleanup(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.applied = nil
	tables, err := p.conn.ListTablesOfFamily(p.fam.table)
	if err != nil {
		return fmt.Errorf("cleanup: list %s tables: %w", p.fam.name, err)
	}
	for _, t := range tables {
		if t.Name != tableName {
			continue
		}
		p.conn.DelTable(p.fam.tableRef())
		if err := p.conn.Flush(); err != nil {
			return fmt.Errorf("cleanup: delete table %s %s: %w", p.fam.name, tableName, err)
		}
		klog.FromContext(ctx).V(2).Info("Deleted nftables table", "family", p.fam.name, "table", tableName)
	}
	return nil
}

// Dump renders switchyard's table as the kernel has it (see DumpTable).
func (p *Proxier) Dump() (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return DumpTable(p.conn)
}
