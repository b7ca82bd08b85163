// Package netnstest builds small real networks out of network namespaces and
// veth pairs for tests that send real packets, on the host and in the IPVS
// VM alike. It uses only netlink/netns (no `ip` command: the VM has none).
//
// Every helper registers its own t.Cleanup, and every network operation is
// bounded in time. Traffic stays on loopback and inside namespaces the test
// created.
package netnstest

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NS is a named network namespace (like `ip netns add`, under /run/netns).
// A nil *NS stands for the namespace the test process started in.
type NS struct {
	name   string
	handle netns.NsHandle
	nl     *netlink.Handle
}

// New creates a namespace named prefix-<pid>-<random> with lo up. t.Cleanup
// deletes it, which also destroys the links in it.
func New(t testing.TB, prefix string) *NS {
	t.Helper()
	ns, err := create(prefix)
	if err != nil {
		t.Fatalf("netnstest: %v", err)
	}
	t.Cleanup(func() {
		if err := ns.close(); err != nil {
			t.Errorf("netnstest: %v", err)
		}
	})
	lo, err := ns.nl.LinkByName("lo")
	if err == nil {
		err = ns.nl.LinkSetUp(lo)
	}
	if err != nil {
		t.Fatalf("netnstest: set lo up in %s: %v", ns.name, err)
	}
	return ns
}

func create(prefix string) (*NS, error) {
	rnd := make([]byte, 3)
	_, _ = rand.Read(rnd)
	name := fmt.Sprintf("%s-%d-%s", prefix, os.Getpid(), hex.EncodeToString(rnd))

	// NewNamed unshares the calling thread into the new namespace; pin the
	// goroutine and switch back so no other goroutine inherits that thread.
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	h, nerr := netns.NewNamed(name)
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: Go discards it when the goroutine ends,
		// rather than reusing a thread stuck in the wrong namespace.
		return nil, fmt.Errorf("restore netns after creating %s: %w", name, err)
	}
	runtime.UnlockOSThread()
	if nerr != nil {
		return nil, fmt.Errorf("create netns %s: %w", name, nerr)
	}
	// Only NETLINK_ROUTE: the default family list includes XFRM, which fails
	// with "protocol not supported" on kernels without xfrm_user.
	nl, err := netlink.NewHandleAt(h, unix.NETLINK_ROUTE)
	if err != nil {
		h.Close()
		_ = netns.DeleteNamed(name)
		return nil, fmt.Errorf("netlink handle in %s: %w", name, err)
	}
	return &NS{name: name, handle: h, nl: nl}, nil
}

// close drops our references and the bind mount; the kernel frees the
// namespace (and its links) once no socket or process uses it.
func (ns *NS) close() error {
	ns.nl.Close()
	ns.handle.Close()
	if err := netns.DeleteNamed(ns.name); err != nil {
		return fmt.Errorf("delete netns %s: %w", ns.name, err)
	}
	return nil
}

// Name is the namespace's name under /run/netns.
func (ns *NS) Name() string {
	if ns == nil {
		return "(root)"
	}
	return ns.name
}

// NsHandle is the namespace's file descriptor handle (valid until cleanup).
func (ns *NS) NsHandle() netns.NsHandle { return ns.handle }

// Handle is a netlink (route) handle operating in the namespace. It is owned
// by ns: do not close it. For a nil ns it is a fresh handle on the root
// namespace that the caller must Close.
func (ns *NS) Handle() *netlink.Handle {
	if ns == nil {
		h, err := rootHandle()
		if err != nil {
			panic(err) // opening a route socket in our own namespace does not fail
		}
		return h
	}
	return ns.nl
}

func rootHandle() (*netlink.Handle, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink handle: %w", err)
	}
	return h, nil
}

