// Package sysctl reads and writes kernel parameters through /proc/sys, in
// the caller's network namespace or another one, and has an in-memory fake
// for tests. It holds only the mechanism: which parameters to set, and why,
// belongs to the dataplane packages (ipvs, iptables, nftables).
package sysctl

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netns"
)

// Interface reads and writes kernel parameters by their /proc/sys path
// ("net/netfilter/nf_conntrack_tcp_be_liberal"). A missing parameter (say,
// its module is not loaded) wraps fs.ErrNotExist.
type Interface interface {
	Get(name string) (string, error)
	Set(name, value string) error
}

// DefaultRoot is where the kernel shows its parameters.
const DefaultRoot = "/proc/sys"

// Proc is the real Interface, through /proc/sys. The zero value works on
// /proc/sys in the caller's network namespace.
//
// /proc/sys/net shows the network namespace of the thread that opens the
// file, whatever namespace other clients (netlink handles, links) target.
type Proc struct {
	root string         // DefaultRoot when empty
	ns   netns.NsHandle // used when inNS
	inNS bool
}

var _ Interface = (*Proc)(nil)

// New returns a Proc for the caller's network namespace.
func New() *Proc { return &Proc{} }

// NewAt returns a Proc for network namespace ns: each access runs on a
// thread switched into ns (see Proc.run).
func NewAt(ns netns.NsHandle) *Proc { return &Proc{ns: ns, inNS: true} }

// NewRoot returns a Proc on directory root instead of /proc/sys, in the
// caller's namespace; for tests.
func NewRoot(root string) *Proc { return &Proc{root: root} }

func (p *Proc) path(name string) string {
	root := p.root
	if root == "" {
		root = DefaultRoot
	}
	// Cleaning "/"+name keeps the result under root.
	return filepath.Join(root, filepath.Clean("/"+name))
}

// Get returns the parameter's value without surrounding white space.
func (p *Proc) Get(name string) (string, error) {
	var out string
	err := p.run(func() error {
		b, err := os.ReadFile(p.path(name))
		out = strings.TrimSpace(string(b))
		return err
	})
	if err != nil {
		return "", fmt.Errorf("read sysctl %s: %w", name, err)
	}
	return out, nil
}

// Set writes value (plus a newline) to the parameter.
func (p *Proc) Set(name, value string) error {
	err := p.run(func() error {
		// No O_CREATE: a missing parameter means a missing module, not a
		// file to make.
		f, err := os.OpenFile(p.path(name), os.O_WRONLY|os.O_TRUNC, 0)
		if err != nil {
			return err
		}
		_, werr := f.WriteString(value + "\n")
		return errors.Join(werr, f.Close())
	})
	if err != nil {
		return fmt.Errorf("write sysctl %s=%s: %w", name, value, err)
	}
	return nil
}

// run runs fn in p's namespace. In another namespace it uses a fresh,
// locked OS thread that exits without unlocking, so the runtime discards
// the thread instead of reusing it in the wrong namespace.
func (p *Proc) run(fn func() error) error {
	if !p.inNS {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(p.ns); err != nil {
			errc <- fmt.Errorf("enter netns: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}
