package iptables

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/vishvananda/netns"
)

// Sysctl reads and writes kernel parameters by their /proc/sys path
// ("net/netfilter/nf_conntrack_tcp_be_liberal").
type Sysctl interface {
	Get(name string) (string, error)
	Set(name, value string) error
}

// sysctlTCPBeLiberal is per network namespace.
const sysctlTCPBeLiberal = "net/netfilter/nf_conntrack_tcp_be_liberal"

// ProcSysctl is the real Sysctl, through /proc/sys.
type ProcSysctl struct {
	root string
	run  nsRunner
}

var _ Sysctl = (*ProcSysctl)(nil)

// NewProcSysctl returns a Sysctl for the caller's network namespace.
func NewProcSysctl() *ProcSysctl { return &ProcSysctl{root: "/proc/sys", run: runHere} }

// NewProcSysctlAt returns a Sysctl for network namespace ns: /proc/sys/net
// shows the namespace of the thread that opens the file, so each access
// runs on a thread inside ns (see runInNetNS).
func NewProcSysctlAt(ns netns.NsHandle) *ProcSysctl {
	return &ProcSysctl{root: "/proc/sys", run: runInNetNS(ns)}
}

func (s *ProcSysctl) path(name string) string { return filepath.Join(s.root, filepath.Clean("/"+name)) }

func (s *ProcSysctl) Get(name string) (string, error) {
	var out string
	err := s.run(func() error {
		b, err := os.ReadFile(s.path(name))
		out = strings.TrimSpace(string(b))
		return err
	})
	if err != nil {
		return "", fmt.Errorf("read sysctl %s: %w", name, err)
	}
	return out, nil
}

func (s *ProcSysctl) Set(name, value string) error {
	err := s.run(func() error {
		// O_WRONLY without O_CREATE: a missing parameter must fail, not
		// create a file.
		f, err := os.OpenFile(s.path(name), os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		if _, err := f.WriteString(value + "\n"); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	})
	if err != nil {
		return fmt.Errorf("write sysctl %s=%s: %w", name, value, err)
	}
	return nil
}

// FakeSysctl is an in-memory Sysctl. Unknown parameters fail like a missing
// /proc/sys file; read-only ones fail to write like a read-only mount.
type FakeSysctl struct {
	mu       sync.Mutex
	values   map[string]string
	readOnly map[string]bool
}

var _ Sysctl = (*FakeSysctl)(nil)

// NewFakeSysctl returns a fake holding values.
func NewFakeSysctl(values map[string]string) *FakeSysctl {
	return &FakeSysctl{values: maps.Clone(values), readOnly: map[string]bool{}}
}

// SetReadOnly makes writes to name fail.
func (f *FakeSysctl) SetReadOnly(name string) {
	f.mu.Lock()
	f.readOnly[name] = true
	f.mu.Unlock()
}

func (f *FakeSysctl) Get(name string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.values[name]
	if !ok {
		return "", fmt.Errorf("read sysctl %s: %w", name, os.ErrNotExist)
	}
	return v, nil
}

func (f *FakeSysctl) Set(name, value string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.values[name]; !ok {
		return fmt.Errorf("write sysctl %s: %w", name, os.ErrNotExist)
	}
	if f.readOnly[name] {
		return fmt.Errorf("write sysctl %s: %w", name, os.ErrPermission)
	}
	f.values[name] = value
	return nil
}
