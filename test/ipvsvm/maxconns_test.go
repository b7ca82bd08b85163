package ipvsvm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/ebpf"
	"github.com/switchyard/switchyard/ipvs"
	"github.com/switchyard/switchyard/test/netnstest"
	"github.com/switchyard/switchyard/test/vm/guest"
)

// holdIPVSConn opens a TCP connection from ns (nil = the node) to addr and
// checks the echo reply; the connection stays open until the caller
// closes it or the test ends.
func holdIPVSConn(t *testing.T, ns *netnstest.NS, addr string) (*net.TCPConn, string, error) {
	t.Helper()
	c, err := netnstest.Dial(ns, "tcp", addr, 5*time.Second)
	if err != nil {
		return nil, "", err
	}
	t.Cleanup(func() { c.Close() })
	reply, err := netnstest.Exchange(c, "hello", 5*time.Second)
	if err != nil {
		t.Fatalf("connection to %s accepted but no reply: %v", addr, err)
	}
	id, _, err := netnstest.ReplyID(reply)
	if err != nil {
		t.Fatal(err)
	}
	return c.(*net.TCPConn), id, nil
}

// refusedByIPVS checks that a new connection fails with ECONNREFUSED (the
// ICMP port unreachable IPVS sends when it has no destination, or the
// socket LB's refusal), not with a timeout and not by connecting.
func refusedByIPVS(t *testing.T, ns *netnstest.NS, addr string) {
	t.Helper()
	c, id, err := holdIPVSConn(t, ns, addr)
	if err == nil {
		c.Close()
		t.Fatalf("%s: connected to %s, want connection refused", addr, id)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("%s: %v, want connection refused", addr, err)
	}
}

// abort closes c with a reset: IPVS keeps the entry of a reset connection
// 10 s (CLOSE) instead of the 2 minutes of TIME_WAIT after a FIN, and
// counts it until then.
func abort(t *testing.T, c *net.TCPConn) {
	t.Helper()
	if err := c.SetLinger(0); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestVMMaxConnectionsIPVS: switchyard.io/max-connections-per-backend on
// the IPVS dataplane. The real servers get the limit as upper and lower
// threshold; with the only backend at 2 connections the third is refused
// at once (ICMP port unreachable: ECONNREFUSED) from a client namespace
// and from the node; once a held connection's IPVS entry expires a new one
// is accepted; with two backends at 1 each, IPVS puts two connections on
// different backends and refuses the third.
func TestVMMaxConnectionsIPVS(t *testing.T) {
	guest.Required(t)
	topo := newTopology(t, 2)
	topo.startEcho(t, "tcp", 8080)
	n := newRealNode(t, ipvs.Config{})
	st := dataplane.NewState()
	one := addService(st, "limited", dataplane.TCP, 80, 0, "", topo.Backends[0])
	st.Services[one].MaxConnectionsPerBackend = 2
	two := addService(st, "limited-two", dataplane.TCP, 81, 0, "", topo.Backends...)
	st.Services[two].MaxConnectionsPerBackend = 1
	n.sync(st, fullSync)

	k := ipvs.Key{IP: clusterIP, Protocol: dataplane.TCP, Port: 80}
	rs := n.realServers(k)[netip.AddrPortFrom(topo.Backends[0].Addr, 8080)]
	if rs.UpperThreshold != 2 || rs.LowerThreshold != 2 {
		t.Fatalf("real server of %s: thresholds upper %d lower %d, want 2 2", k, rs.UpperThreshold, rs.LowerThreshold)
	}

	t.Run("one backend, limit 2", func(t *testing.T) {
		addr := net.JoinHostPort(clusterIP.String(), "80")
		var held []*net.TCPConn
		for i := range 2 {
			c, id, err := holdIPVSConn(t, topo.Client, addr)
			if err != nil || id != "be0" {
				t.Fatalf("connection %d: %s %v, want be0", i, id, err)
			}
			held = append(held, c)
		}
		refusedByIPVS(t, topo.Client, addr)
		refusedByIPVS(t, nil, addr)
		// The held connections still work.
		if reply, err := netnstest.Exchange(held[1], "again", 5*time.Second); err != nil {
			t.Fatalf("held connection after the refusals: %v", err)
		} else if id, _, _ := netnstest.ReplyID(reply); id != "be0" {
			t.Fatalf("held connection answered %q", reply)
		}

		// A reset connection's entry expires after 10 s (CLOSE); until
		// then it counts. Retry every 1.5 s (ICMP to one peer is rate
		// limited to about one a second), each try refused or answered.
		abort(t, held[0])
		start := time.Now()
		var last error
		for range 40 {
			c, id, err := holdIPVSConn(t, topo.Client, addr)
			if err == nil {
				if id != "be0" {
					t.Fatalf("answered by %s, want be0", id)
				}
				t.Logf("accepted again %v after the reset", time.Since(start).Round(100*time.Millisecond))
				c.Close()
				return
			}
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("after the reset: %v, want refused until the entry expires", err)
			}
			last = err
			time.Sleep(1500 * time.Millisecond)
		}
		t.Fatalf("still refused %v after a connection was reset: %v", time.Since(start), last)
	})

	t.Run("two backends, limit 1 each", func(t *testing.T) {
		addr := net.JoinHostPort(clusterIP.String(), "81")
		seen := map[string]bool{}
		for i := range 2 {
			_, id, err := holdIPVSConn(t, topo.Client, addr)
			if err != nil {
				t.Fatalf("connection %d: %v (IPVS skips a full backend, so this must not fail)", i, err)
			}
			seen[id] = true
		}
		if !seen["be0"] || !seen["be1"] {
			t.Fatalf("backends of the two connections: %v, want be0 and be1", seen)
		}
		refusedByIPVS(t, topo.Client, addr)
		st := n.realServers(ipvs.Key{IP: clusterIP, Protocol: dataplane.TCP, Port: 81})
		for _, be := range topo.Backends {
			rs := st[netip.AddrPortFrom(be.Addr, 8080)]
			if rs.ActiveConns != 1 || rs.UpperThreshold != 1 {
				t.Errorf("real server %s: %s", be.ID, fmt.Sprintf("active %d, upper threshold %d; want 1 and 1", rs.ActiveConns, rs.UpperThreshold))
			}
		}
	})
}

