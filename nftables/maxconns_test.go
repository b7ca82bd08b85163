package nftables

import (
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/test/netnstest"
)

// holdConn opens a TCP connection from ns to addr, checks that it is
// answered by one of want (the echo reply), and keeps it open until the
// test ends (or the caller closes it).
func holdConn(t *testing.T, from *netnstest.NS, addr string, want ...string) (net.Conn, string, error) {
	t.Helper()
	c, err := netnstest.Dial(from, "tcp", addr, 3*time.Second)
	if err != nil {
		return nil, "", err
	}
	reply, err := netnstest.Exchange(c, "hello", 3*time.Second)
	if err != nil {
		c.Close()
		return nil, "", err
	}
	t.Cleanup(func() { c.Close() })
	id, _, err := netnstest.ReplyID(reply)
	if err != nil || !containsStr(want, id) {
		c.Close()
		t.Fatalf("%s answered %q (%v), want one of %v", addr, reply, err, want)
	}
	return c, id, nil
}

// refusedNow checks that a new connection is refused with a reset: the
// dial fails with ECONNREFUSED, which a SYN left unanswered (a timeout)
// or a connection accepted by a backend never gives.
func refusedNow(t *testing.T, from *netnstest.NS, addr string) {
	t.Helper()
	c, err := netnstest.Dial(from, "tcp", addr, 3*time.Second)
	if err == nil {
		reply, xerr := netnstest.Exchange(c, "hello", 3*time.Second)
		c.Close()
		t.Fatalf("%s from %s: connected (reply %q, %v), want a reset", addr, from.Name(), reply, xerr)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("%s from %s: %v, want connection refused (a reset)", addr, from.Name(), err)
	}
}

// eventuallyHold retries a connection refused by the limit (a closed one
// leaves the count once conntrack sees it closed; a random pick may land
// on a full backend) until it is answered, at most 40 times.
func eventuallyHold(t *testing.T, from *netnstest.NS, addr string, want ...string) (net.Conn, string) {
	t.Helper()
	var last error
	for range 40 {
		c, id, err := holdConn(t, from, addr, want...)
		if err == nil {
			return c, id
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("%s from %s: %v, want an answer or a reset", addr, from.Name(), err)
		}
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s from %s: still refused after 40 tries: %v", addr, from.Name(), last)
	return nil, ""
}

// TestKernelMaxConnections: switchyard.io/max-connections-per-backend in a
// node namespace. One count per backend covers every frontend and every
// client path of the Service (forwarded clients, the node itself); the
// connection over the limit is reset at once; a closed connection frees
// its place; with two backends at one connection each, both are used.
func TestKernelMaxConnections(t *testing.T) {
	requireKernel(t)
	topo := newTrafficTopology(t)
	cfg := Config{ClusterCIDRs: clusterCIDR, ConntrackDropInvalid: true}
	p := topo.k.proxier(t, cfg)
	one := svc{ns: "default", name: "limited", proto: dataplane.TCP, svcPort: 80, nodePort: 30081,
		clusterIPs: []string{"10.96.0.31"}, endpoints: []string{be1Addr + ":8080"}, maxConns: 2}
	two := svc{ns: "default", name: "limited-two", proto: dataplane.TCP, svcPort: 80,
		clusterIPs: []string{"10.96.0.32"}, endpoints: []string{be1Addr + ":8080", be2Addr + ":8080"}, maxConns: 1}
	// The same backend without a limit: not counted, not refused.
	free := svc{ns: "default", name: "free", proto: dataplane.TCP, svcPort: 80,
		clusterIPs: []string{"10.96.0.33"}, endpoints: []string{be1Addr + ":8080"}}
	mustSync(t, p, newState(one, two, free), full)
	oneIP, oneNodePort, twoIP := "10.96.0.31:80", nodeAddr+":30081", "10.96.0.32:80"

	t.Run("one backend, limit 2", func(t *testing.T) {
		c1, _, err := holdConn(t, topo.client, oneIP, "be1")
		if err != nil {
			t.Fatal(err)
		}
		// The second through the NodePort: the same backend's count.
		if _, _, err := holdConn(t, topo.client, oneNodePort, "be1"); err != nil {
			t.Fatal(err)
		}
		refusedNow(t, topo.client, oneIP)
		refusedNow(t, topo.client, oneNodePort)
		refusedNow(t, topo.pod, oneIP)
		refusedNow(t, topo.node, oneIP) // the node's own connection (output hook)
		// Held connections keep working.
		if reply, err := netnstest.Exchange(c1, "again", 3*time.Second); err != nil {
			t.Fatalf("held connection after the refusals: %v", err)
		} else if id, _, _ := netnstest.ReplyID(reply); id != "be1" {
			t.Fatalf("held connection answered %q", reply)
		}
		// Another Service on the same backend has no limit.
		for range 3 {
			if _, _, err := holdConn(t, topo.client, "10.96.0.33:80", "be1"); err != nil {
				t.Fatalf("unlimited Service on the same backend: %v", err)
			}
		}

		c1.Close()
		c3, _ := eventuallyHold(t, topo.node, oneIP, "be1")
		refusedNow(t, topo.client, oneIP)
		c3.Close()
	})

	t.Run("two backends, limit 1 each", func(t *testing.T) {
		// The DNAT picks at random: a connection landing on the full
		// backend is refused and retried.
		_, first := eventuallyHold(t, topo.client, twoIP, "be1", "be2")
		_, second := eventuallyHold(t, topo.client, twoIP, "be1", "be2")
		if first == second {
			t.Fatalf("both connections on %s, each backend allows one", first)
		}
		for range 5 {
			refusedNow(t, topo.client, twoIP)
		}
	})
}

// TestKernelMaxConnectionsChange: a new limit is a new count set (the
// elements keep the limit they were created with), written by partial
// and full syncs alike; the old one goes; no limit, no set.
func TestKernelMaxConnectionsChange(t *testing.T) {
	requireKernel(t)
	k := newKernelNS(t, "sy-nft-lim")
	p := k.proxier(t, Config{ClusterCIDRs: clusterCIDR})
	s := web()
	s.maxConns = 2
	st := newState(s)
	mustSync(t, p, st, full)
	sets := func() []string {
		t.Helper()
		kt, err := readTable(k.conn, ipv4, false)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for name := range kt.sets {
			if isLimitSetName(name) {
				out = append(out, name)
			}
		}
		return out
	}
	want := limitSet(s.portName(), 2)
	if got := sets(); len(got) != 1 || got[0] != want {
		t.Fatalf("limit sets %v, want [%s]", got, want)
	}

	s.maxConns = 3
	putService(st, s)
	mustSync(t, p, st, changed(s.portName().ServiceName))
	if got, want := sets(), limitSet(s.portName(), 3); len(got) != 1 || got[0] != want {
		t.Fatalf("after the change to 3: limit sets %v, want [%s]", got, want)
	}
	k.cnt.take()
	mustSync(t, k.proxier(t, Config{ClusterCIDRs: clusterCIDR}), st, full)
	if msgs, flushes := k.cnt.take(); flushes != 0 {
		t.Errorf("full sync after the partial one sent %d messages, want none", msgs)
	}

	s.maxConns = 0
	putService(st, s)
	mustSync(t, p, st, changed(s.portName().ServiceName))
	if got := sets(); len(got) != 0 {
		t.Fatalf("without a limit: limit sets %v, want none", got)
	}
	if dump := k.dump(t); strings.Contains(dump, "ct count") || strings.Contains(dump, "connections per backend") {
		t.Errorf("rules of the limit left:\n%s", dump)
	}
}
