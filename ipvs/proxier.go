package ipvs

import (
	"errors"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"

	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/dataplane"
)

// Proxier is the IPVS dataplane. It implements dataplane.Dataplane.
type Proxier struct {
	cfg    Config
	handle Handle
	links  Links
	sysctl Sysctl
	clock  Clock
	file   *stateFile

	// syncMu serializes Sync and Cleanup and guards the fields below it.
	syncMu sync.Mutex
	// persist is the state file's content, loaded on first use.
	persist *persistentState
	// persistSaved: the state file holds persist (the last save succeeded).
	persistSaved bool
	// synced: the last Sync succeeded, so a partial one may follow.
	synced     bool
	sysctlsSet bool
	// idx records the claims of every Service port as of the last sync
	// (and the node IPs it was built for): a partial sync computes the
	// desired state of the changed Services from it and reads back only
	// their keys. Rebuilt by every full sync.
	idx *desiredIndex
	// loggedUnsupported remembers addresses already reported as
	// unsupported, to log them once.
	loggedUnsupported map[netip.Addr]bool

	// mu guards the trigger, the drain timer and the snapshot, which other
	// goroutines use.
	mu        sync.Mutex
	trigger   func()
	stopTimer func() bool
	snapshot  map[Key]VirtualServer

	// repairs counts the syncs that repaired drift (see Repairs).
	repairs atomic.Uint64
}

var (
	_ dataplane.Dataplane      = (*Proxier)(nil)
	_ dataplane.RepairReporter = (*Proxier)(nil)
)

// Repairs implements dataplane.RepairReporter: the syncs that put back a
// virtual server, real server or dummy-link address the last sync had
// left in the kernel and that is still wanted, or reset the configuration
// or weight of one to the value it had last set (a weight-0 drain
// included). Deleting real servers (a drain ending), adding new ones and
// changes the model asks for are not repairs, nor is adopting the kernel's
// table after a restart.
func (p *Proxier) Repairs() uint64 { return p.repairs.Load() }

// Option customizes a Proxier.
type Option func(*Proxier)

// WithClock replaces the wall clock (tests).
func WithClock(c Clock) Option { return func(p *Proxier) { p.clock = c } }

// NewProxier returns the IPVS dataplane. It touches nothing until the first
// Sync or Cleanup.
func NewProxier(cfg Config, h Handle, l Links, s Sysctl, opts ...Option) (*Proxier, error) {
	if h == nil || l == nil || s == nil {
		return nil, errors.New("ipvs proxier: nil Handle, Links or Sysctl")
	}
	cfg.NodePortAddresses = slices.Clone(cfg.NodePortAddresses)
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	p := &Proxier{
		cfg:               cfg,
		handle:            h,
		links:             l,
		sysctl:            s,
		clock:             realClock{},
		file:              newStateFile(cfg.StateDir),
		loggedUnsupported: map[netip.Addr]bool{},
		snapshot:          map[Key]VirtualServer{},
	}
	for _, o := range opts {
		o(p)
	}
	return p, nil
}

// Name implements dataplane.Dataplane.
func (p *Proxier) Name() string { return "ipvs" }

// SetTrigger sets the function that asks the sync loop for a sync soon. The
// Proxier calls it, from a timer goroutine, while removed TCP real servers
// are draining, so they are deleted once their connections end.
func (p *Proxier) SetTrigger(f func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.trigger = f
}

// Snapshot returns the virtual servers switchyard owns as last read from
// the kernel, with the changes of later syncs applied, sorted by key. It
// is safe to call from any goroutine (yardctl, metrics).
func (p *Proxier) Snapshot() []VirtualServer {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]VirtualServer, 0, len(p.snapshot))
	for _, k := range slices.SortedFunc(maps.Keys(p.snapshot), Key.Compare) {
		vs := p.snapshot[k]
		vs.RealServers = slices.Clone(vs.RealServers)
		out = append(out, vs)
	}
	return out
}

// loadState reads the state file once per process (and after Cleanup).
func (p *Proxier) loadState() {
	if p.persist != nil {
		return
	}
	s, err := p.file.load()
	if err != nil {
		klog.ErrorS(err, "Ignoring unreadable IPVS state file; NodePort virtual servers it listed are left alone, drains restart now")
	}
	p.persist = s
	p.persistSaved = false
}

// scheduleDrainCheck arms one timer that triggers a sync while drains are
// pending.
func (p *Proxier) scheduleDrainCheck(pending bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !pending || p.trigger == nil || p.stopTimer != nil {
		return
	}
	p.stopTimer = p.clock.AfterFunc(p.cfg.DrainCheckInterval, func() {
		p.mu.Lock()
		p.stopTimer = nil
		trigger := p.trigger
		p.mu.Unlock()
		if trigger != nil {
			trigger()
		}
	})
}

func (p *Proxier) cancelDrainCheck() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopTimer != nil {
		p.stopTimer()
		p.stopTimer = nil
	}
}

// setSnapshot replaces the snapshot entries of the keys in scope (all of
// them on a full sync).
func (p *Proxier) setSnapshot(full bool, scope []Key, after map[Key]VirtualServer) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if full {
		p.snapshot = after
		return
	}
	for _, k := range scope {
		if vs, ok := after[k]; ok {
			p.snapshot[k] = vs
		} else {
			delete(p.snapshot, k)
		}
	}
}
