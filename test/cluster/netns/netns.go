// Package netns gives a test a named network namespace standing for a node:
// lo up, programs started inside it, and a TCP forwarder that joins it to
// the control plane on the test's own loopback without any link or address
// in the machine's root namespace. Needs root.
//
// It repeats a little of the main module's test/netnstest on purpose: this
// module must not require the main module, whose newer dependency versions
// would change what kube-apiserver and kube-proxy are built from.
package netns

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NS is a named network namespace (under /run/netns, like `ip netns add`).
type NS struct {
	Name   string
	handle vnetns.NsHandle
}

// New creates prefix-<pid>-<random> with lo up; t.Cleanup deletes it.
func New(t testing.TB, prefix string) *NS {
	t.Helper()
	rnd := make([]byte, 3)
	_, _ = rand.Read(rnd)
	name := fmt.Sprintf("%s-%d-%s", prefix, os.Getpid(), hex.EncodeToString(rnd))

	// NewNamed moves the calling thread into the new namespace: pin the
	// goroutine and switch back before unpinning.
	runtime.LockOSThread()
	orig, err := vnetns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("netns: current: %v", err)
	}
	h, nerr := vnetns.NewNamed(name)
	serr := vnetns.Set(orig)
	orig.Close()
	if serr != nil {
		// Leave the thread locked: Go drops it when the goroutine ends
		// instead of reusing a thread in the wrong namespace.
		t.Fatalf("netns: restore after creating %s: %v", name, serr)
	}
	runtime.UnlockOSThread()
	if nerr != nil {
		t.Fatalf("netns: create %s: %v", name, nerr)
	}
	ns := &NS{Name: name, handle: h}
	t.Cleanup(func() {
		h.Close()
		if err := vnetns.DeleteNamed(name); err != nil {
			t.Errorf("netns: delete %s: %v", name, err)
		}
	})

	nl, err := netlink.NewHandleAt(h, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatalf("netns: netlink in %s: %v", name, err)
	}
	defer nl.Close()
	lo, err := nl.LinkByName("lo")
	if err == nil {
		err = nl.LinkSetUp(lo)
	}
	if err != nil {
		t.Fatalf("netns: lo up in %s: %v", name, err)
	}
	return ns
}

// Do runs f on a thread inside the namespace. Sockets f opens stay in the
// namespace, and processes it starts are born in it.
func (ns *NS) Do(f func() error) error {
	runtime.LockOSThread()
	orig, err := vnetns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netns: current: %w", err)
	}
	defer orig.Close()
	if err := vnetns.Set(ns.handle); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netns: enter %s: %w", ns.Name, err)
	}
	ferr := f()
	if err := vnetns.Set(orig); err != nil {
		return fmt.Errorf("netns: leave %s: %w (thread stays locked)", ns.Name, err)
	}
	runtime.UnlockOSThread()
	return ferr
}

// Start starts cmd inside the namespace (fork inherits the thread's
// namespace).
func (ns *NS) Start(cmd *exec.Cmd) error {
	return ns.Do(cmd.Start)
}

// Output runs a short command inside the namespace and returns its
// combined output.
func (ns *NS) Output(name string, args ...string) ([]byte, error) {
	var out []byte
	err := ns.Do(func() (err error) {
		out, err = exec.Command(name, args...).CombinedOutput()
		return err
	})
	return out, err
}

// Dial connects from inside the namespace.
func (ns *NS) Dial(network, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() (err error) {
		c, err = net.DialTimeout(network, addr, timeout)
		return err
	})
	return c, err
}

// Forward listens on listen (e.g. "127.0.0.1:6443") inside the namespace
// and relays each connection to target, dialed from the test's own
// namespace. t.Cleanup closes the listener and every relayed connection.
// It returns the address it listens on.
func (ns *NS) Forward(t testing.TB, listen, target string) string {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() (err error) {
		ln, err = net.Listen("tcp", listen)
		return err
	}); err != nil {
		t.Fatalf("netns: forward %s in %s: %v", listen, ns.Name, err)
	}
	f := &forwarder{ln: ln, target: target, conns: map[net.Conn]bool{}}
	f.wg.Add(1)
	go f.serve()
	t.Cleanup(f.stop)
	return ln.Addr().String()
}

type forwarder struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]bool
	closed bool
}

func (f *forwarder) serve() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return // closed by stop
		}
		f.wg.Add(1)
		go f.relay(c)
	}
}

// track records c for stop; false (c closed) when stopping already.
func (f *forwarder) track(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		c.Close()
		return false
	}
	f.conns[c] = true
	return true
}

func (f *forwarder) relay(in net.Conn) {
	defer f.wg.Done()
	if !f.track(in) {
		return
	}
	out, err := net.DialTimeout("tcp", f.target, 5*time.Second)
	if err != nil {
		in.Close()
		return
	}
	if !f.track(out) {
		in.Close()
		return
	}
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite() // let the other direction finish
		}
		done <- struct{}{}
	}
	go pipe(out, in)
	go pipe(in, out)
	<-done
	<-done
	in.Close()
	out.Close()
	f.mu.Lock()
	delete(f.conns, in)
	delete(f.conns, out)
	f.mu.Unlock()
}

func (f *forwarder) stop() {
	_ = f.ln.Close()
	f.mu.Lock()
	f.closed = true
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}
