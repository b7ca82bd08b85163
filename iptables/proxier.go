package iptables

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/dataplane"
)

// Proxier is the iptables+ipset part of the IPVS dataplane: it keeps the
// masquerade sets and chains in line with the model. It implements
// dataplane.Dataplane; Sync and Cleanup must not run concurrently.
type Proxier struct {
	cfg    Config
	ipset  IPSet
	tables Tables
	sysctl Sysctl

	// synced is false until the first successful Sync, which is then always
	// a full one whatever the caller says.
	synced bool
	// known caches set contents for partial syncs (see syncSets). It is
	// dropped on any failed Sync and by Cleanup, so the next Sync reads the
	// kernel again.
	known map[string]*knownSet
	// repairs counts the syncs that repaired drift (see Repairs).
	repairs atomic.Uint64
}

var (
	_ dataplane.Dataplane      = (*Proxier)(nil)
	_ dataplane.RepairReporter = (*Proxier)(nil)
)

// Repairs implements dataplane.RepairReporter: the successful syncs after
// the first that wrote to a set, chain or hook while no Service had
// changed (the model, and so Desired, was the one already applied): the
// kernel had lost or changed something behind the agent's back.
func (p *Proxier) Repairs() uint64 { return p.repairs.Load() }

// NewProxier returns a Proxier for cfg.Family programming through ipset and
// tables; tables must be of that family (NewTables(WithFamily(...)) or
// NewFakeTablesFamily), which is checked when tables reports its family.
// sysctl may be nil unless cfg.ConntrackTCPBeLiberal is set. Nothing is
// changed in the kernel until Sync or Cleanup.
func NewProxier(cfg Config, ipset IPSet, tables Tables, sysctl Sysctl) (*Proxier, error) {
	if ipset == nil || tables == nil {
		return nil, errors.New("iptables proxier: nil ipset or tables")
	}
	if cfg.ConntrackTCPBeLiberal && sysctl == nil {
		return nil, errors.New("iptables proxier: ConntrackTCPBeLiberal needs a Sysctl")
	}
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("iptables proxier: %w", err)
	}
	cfg = cfg.withDefaults()
	if f, ok := tables.(interface{ Family() Family }); ok && f.Family() != cfg.Family {
		return nil, fmt.Errorf("iptables proxier: %s tables for a %s proxier", f.Family(), cfg.Family)
	}
	cfg.RandomFully = tables.HasRandomFully()
	return &Proxier{cfg: cfg, ipset: ipset, tables: tables, sysctl: sysctl}, nil
}

// Name is "iptables" for IPv4 and "ip6tables" for IPv6, so the two parts
// of a dual-stack chain are told apart in logs and errors.
func (p *Proxier) Name() string {
	if p.cfg.Family == FamilyINet6 {
		return "ip6tables"
	}
	return "iptables"
}

// Family returns the IP family the Proxier programs.
func (p *Proxier) Family() Family { return p.cfg.Family }

// ResetMark is the conntrack mark bit its rules reset connections for
// (Config.ResetMark): what the rebalancer must set with
// conntrack.Netlink.MarkFlows(flows, m, m); 0 when the rules are off.
func (p *Proxier) ResetMark() uint32 { return p.cfg.ResetMark() }

// Sync makes the kernel match Desired(st): sets first (so every rule can
// reference them), then chains leaves first, then the hooks, then removal
// of what is no longer wanted. Every step reads what the kernel has and
// writes only differences, so a sync against a matching kernel (e.g. after
// a restart) changes nothing.
//
// Chains and hooks are read back on every sync (about a dozen iptables
// execs), so a chain or hook deleted or edited behind our back is repaired
// by the very next sync; so is a deleted set (its existence is checked).
// Set members are read back on full syncs only (see syncSets). Full syncs
// also remove stale owned sets and re-apply sysctls.
//
// Changes only decides full versus partial: the sets aggregate every
// Service, so Desired is always computed whole (cheap next to the kernel
// round trips).
func (p *Proxier) Sync(ctx context.Context, st *dataplane.State, changes dataplane.Changes) (err error) {
	if st == nil {
		return errors.New("sync: nil state")
	}
	logger := klog.FromContext(ctx).WithValues("dataplane", p.Name())
	full := changes.Full || !p.synced
	start := time.Now()
	want := Desired(st, p.cfg)

	if full {
		p.ensureSysctls(ctx)
	}
	defer func() {
		if err != nil {
			p.known = nil
		}
	}()
	var n opCounts
	if err := p.syncSets(ctx, want, full, &n); err != nil {
		return fmt.Errorf("sync sets: %w", err)
	}
	existing, err := p.listChains()
	if err != nil {
		return fmt.Errorf("sync chains: %w", err)
	}
	if err := p.syncChains(ctx, want, existing, &n); err != nil {
		return fmt.Errorf("sync chains: %w", err)
	}
	if err := p.syncHooks(ctx, want, &n); err != nil {
		return fmt.Errorf("sync hooks: %w", err)
	}
	if err := p.removeStaleChains(ctx, want, existing, &n); err != nil {
		return fmt.Errorf("remove stale chains: %w", err)
	}
	if full {
		if err := p.removeStaleSets(ctx, want); err != nil {
			return fmt.Errorf("remove stale sets: %w", err)
		}
	}
	if p.synced && len(changes.Services) == 0 && n.wrote() {
		p.repairs.Add(1)
		logger.Info("Repaired drift: sets or chains differed from what this agent had programmed",
			"memberAdds", n.memberAdds, "memberDels", n.memberDels, "setCreates", n.setCreates,
			"ruleWrites", n.ruleWrites, "chainCreates", n.chainCreates, "chainDeletes", n.chainDeletes)
	}
	p.synced = true
	logger.V(2).Info("Synced iptables and ipsets", "full", full, "took", time.Since(start),
		"memberAdds", n.memberAdds, "memberDels", n.memberDels, "setCreates", n.setCreates,
		"setGrows", n.setGrows, "ruleWrites", n.ruleWrites, "chainCreates", n.chainCreates)
	return nil
}

// opCounts counts kernel writes of one sync, for the log.
type opCounts struct {
	memberAdds, memberDels, setCreates, setGrows int
	ruleWrites, chainCreates, chainDeletes       int
}

// wrote reports whether the sync changed anything in the kernel. Growing
// a set is capacity, not content, and is left out.
func (n opCounts) wrote() bool {
	return n.memberAdds+n.memberDels+n.setCreates+n.ruleWrites+n.chainCreates+n.chainDeletes > 0
}

// ensureSysctls applies the conntrack sysctl. Failing to write it (a
// read-only /proc/sys in a container, say) is logged, not fatal: SNAT works
// without it, only out-of-window TCP segments are handled worse.
func (p *Proxier) ensureSysctls(ctx context.Context) {
	if !p.cfg.ConntrackTCPBeLiberal {
		return
	}
	logger := klog.FromContext(ctx)
	if v, err := p.sysctl.Get(sysctlTCPBeLiberal); err == nil && v == "1" {
		return
	}
	if err := p.sysctl.Set(sysctlTCPBeLiberal, "1"); err != nil {
		logger.Info("Warning: cannot set sysctl, continuing without it", "sysctl", sysctlTCPBeLiberal, "err", err)
		return
	}
	logger.V(2).Info("Set sysctl", "sysctl", sysctlTCPBeLiberal, "value", "1")
}