// TestVMMaxConnectionsSocketLB: the socket LB's limit on the VM's kernel
// (bpf_set_retval in a cgroup connect program). With the socket LB over
// IPVS, the client's sockets in the cgroup connect straight to the
// backend, so IPVS counts none of them and would accept a third; the
// program refuses it with ECONNREFUSED.
func TestVMMaxConnectionsSocketLB(t *testing.T) {
	guest.Required(t)
	topo := newTopology(t, 1)
	topo.startEcho(t, "tcp", 8080)
	n := newRealNode(t, ipvs.Config{})
	st := dataplane.NewState()
	name := addService(st, "limited", dataplane.TCP, 80, 0, "", topo.Backends[0])
	st.Services[name].MaxConnectionsPerBackend = 2
	n.sync(st, fullSync)

	cg := netnstest.NewCgroup(t, "sy-lb")
	lb, err := ebpf.New(ebpf.Config{CgroupPath: cg.Path, NodeAddresses: func() ([]netip.Addr, error) { return nil, nil }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := lb.Cleanup(context.Background()); err != nil {
			t.Errorf("socket LB cleanup: %v", err)
		}
	})
	if err := lb.Sync(context.Background(), st, fullSync); err != nil {
		t.Fatal(err)
	}
	cg.Enter(t)
	addr := net.JoinHostPort(clusterIP.String(), "80")
	for i := range 2 {
		if _, id, err := holdIPVSConn(t, topo.Client, addr); err != nil || id != "be0" {
			t.Fatalf("connection %d: %s %v, want be0", i, id, err)
		}
	}
	refusedByIPVS(t, topo.Client, addr)
	k := ipvs.Key{IP: clusterIP, Protocol: dataplane.TCP, Port: 80}
	for _, rs := range n.realServers(k) {
		if rs.ActiveConns+rs.InactiveConns != 0 {
			t.Errorf("IPVS saw %d connections, want none: the refusal must be the socket LB's", rs.ActiveConns+rs.InactiveConns)
		}
	}
}
