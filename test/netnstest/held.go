package netnstest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Held connections and how they end: the dataplane-independent part of
// the reset tests (a connection whose conntrack entry carries the reset
// mark is reset at its next packet; see nftables, iptables and
// test/ipvsvm). A test holds connections to a ConnServer (HoldConn), marks
// some conntrack entries its own way, and checks each marked one with
// ExpectReset.

// ConnServer is a TCP server in a namespace that answers each line with
// "ID REMOTE" (as the echo server) and keeps its connections, so a test
// can push data on one and see how it ended.
type ConnServer struct {
	ID string
	ln net.Listener

	mu    sync.Mutex
	conns map[string]*ServerConn // by the peer's address
	wg    sync.WaitGroup
}

// ServerConn is one connection a ConnServer accepted.
type ServerConn struct {
	// C is the server's end: write on it to push data to the client.
	C    net.Conn
	done chan struct{} // closed when reading ended
	err  error         // the read (or reply) error; set before done is closed
}

// StartConnServer listens on addr (TCP) inside ns (nil = root). The
// listener sends no keepalive probes: they would reset a server end the
// dataplane had not reset, given time. t.Cleanup stops it and closes its
// connections.
func StartConnServer(t testing.TB, ns *NS, addr, id string) *ConnServer {
	t.Helper()
	s := &ConnServer{ID: id, conns: map[string]*ServerConn{}}
	if err := ns.Do(func() error {
		var err error
		s.ln, err = (&net.ListenConfig{KeepAlive: -1}).Listen(context.Background(), "tcp", addr)
		return err
	}); err != nil {
		t.Fatalf("netnstest: listen %s in %s: %v", addr, ns.Name(), err)
	}
	s.wg.Add(1)
	go s.serve()
	t.Cleanup(func() {
		s.ln.Close()
		s.mu.Lock()
		for _, sc := range s.conns {
			sc.C.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *ConnServer) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		sc := &ServerConn{C: c, done: make(chan struct{})}
		s.mu.Lock()
		s.conns[c.RemoteAddr().String()] = sc
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer close(sc.done)
			defer c.Close()
			r := bufio.NewReader(c)
			for {
				if _, sc.err = r.ReadString('\n'); sc.err != nil {
					return
				}
				if _, sc.err = c.Write([]byte(s.ID + " " + c.RemoteAddr().String() + "\n")); sc.err != nil {
					return
				}
			}
		}()
	}
}

// Conn is the connection whose peer, as the server sees it, is peer; nil
// when there is none.
func (s *ConnServer) Conn(peer netip.AddrPort) *ServerConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns[peer.String()]
}

// Ended tells whether the server's end stopped reading, and how.
func (sc *ServerConn) Ended() (bool, error) {
	select {
	case <-sc.done:
		return true, sc.err
	default:
		return false, nil
	}
}

// WaitReset waits (until deadline) for the server's end to end and checks
// it ended with a reset.
func (sc *ServerConn) WaitReset(deadline time.Time) error {
	if ended, _ := sc.Ended(); !ended {
		select {
		case <-sc.done:
		case <-time.After(time.Until(deadline)):
			return errors.New("server end still open")
		}
	}
	if !errors.Is(sc.err, syscall.ECONNRESET) {
		return fmt.Errorf("server end ended with %v, want a reset", sc.err)
	}
	return nil
}

// ReadReset reads from c until deadline and checks it gets a reset (and
// no data).
func ReadReset(c net.Conn, deadline time.Time) error {
	if err := c.SetReadDeadline(deadline); err != nil {
		return err
	}
	buf := make([]byte, 256)
	for {
		n, err := c.Read(buf)
		switch {
		case n > 0:
			return fmt.Errorf("read %q, want a reset", buf[:n])
		case errors.Is(err, syscall.ECONNRESET):
			return nil
		case err != nil:
			return fmt.Errorf("read ended with %v, want a reset", err)
		}
	}
}

// NextPacket is how a test makes a held connection send its next packet.
type NextPacket int

const (
	// Unmarked: the connection is not marked, and sends nothing special.
	Unmarked NextPacket = iota
	// ClientSends: the client sends a request (payload from the client).
	ClientSends
	// ServerSends: the server pushes data (payload from the backend).
	ServerSends
	// ClientKeepsAlive: the client only sends keepalive probes (no
	// payload), every second after 1 s idle.
	ClientKeepsAlive
)

func (n NextPacket) String() string {
	return [...]string{"unmarked", "client sends", "server sends", "client keepalive"}[n]
}

// Held is a long-lived client connection to a ConnServer.
type Held struct {
	// Name names the connection in messages: its path, the client's
	// address, its NextPacket.
	Name string
	Next NextPacket
	// C is the client's end; Srv the server's (set by the caller, who
	// knows which server: see ConnServer.Conn).
	C   net.Conn
	Srv *ServerConn
	// ID and Seen are from the first reply: the server that answered and
	// the source it saw.
	ID   string
	Seen netip.AddrPort
}

