package netnstest

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// EchoServer answers every TCP line or UDP datagram with "ID REMOTEADDR\n",
// so a test sees which backend answered and which source address it saw
// (SNAT or not). TCP connections stay open until the client closes them.
type EchoServer struct {
	ID   string
	Addr string // actual listen address, e.g. "10.1.0.2:8080"

	ln    net.Listener
	pc    net.PacketConn
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// StartEchoServer listens on addr (proto "tcp" or "udp") inside ns (nil =
// root); the socket is created in ns, serving runs on any goroutine. The
// server stops in t.Cleanup.
func StartEchoServer(t testing.TB, ns *NS, proto, addr, id string) *EchoServer {
	t.Helper()
	s := &EchoServer{ID: id, conns: map[net.Conn]struct{}{}}
	err := ns.Do(func() error {
		var err error
		switch proto {
		case "tcp", "tcp4", "tcp6":
			s.ln, err = net.Listen(proto, addr)
		case "udp", "udp4", "udp6":
			s.pc, err = net.ListenPacket(proto, addr)
		default:
			err = fmt.Errorf("unsupported protocol %q", proto)
		}
		return err
	})
	if err != nil {
		t.Fatalf("netnstest: echo server %s on %s %s in %s: %v", id, proto, addr, ns.Name(), err)
	}
	if s.ln != nil {
		s.Addr = s.ln.Addr().String()
		s.wg.Add(1)
		go s.serveTCP()
	} else {
		s.Addr = s.pc.LocalAddr().String()
		s.wg.Add(1)
		go s.serveUDP()
	}
	t.Cleanup(s.stop)
	return s
}

func (s *EchoServer) serveTCP() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return // closed by stop
		}
		s.mu.Lock()
		if s.conns == nil { // stopping
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				c.Close()
			}()
			reply := []byte(s.ID + " " + c.RemoteAddr().String() + "\n")
			sc := bufio.NewScanner(c)
			for sc.Scan() {
				if _, err := c.Write(reply); err != nil {
					return
				}
			}
		}()
	}
}

func (s *EchoServer) serveUDP() {
	defer s.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		_, from, err := s.pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		_, _ = s.pc.WriteTo([]byte(s.ID+" "+from.String()+"\n"), from)
	}
}

// stop closes the listener and every open connection, then waits (bounded)
// for the serving goroutines. Closing the sockets also drops their
// references to the namespace so it can be freed.
func (s *EchoServer) stop() {
	if s.ln != nil {
		s.ln.Close()
	}
	if s.pc != nil {
		s.pc.Close()
	}
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.conns = nil
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
}

// Dial connects from inside ns (nil = root): the socket is created there.
func Dial(ns *NS, proto, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() error {
		var err error
		c, err = (&net.Dialer{Timeout: timeout}).Dial(proto, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s %s from %s: %w", proto, addr, ns.Name(), err)
	}
	return c, nil
}

// Request dials from ns, sends msg as one line (TCP) or datagram (UDP) and
// returns the first reply line without its newline. The whole exchange is
// bounded by timeout.
func Request(ns *NS, proto, addr, msg string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	c, err := Dial(ns, proto, addr, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	reply, err := Exchange(c, msg, time.Until(deadline))
	if err != nil {
		return "", fmt.Errorf("request to %s %s from %s: %w", proto, addr, ns.Name(), err)
	}
	return reply, nil
}

// Exchange sends msg on an open connection and reads one reply line; use it
// to send several requests over one long-lived TCP connection.
func Exchange(c net.Conn, msg string, timeout time.Duration) (string, error) {
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return "", fmt.Errorf("set deadline: %w", err)
	}
	if _, err := c.Write([]byte(msg + "\n")); err != nil {
		return "", fmt.Errorf("write: %w", err)
	}
	buf := make([]byte, 4096)
	var got strings.Builder
	for {
		n, err := c.Read(buf)
		got.Write(buf[:n])
		if i := strings.IndexByte(got.String(), '\n'); i >= 0 {
			return got.String()[:i], nil
		}
		if _, isUDP := c.(*net.UDPConn); isUDP && n > 0 {
			return got.String(), nil
		}
		if err != nil {
			return "", fmt.Errorf("read: %w", err)
		}
	}
}

// ReplyID splits an echo reply "ID REMOTEADDR" into its parts.
func ReplyID(reply string) (id, remote string, err error) {
	id, remote, ok := strings.Cut(reply, " ")
	if !ok {
		return "", "", fmt.Errorf("malformed echo reply %q", reply)
	}
	return id, remote, nil
}
