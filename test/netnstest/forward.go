package netnstest

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// Forward listens on listen (TCP, e.g. "127.0.0.1:6443") inside ns and
// relays every connection to target, dialed from this process's own
// namespace. It joins a namespace to a loopback service of the test's
// (a kube-apiserver on 127.0.0.1) without a link or an address in the
// machine's root namespace. t.Cleanup stops it and closes every relayed
// connection. It returns the address it listens on.
func Forward(t testing.TB, ns *NS, listen, target string) string {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() (err error) {
		ln, err = net.Listen("tcp", listen)
		return err
	}); err != nil {
		t.Fatalf("forward %s in %s: %v", listen, ns.Name(), err)
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

// track records c for stop; false when stopping already (c is closed).
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
		// Half-close so the other direction can finish its reply.
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
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
