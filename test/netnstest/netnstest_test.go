package netnstest

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestEchoAcrossVeth proves the helpers on the host kernel: two namespaces
// joined by a veth, TCP and UDP echo with the reply payload checked, and no
// namespace left behind afterwards.
func TestEchoAcrossVeth(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	const prefix = "nnt"
	var names []string
	t.Run("traffic", func(t *testing.T) {
		srv, cli := New(t, prefix), New(t, prefix)
		names = append(names, srv.Name(), cli.Name())
		srvAddr := netip.MustParsePrefix("192.0.2.1/24")
		cliAddr := netip.MustParsePrefix("192.0.2.2/24")
		Veth(t, srv, cli, "eth0", "eth0", srvAddr, cliAddr)

		tcp := StartEchoServer(t, srv, "tcp", "192.0.2.1:0", "tcp-backend")
		udp := StartEchoServer(t, srv, "udp", "192.0.2.1:0", "udp-backend")

		for _, tc := range []struct{ proto, addr, id string }{
			{"tcp", tcp.Addr, "tcp-backend"}, {"udp", udp.Addr, "udp-backend"},
		} {
			reply, err := Request(cli, tc.proto, tc.addr, "hello", 3*time.Second)
			if err != nil {
				t.Fatalf("%s: %v", tc.proto, err)
			}
			id, remote, err := ReplyID(reply)
			if err != nil {
				t.Fatal(err)
			}
			if id != tc.id || !strings.HasPrefix(remote, "192.0.2.2:") {
				t.Fatalf("%s reply %q: want id %s from 192.0.2.2", tc.proto, reply, tc.id)
			}
		}

		// A long-lived TCP connection answers each line.
		c, err := Dial(cli, "tcp", tcp.Addr, 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for i := 0; i < 3; i++ {
			if reply, err := Exchange(c, "again", 3*time.Second); err != nil || !strings.HasPrefix(reply, "tcp-backend ") {
				t.Fatalf("exchange %d: %q, %v", i, reply, err)
			}
		}
	})
	for _, n := range names {
		if _, err := os.Stat("/run/netns/" + n); !os.IsNotExist(err) {
			t.Errorf("namespace %s left behind (stat: %v)", n, err)
		}
	}
}

func TestForwardJoinsANamespaceToALoopbackService(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	ns := New(t, "fwd")
	// A server on this process's loopback; the namespace has its own.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 64)
				n, _ := c.Read(buf)
				_, _ = c.Write(append([]byte("echo:"), buf[:n]...))
			}()
		}
	}()
	if err := ns.Do(func() error { return exec.Command("ip", "link", "set", "lo", "up").Run() }); err != nil {
		t.Fatal(err)
	}
	addr := Forward(t, ns, "127.0.0.1:6443", ln.Addr().String())
	for i := range 3 {
		c, err := Dial(ns, "tcp", addr, 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		msg := fmt.Sprintf("hello %d", i)
		reply, err := Exchange(c, msg, 3*time.Second)
		c.Close()
		if err != nil || reply != "echo:"+msg {
			t.Fatalf("through the forwarder: %q, %v", reply, err)
		}
	}
	// Outside the namespace nothing listens there.
	if c, err := net.DialTimeout("tcp", "127.0.0.1:6443", time.Second); err == nil {
		c.Close()
		t.Error("the forwarder listens in this process's namespace too")
	}
}
