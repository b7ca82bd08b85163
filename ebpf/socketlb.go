package ebpf

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"

	cebpf "github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/dataplane"
)

// DefaultPinPath is where the agent pins maps and links.
const DefaultPinPath = "/sys/fs/bpf/switchyard"

// Config configures a SocketLB.
type Config struct {
	// CgroupPath is the cgroup v2 directory the programs attach to; every
	// socket of a process in it or below is translated. Empty means the
	// cgroup v2 root (CgroupRoot).
	CgroupPath string
	// PinPath is the bpffs directory maps and links are pinned in. Empty
	// means nothing is pinned: the programs detach when Close is called
	// (tests, benchmarks).
	PinPath string
	// NodeAddresses returns the node's addresses, where NodePorts
	// translate; State.NodeIPs are added to them. Nil means every address
	// on the interfaces of the caller's network namespace.
	NodeAddresses func() ([]netip.Addr, error)
	// NoConnectionCounting leaves the sockops program out: no
	// per-backend counts or socket records (Connections and Sockets
	// return nothing), and connects are cheaper (see make bench-ebpf).
	NoConnectionCounting bool
}

// ErrUnsupported wraps every error that means this kernel (or machine)
// cannot run socket load balancing: no cgroup v2, no BPF, a verifier that
// refuses the programs. The agent logs it and goes on without.
var ErrUnsupported = errors.New("socket load balancing unsupported here")

// SocketLB is the socket-level load balancer. It implements
// dataplane.Dataplane; Sync, Cleanup and Close are serialized, the readers
// (Connections, Sockets) may run concurrently with them.
type SocketLB struct {
	cfg Config

	mu    sync.Mutex
	objs  *socklbObjects
	links []link.Link
	// kernel is what the maps held after the last successful sync; nil
	// before the first one and after a failure (the next sync rereads).
	kernel *kernelState
	// owner maps each BPF service this process programmed to its id.
	owner map[groupKey]uint32
	// names maps service ids back to Service ports for the readers.
	names atomic.Pointer[map[uint32]dataplane.ServicePortName]

	// lastWrites counts the map writes of the last successful sync.
	lastWrites int
	// synced is set once a sync succeeded (repairs count only after it).
	synced  bool
	repairs atomic.Uint64
}

var (
	_ dataplane.Dataplane      = (*SocketLB)(nil)
	_ dataplane.RepairReporter = (*SocketLB)(nil)
)

// New loads the programs (reusing maps pinned by an earlier agent) and
// attaches them to the cgroup, replacing the programs of pinned links in
// place so translation never stops across a restart. Errors that mean the
// machine cannot do it wrap ErrUnsupported.
func New(cfg Config) (*SocketLB, error) {
	if cfg.CgroupPath == "" {
		root, err := CgroupRoot()
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrUnsupported, err)
		}
		cfg.CgroupPath = root
	}
	// Pins of an earlier agent serve its links; pins this call creates
	// are removed again if attaching fails.
	fresh := cfg.PinPath != "" && !pinned(cfg.PinPath)
	objs, err := loadObjects(cfg.PinPath, !cfg.NoConnectionCounting)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	s := &SocketLB{cfg: cfg, objs: objs}
	if err := s.attach(); err != nil {
		if fresh {
			s.Cleanup(context.Background())
		} else {
			s.Close()
		}
		return nil, err
	}
	if cfg.NoConnectionCounting {
		// Counts of an earlier agent that counted would go stale now
		// (its sockops link is detached by attach).
		for _, m := range []*cebpf.Map{objs.ConnCounts, objs.SockRecords} {
			if err := clearMap(m); err != nil {
				s.Close()
				return nil, fmt.Errorf("clear connection counts: %w", err)
			}
		}
	}
	return s, nil
}

// NewForCleanup returns a SocketLB that only knows where things are
// pinned: its Cleanup removes what an earlier agent left (`--cleanup`).
func NewForCleanup(cfg Config) *SocketLB { return &SocketLB{cfg: cfg} }

func (s *SocketLB) Name() string { return "socketlb" }

// Repairs implements dataplane.RepairReporter: full syncs that found the
// maps differing from what this process had written.
func (s *SocketLB) Repairs() uint64 { return s.repairs.Load() }

// CgroupPath is the cgroup the programs are attached to.
func (s *SocketLB) CgroupPath() string { return s.cfg.CgroupPath }