// Do runs fn on an OS thread switched into the namespace; sockets created by
// fn stay in that namespace after Do returns. Goroutines fn starts run in the
// root namespace. For a nil ns, fn runs as is.
func (ns *NS) Do(fn func() error) error {
	if ns == nil {
		return fn()
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(ns.handle); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %s: %w", ns.name, err)
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		// Thread stays locked and dies with the goroutine (see create).
		return errors.Join(ferr, fmt.Errorf("restore netns after %s: %w", ns.name, err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// Veth creates a veth pair nameA (in a) <-> nameB (in b), assigns the
// addresses (an invalid prefix means none) and sets both ends up. nil means
// the root namespace. t.Cleanup deletes the pair, synchronously, so names
// can be reused right away (namespace teardown is asynchronous).
func Veth(t testing.TB, a, b *NS, nameA, nameB string, addrA, addrB netip.Prefix) {
	t.Helper()
	ha, hb := a.Handle(), b.Handle()
	if a == nil {
		defer ha.Close()
	}
	if b == nil {
		defer hb.Close()
	}
	var peerNS any
	if b != nil {
		peerNS = netlink.NsFd(b.handle)
	} else {
		root, err := netns.GetFromPath("/proc/self/ns/net")
		if err != nil {
			t.Fatalf("netnstest: open root netns: %v", err)
		}
		defer root.Close()
		peerNS = netlink.NsFd(root)
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: nameA}, PeerName: nameB, PeerNamespace: peerNS}
	if err := ha.LinkAdd(veth); err != nil {
		t.Fatalf("netnstest: add veth %s@%s -> %s@%s: %v", nameA, a.Name(), nameB, b.Name(), err)
	}
	t.Cleanup(func() {
		h := a.Handle()
		if a == nil {
			defer h.Close()
		}
		// Gone already if its namespace went first: that is fine.
		if l, err := h.LinkByName(nameA); err == nil {
			if err := h.LinkDel(l); err != nil {
				t.Errorf("netnstest: delete veth %s: %v", nameA, err)
			}
		}
	})
	for _, end := range []struct {
		h    *netlink.Handle
		name string
		addr netip.Prefix
	}{{ha, nameA, addrA}, {hb, nameB, addrB}} {
		l, err := end.h.LinkByName(end.name)
		if err != nil {
			t.Fatalf("netnstest: find %s: %v", end.name, err)
		}
		if end.addr.IsValid() {
			if err := end.h.AddrAdd(l, nlAddr(end.addr)); err != nil {
				t.Fatalf("netnstest: add %s to %s: %v", end.addr, end.name, err)
			}
		}
		if err := end.h.LinkSetUp(l); err != nil {
			t.Fatalf("netnstest: set %s up: %v", end.name, err)
		}
	}
}

func nlAddr(p netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	if p.Addr().Is6() {
		// Skip duplicate address detection: the address would stay
		// "tentative" (unusable) for a second or more.
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}

// AddAddr adds an address to a link in ns (nil = root).
func AddAddr(t testing.TB, ns *NS, link string, addr netip.Prefix) {
	t.Helper()
	h := ns.Handle()
	if ns == nil {
		defer h.Close()
	}
	l, err := h.LinkByName(link)
	if err == nil {
		err = h.AddrAdd(l, nlAddr(addr))
	}
	if err != nil {
		t.Fatalf("netnstest: add %s to %s in %s: %v", addr, link, ns.Name(), err)
	}
}

// AddRoute adds a route to dst via gw in ns (nil = root); use
// netip.MustParsePrefix("0.0.0.0/0") for a default route.
func AddRoute(t testing.TB, ns *NS, dst netip.Prefix, gw netip.Addr) {
	t.Helper()
	h := ns.Handle()
	if ns == nil {
		defer h.Close()
	}
	r := &netlink.Route{
		Dst: &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), dst.Addr().BitLen())},
		Gw:  gw.AsSlice(),
	}
	if err := h.RouteAdd(r); err != nil {
		t.Fatalf("netnstest: route %s via %s in %s: %v", dst, gw, ns.Name(), err)
	}
}