// HoldConn dials addr (TCP) from ns with keepalive probes only for
// ClientKeepsAlive, exchanges a first line and clears the deadlines. name
// prefixes Held.Name. t.Cleanup closes the connection.
func HoldConn(t testing.TB, ns *NS, addr, name string, next NextPacket, timeout time.Duration) (*Held, error) {
	t.Helper()
	c, err := Dial(ns, "tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	h := &Held{Name: name + " " + c.LocalAddr().String() + " (" + next.String() + ")", Next: next, C: c}
	// Keepalive probes only where the test wants them (a dialer enables
	// them after 15 s idle).
	ka := net.KeepAliveConfig{Enable: false}
	if next == ClientKeepsAlive {
		ka = net.KeepAliveConfig{Enable: true, Idle: time.Second, Interval: time.Second, Count: 5}
	}
	if err := c.(*net.TCPConn).SetKeepAliveConfig(ka); err != nil {
		return nil, fmt.Errorf("%s: %w", h.Name, err)
	}
	reply, err := Exchange(c, "hello", timeout)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", h.Name, err)
	}
	if err := c.SetDeadline(time.Time{}); err != nil { // Exchange's
		return nil, fmt.Errorf("%s: %w", h.Name, err)
	}
	id, remote, err := ReplyID(reply)
	if err == nil {
		h.Seen, err = netip.ParseAddrPort(remote)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: reply %q: %w", h.Name, reply, err)
	}
	h.ID = id
	return h, nil
}

// Resets tells ExpectReset what the reset rules do at a marked
// connection's next packet.
type Resets int

const (
	// SenderThenOther: the end that sent is reset; the other end when it
	// next sends (iptables' REJECT).
	SenderThenOther Resets = iota
	// BothEnds: a packet with payload resets both ends at once; a bare
	// keepalive probe resets the client, and the server when it next
	// sends (the client's stack answers it).
	BothEnds
)

// ExpectReset makes the marked connection h send its next packet as
// h.Next says and checks that both ends are reset as resets says, the
// client's and the first server wait bounded by deadline (a server wait
// after a late write gets at least 3 s). It returns every problem found,
// nil when both ends were reset.
func (h *Held) ExpectReset(deadline time.Time, resets Resets) error {
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	clientWrite := func() bool {
		if _, err := h.C.Write([]byte("next\n")); err != nil {
			// The reset may already be there: fine, it was a reset.
			if !errors.Is(err, syscall.ECONNRESET) {
				fail("client write: %v", err)
			}
			return false
		}
		return true
	}
	serverWrite := func(when string) {
		if _, err := h.Srv.C.Write([]byte("pushed\n")); err != nil {
			fail("server write%s: %v", when, err)
		}
	}
	late := func() time.Time {
		if min := time.Now().Add(3 * time.Second); deadline.Before(min) {
			return min
		}
		return deadline
	}
	switch h.Next {
	case Unmarked:
		return fmt.Errorf("ExpectReset on an unmarked connection")
	case ClientSends:
		if _, err := h.C.Write([]byte("next\n")); err != nil {
			return fmt.Errorf("client write: %w", err)
		}
		if err := ReadReset(h.C, deadline); err != nil {
			fail("the client, which sent: %v", err)
		}
		if resets == SenderThenOther {
			serverWrite("")
		}
		if err := h.Srv.WaitReset(late()); err != nil {
			fail("the server end, %s: %v", map[Resets]string{SenderThenOther: "when it sent", BothEnds: "at the client's packet"}[resets], err)
		}
	case ServerSends:
		serverWrite("")
		if err := h.Srv.WaitReset(deadline); err != nil {
			fail("the server end, which sent: %v", err)
		}
		switch resets {
		case SenderThenOther:
			if clientWrite() {
				if err := ReadReset(h.C, late()); err != nil {
					fail("the client, when it sent: %v", err)
				}
			}
		case BothEnds:
			if err := ReadReset(h.C, late()); err != nil {
				fail("the client, at the server's packet: %v", err)
			}
		}
	case ClientKeepsAlive:
		// No payload: the client's probe (after 1 s idle) is the next
		// packet; the probe carries nothing for the server, which is reset
		// when it next sends.
		if err := ReadReset(h.C, deadline); err != nil {
			fail("the client, at its keepalive probe: %v", err)
		}
		serverWrite(" after the client's reset")
		if err := h.Srv.WaitReset(late()); err != nil {
			fail("the server end, when it sent: %v", err)
		}
	}
	return errors.Join(errs...)
}

// ExpectAlive checks that h still works: n more exchanges, each answered
// by the server of the first reply seeing the same source, and the
// server's end still open. It returns the first problem, nil when none.
func (h *Held) ExpectAlive(n int, timeout time.Duration) error {
	for i := range n {
		reply, err := Exchange(h.C, "again", timeout)
		if err != nil {
			return fmt.Errorf("exchange %d: %w", i, err)
		}
		if id, remote, err := ReplyID(reply); err != nil || id != h.ID || remote != h.Seen.String() {
			return fmt.Errorf("exchange %d answered %q, want %s seeing %s", i, reply, h.ID, h.Seen)
		}
	}
	if h.Srv != nil {
		if ended, err := h.Srv.Ended(); ended {
			return fmt.Errorf("the server's end ended: %v", err)
		}
	}
	return nil
}