func (s *SocketLB) attach() error {
	cgID, err := cgroupID(s.cfg.CgroupPath)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	linkDir := ""
	if s.cfg.PinPath != "" {
		linkDir = filepath.Join(s.cfg.PinPath, "links")
		if err := os.MkdirAll(linkDir, 0o700); err != nil {
			return fmt.Errorf("bpffs pin directory: %w", err)
		}
	}
	for _, a := range attachments {
		prog := a.prog(s.objs)
		if a.attach == cebpf.AttachCGroupSockOps && s.cfg.NoConnectionCounting {
			if linkDir != "" {
				// Counting was on before this restart: stop it.
				if err := ignoreNotExist(unpinAndDetach(filepath.Join(linkDir, a.name))); err != nil {
					return fmt.Errorf("detach %s: %w", a.name, err)
				}
			}
			continue
		}
		if linkDir != "" {
			l, err := reusePinnedLink(filepath.Join(linkDir, a.name), cgID, a.attach, prog)
			if err != nil {
				return err
			}
			if l != nil {
				s.links = append(s.links, l)
				continue
			}
		}
		l, err := link.AttachCgroup(link.CgroupOptions{Path: s.cfg.CgroupPath, Attach: a.attach, Program: prog})
		if err != nil {
			return fmt.Errorf("%w: attach %s to %s: %w", ErrUnsupported, a.name, s.cfg.CgroupPath, err)
		}
		s.links = append(s.links, l)
		if linkDir != "" {
			if err := l.Pin(filepath.Join(linkDir, a.name)); err != nil {
				return fmt.Errorf("pin %s link: %w", a.name, err)
			}
		}
	}
	return nil
}

// reusePinnedLink loads the link pinned at path and swaps prog into it,
// so the hook runs the new program from the next socket call on. A link
// on another cgroup or hook (the configuration changed) is unpinned and
// detached; nil means attach anew.
func reusePinnedLink(path string, cgID uint64, attach cebpf.AttachType, prog *cebpf.Program) (link.Link, error) {
	l, err := link.LoadPinnedLink(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		klog.InfoS("Replacing unusable pinned socket-LB link", "path", path, "err", err)
		_ = os.Remove(path)
		return nil, nil
	}
	info, err := l.Info()
	if err == nil && info.Cgroup() != nil && info.Cgroup().CgroupId == cgID && cebpf.AttachType(info.Cgroup().AttachType) == attach {
		if err := l.Update(prog); err != nil {
			l.Close()
			return nil, fmt.Errorf("update pinned link %s: %w", path, err)
		}
		return l, nil
	}
	klog.InfoS("Detaching pinned socket-LB link of another cgroup or hook", "path", path)
	_ = l.Unpin()
	_ = l.Detach()
	l.Close()
	return nil, nil
}

// Close releases this process's handles. Pinned links and maps stay, so
// translation goes on (the agent exits, a new one takes over); without
// pinning the programs detach.
func (s *SocketLB) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closeLocked()
}

func (s *SocketLB) closeLocked() error {
	var errs []error
	for _, l := range s.links {
		errs = append(errs, l.Close())
	}
	s.links = nil
	if s.objs != nil {
		errs = append(errs, s.objs.Close())
		s.objs = nil
	}
	s.kernel = nil
	return errors.Join(errs...)
}

// Cleanup detaches every program (pinned links included), unpins the maps
// and removes the pin directory.
func (s *SocketLB) Cleanup(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, l := range s.links {
		if s.cfg.PinPath != "" {
			errs = append(errs, ignoreNotExist(l.Unpin()))
		}
		errs = append(errs, l.Detach())
	}
	errs = append(errs, s.closeLocked())
	if s.cfg.PinPath != "" {
		errs = append(errs, cleanupPinned(s.cfg.PinPath))
	}
	s.owner = nil
	return errors.Join(errs...)
}

// cleanupPinned detaches the links pinned under dir and removes the pins.
func cleanupPinned(dir string) error {
	var errs []error
	linkDir := filepath.Join(dir, "links")
	entries, err := os.ReadDir(linkDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	for _, e := range entries {
		errs = append(errs, ignoreNotExist(unpinAndDetach(filepath.Join(linkDir, e.Name()))))
	}
	errs = append(errs, ignoreNotExist(os.RemoveAll(dir)))
	return errors.Join(errs...)
}

func ignoreNotExist(err error) error {
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

func ignoreNotSupported(err error) error {
	if errors.Is(err, cebpf.ErrNotSupported) {
		return nil
	}
	return err
}

// InterfaceAddrs lists the addresses on the interfaces of the caller's
// network namespace, loopback excluded: the default Config.NodeAddresses.
func InterfaceAddrs() ([]netip.Addr, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("list node addresses: %w", err)
	}
	var out []netip.Addr
	for _, a := range addrs {
		p, err := netip.ParsePrefix(a.String())
		if err != nil || p.Addr().IsLoopback() {
			continue
		}
		out = append(out, p.Addr().Unmap())
	}
	return out, nil
}

// pinned reports whether dir holds anything an earlier agent pinned.
func pinned(dir string) bool {
	entries, err := os.ReadDir(dir)
	return err == nil && len(entries) > 0
}

// unpinAndDetach detaches the link pinned at path and removes the pin.
func unpinAndDetach(path string) error {
	var errs []error
	l, err := link.LoadPinnedLink(path, nil)
	if err == nil {
		errs = append(errs, ignoreNotSupported(l.Detach()))
		l.Close()
	}
	errs = append(errs, os.Remove(path))
	return errors.Join(errs...)
}

// clearMap deletes every entry of m.
func clearMap(m *cebpf.Map) error {
	var keys [][]byte
	var k []byte
	var v []byte
	it := m.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, slices.Clone(k))
	}
	if err := it.Err(); err != nil {
		return err
	}
	for _, k := range keys {
		if err := m.Delete(k); err != nil && !errors.Is(err, cebpf.ErrKeyNotExist) {
			return err
		}
	}
	return nil
}
