package shed

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetnsIndexConfig configures a NetnsIndex; zero fields take defaults.
type NetnsIndexConfig struct {
	// ProcDir lists processes whose ns/net links are scanned ("/proc").
	ProcDir string
	// NamedDirs hold bind-mounted namespaces (["/run/netns"], where
	// `ip netns`, containerd and CRI-O pin pod namespaces).
	NamedDirs []string
	// MaxHandles bounds the namespace file descriptors kept open (1024).
	// Namespaces beyond it are remembered by path and reopened on use.
	MaxHandles int
}

const defaultMaxHandles = 1024

// NetnsIndex maps network namespace cookies (SO_NETNS_COOKIE, Linux 5.14+,
// the value bpf_get_netns_cookie returns) to namespace handles. It finds
// namespaces by scanning /proc/*/ns/net and the named directories,
// deduplicated by nsfs inode, and rescans when asked for a cookie it does
// not know or whose namespace no longer shows up where it was found.
//
// A held handle keeps its namespace alive, so the index never holds one
// past the scan that no longer sees the namespace: a deleted pod's
// namespace is freed, and asking for it is ErrNetnsNotFound. Threads that
// entered another namespace on their own (setns without a process or bind
// mount behind it) are not seen. Safe for concurrent use.
type NetnsIndex struct {
	cfg NetnsIndexConfig

	mu       sync.Mutex
	byCookie map[uint64]*nsEntry
	byKey    map[nsKey]uint64
	held     int    // entries with an open handle
	tick     uint64 // LRU clock
	scans    int
}

// nsKey identifies a namespace as the kernel's nsfs does.
type nsKey struct{ dev, ino uint64 }

type nsEntry struct {
	key  nsKey
	path string         // where the last scan found it
	h    netns.NsHandle // -1 when not held
	used uint64
}

// NewNetnsIndex returns an empty index; the first lookup scans.
func NewNetnsIndex(cfg NetnsIndexConfig) *NetnsIndex {
	if cfg.ProcDir == "" {
		cfg.ProcDir = "/proc"
	}
	if cfg.NamedDirs == nil {
		cfg.NamedDirs = []string{"/run/netns"}
	}
	if cfg.MaxHandles <= 0 {
		cfg.MaxHandles = defaultMaxHandles
	}
	return &NetnsIndex{cfg: cfg, byCookie: map[uint64]*nsEntry{}, byKey: map[nsKey]uint64{}}
}

// Open returns a new handle on the namespace with this cookie, which the
// caller must Close. It rescans once when the cookie is unknown or stale.
func (x *NetnsIndex) Open(cookie uint64) (netns.NsHandle, error) {
	hs, errs := x.OpenAll([]uint64{cookie})
	if err := errs[cookie]; err != nil {
		return netns.None(), err
	}
	return hs[cookie], nil
}

// OpenAll is Open for several cookies with at most one rescan. Every
// cookie is in exactly one of the two maps; the caller closes the handles.
func (x *NetnsIndex) OpenAll(cookies []uint64) (map[uint64]netns.NsHandle, map[uint64]error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	hs := map[uint64]netns.NsHandle{}
	errs := map[uint64]error{}
	var miss []uint64
	for _, c := range cookies {
		if _, done := hs[c]; done {
			continue
		}
		h, err := x.openLocked(c)
		if err != nil {
			miss = append(miss, c)
			continue
		}
		hs[c] = h
	}
	if len(miss) == 0 {
		return hs, errs
	}
	scanErr := x.scanLocked()
	for _, c := range miss {
		h, err := x.openLocked(c)
		if err != nil {
			if scanErr != nil {
				err = errors.Join(err, scanErr)
			}
			errs[c] = fmt.Errorf("netns cookie %d: %w", c, err)
			continue
		}
		hs[c] = h
	}
	return hs, errs
}

// Refresh rescans now: new namespaces are indexed and handles on
// namespaces no longer seen are closed. Owners call it periodically so
// deleted pods' namespaces are not kept alive until the next miss.
func (x *NetnsIndex) Refresh() error {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.scanLocked()
}

// Len is the number of namespaces indexed.
func (x *NetnsIndex) Len() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return len(x.byCookie)
}

// Close closes every held handle and forgets everything.
func (x *NetnsIndex) Close() error {
	x.mu.Lock()
	defer x.mu.Unlock()
	var errs []error
	for c, e := range x.byCookie {
		errs = append(errs, x.dropLocked(c, e))
	}
	return errors.Join(errs...)
}

// openLocked returns a dup of the cookie's handle, after checking that its
// path still names the same namespace (our handle alone would keep a
// deleted namespace alive and make it look present).
func (x *NetnsIndex) openLocked(cookie uint64) (netns.NsHandle, error) {
	e := x.byCookie[cookie]
	if e == nil {
		return netns.None(), ErrNetnsNotFound
	}
	if k, err := statKey(e.path); err != nil || k != e.key {
		return netns.None(), ErrNetnsNotFound
	}
	if e.h < 0 {
		h, err := openKey(e.path, e.key)
		if err != nil {
			return netns.None(), err
		}
		e.h = h
		x.held++
		x.evictLocked(e)
	}
	x.tick++
	e.used = x.tick
	fd, err := unix.FcntlInt(uintptr(e.h), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return netns.None(), fmt.Errorf("dup netns handle: %w", err)
	}
	return netns.NsHandle(fd), nil
}

