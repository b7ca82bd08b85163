package nftables

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netns"
)

// Sysctl reads and writes kernel parameters by their /proc/sys path
// ("net/netfilter/nf_conntrack_tcp_be_liberal").
type Sysctl interface {
	Get(name string) (string, error)
	Set(name, value string) error
}

// sysctlTCPBeLiberal is per network namespace; it exists once conntrack is
// loaded (built in on these kernels).
const sysctlTCPBeLiberal = "net/netfilter/nf_conntrack_tcp_be_liberal"

// ProcSysctl is the real Sysctl, through /proc/sys.
type ProcSysctl struct {
	ns netns.NsHandle // -1: the caller's namespace
}

var _ Sysctl = (*ProcSysctl)(nil)

// NewProcSysctl returns a Sysctl for the caller's network namespace.
func NewProcSysctl() *ProcSysctl { return &ProcSysctl{ns: -1} }

// NewProcSysctlAt returns a Sysctl for network namespace ns: /proc/sys/net
// shows the namespace of the thread that opens the file, so each access
// runs on a thread switched into ns.
func NewProcSysctlAt(ns netns.NsHandle) *ProcSysctl { return &ProcSysctl{ns: ns} }

func (s *ProcSysctl) path(name string) string {
	return filepath.Join("/proc/sys", filepath.Clean("/"+name))
}

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
		// No O_CREATE: a missing parameter must fail, not create a file.
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

// run runs fn in the namespace. In another namespace it uses a fresh,
// locked OS thread that exits without unlocking, so the runtime discards
// the thread instead of reusing it in the wrong namespace.
func (s *ProcSysctl) run(fn func() error) error {
	if s.ns == -1 {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(s.ns); err != nil {
			errc <- fmt.Errorf("enter netns: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}
