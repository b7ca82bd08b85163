package netnstest

import (
	"errors"
	"net"
	"syscall"
	"testing"
	"time"
)

// Connections held open against the echo servers, for the tests of the
// connection limits (switchyard.io/max-connections-per-backend) in
// package ebpf and test/ipvsvm.

// HoldTCP dials addr (TCP) from ns (nil = root), sends a line and reads
// the echo reply: it returns the connection and the ID of the backend
// that answered. The connection stays open until the caller closes it or
// the test ends. A dial that fails is returned (a refusal, say); a
// connection accepted without a reply fails the test.
func HoldTCP(t testing.TB, ns *NS, addr string, timeout time.Duration) (*net.TCPConn, string, error) {
	t.Helper()
	c, err := Dial(ns, "tcp", addr, timeout)
	if err != nil {
		return nil, "", err
	}
	t.Cleanup(func() { c.Close() })
	reply, err := Exchange(c, "hello", timeout)
	if err != nil {
		t.Fatalf("connection to %s accepted but no reply: %v", addr, err)
	}
	id, _, err := ReplyID(reply)
	if err != nil {
		t.Fatal(err)
	}
	return c.(*net.TCPConn), id, nil
}

// HoldTCPFrom holds n connections (HoldTCP) that backend want must
// answer, and returns them.
func HoldTCPFrom(t testing.TB, ns *NS, addr string, n int, want string, timeout time.Duration) []*net.TCPConn {
	t.Helper()
	var held []*net.TCPConn
	for i := range n {
		c, id, err := HoldTCP(t, ns, addr, timeout)
		if err != nil || id != want {
			t.Fatalf("%s connection %d: %s %v, want %s", addr, i, id, err, want)
		}
		held = append(held, c)
	}
	return held
}

// ExpectStillAnswered checks that backend want still answers on a held
// connection.
func ExpectStillAnswered(t testing.TB, c net.Conn, want, when string, timeout time.Duration) {
	t.Helper()
	reply, err := Exchange(c, "again", timeout)
	if err != nil {
		t.Fatalf("held connection %s: %v", when, err)
	}
	if id, _, _ := ReplyID(reply); id != want {
		t.Fatalf("held connection %s answered %q, want %s", when, reply, want)
	}
}

// ExpectRefused checks that a new TCP connection from ns to addr fails
// with ECONNREFUSED: not with a timeout and not by connecting.
func ExpectRefused(t testing.TB, ns *NS, addr string, timeout time.Duration) {
	t.Helper()
	c, id, err := HoldTCP(t, ns, addr, timeout)
	if err == nil {
		c.Close()
		t.Fatalf("%s: connected to %s, want connection refused", addr, id)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("%s: %v, want connection refused", addr, err)
	}
}