// evictLocked closes least recently used handles (never keep's) until the
// bound holds. Their entries stay, remembered by path.
func (x *NetnsIndex) evictLocked(keep *nsEntry) {
	for x.held > x.cfg.MaxHandles {
		var lru *nsEntry
		for _, e := range x.byCookie {
			if e.h >= 0 && e != keep && (lru == nil || e.used < lru.used) {
				lru = e
			}
		}
		if lru == nil {
			return
		}
		_ = lru.h.Close()
		lru.h = -1
		x.held--
	}
}

func (x *NetnsIndex) dropLocked(cookie uint64, e *nsEntry) error {
	var err error
	if e.h >= 0 {
		err = e.h.Close()
		x.held--
	}
	delete(x.byCookie, cookie)
	delete(x.byKey, e.key)
	return err
}

// scanLocked lists every namespace reachable from the named directories
// and /proc, drops entries not seen and indexes new ones (one setns each
// to learn the cookie; the handle is kept while under the bound).
func (x *NetnsIndex) scanLocked() error {
	x.scans++
	seen := map[nsKey]string{}
	add := func(path string) {
		k, err := statKey(path)
		if err != nil {
			return // gone meanwhile, not a namespace, or not ours to see
		}
		if _, ok := seen[k]; !ok {
			seen[k] = path
		}
	}
	// Named first: a bind mount outlives the processes that happen to be
	// in the namespace now, so its path stays valid longer.
	for _, dir := range x.cfg.NamedDirs {
		ents, err := os.ReadDir(dir)
		if err != nil {
			continue // no namespaces pinned there (or no such directory)
		}
		for _, d := range ents {
			add(filepath.Join(dir, d.Name()))
		}
	}
	procs, err := os.ReadDir(x.cfg.ProcDir)
	if err != nil {
		return fmt.Errorf("scan %s: %w", x.cfg.ProcDir, err)
	}
	for _, d := range procs {
		if n := d.Name(); n[0] >= '0' && n[0] <= '9' {
			add(filepath.Join(x.cfg.ProcDir, n, "ns", "net"))
		}
	}

	var errs []error
	for c, e := range x.byCookie {
		if p, ok := seen[e.key]; ok {
			e.path = p
		} else {
			errs = append(errs, x.dropLocked(c, e))
		}
	}
	for k, path := range seen {
		if _, ok := x.byKey[k]; ok {
			continue
		}
		h, err := openKey(path, k)
		if err != nil {
			continue // gone meanwhile
		}
		cookie, err := NetnsCookie(h)
		if err != nil {
			_ = h.Close()
			errs = append(errs, fmt.Errorf("cookie of netns %s: %w", path, err))
			continue
		}
		if _, ok := x.byCookie[cookie]; ok {
			// One namespace, one inode, one cookie (a 64-bit counter,
			// never reused): unreachable, but never leak the handle.
			_ = h.Close()
			continue
		}
		e := &nsEntry{key: k, path: path, h: -1}
		if x.held < x.cfg.MaxHandles {
			e.h = h
			x.held++
		} else {
			_ = h.Close()
		}
		x.byCookie[cookie] = e
		x.byKey[k] = cookie
	}
	return errors.Join(errs...)
}

func statKey(path string) (nsKey, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nsKey{}, err
	}
	return nsKey{dev: st.Dev, ino: st.Ino}, nil
}

// openKey opens path and checks it is still the namespace k (a pid or a
// name may have been reused since the scan).
func openKey(path string, k nsKey) (netns.NsHandle, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return netns.None(), fmt.Errorf("open %s: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || (nsKey{st.Dev, st.Ino}) != k {
		_ = unix.Close(fd)
		return netns.None(), fmt.Errorf("open %s: %w", path, ErrNetnsNotFound)
	}
	return netns.NsHandle(fd), nil
}

// NetnsCookie returns the cookie of the namespace h refers to.
func NetnsCookie(h netns.NsHandle) (uint64, error) {
	var fd int
	err := inNetns(h, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("socket in netns: %w", err)
	}
	defer unix.Close(fd)
	return SocketNetnsCookie(fd)
}

// SocketNetnsCookie returns the cookie of the namespace socket fd was
// created in (SO_NETNS_COOKIE, Linux 5.14+).
func SocketNetnsCookie(fd int) (uint64, error) {
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("getsockopt SO_NETNS_COOKIE: %w", err)
	}
	return c, nil
}

// inNetns runs fn on a new goroutine locked to its OS thread, switched
// into h. Sockets fn creates stay in h; everything else about them works
// from any thread afterwards. If switching back fails, the goroutine exits
// with its thread still locked, and Go discards the thread rather than
// reuse one stuck in the wrong namespace.
func inNetns(h netns.NsHandle, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(h); err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("enter netns: %w", err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			done <- errors.Join(ferr, fmt.Errorf("restore netns: %w", err))
			return
		}
		runtime.UnlockOSThread()
		done <- ferr
	}()
	return <-done
}
