package ipvsvm

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/ebpf"
	"github.com/switchyard/switchyard/ipvs"
	"github.com/switchyard/switchyard/test/netnstest"
	"github.com/switchyard/switchyard/test/vm/guest"
)

// TestVMSocketLBVerifier: every socket-LB program passes the verifier of
// the stock Debian kernel too, not only the host's.
func TestVMSocketLBVerifier(t *testing.T) {
	guest.Required(t)
	if err := ebpf.Probe(); err != nil {
		t.Fatal(err)
	}
}

// TestVMSocketLBComposesWithIPVS: one Service programmed by both the IPVS
// dataplane and the socket LB. Sockets outside the socket LB's cgroup go
// through IPVS (its connection counters move); sockets inside connect
// straight to a backend (IPVS sees nothing, sockops counts them, the
// application still sees the ClusterIP).
func TestVMSocketLBComposesWithIPVS(t *testing.T) {
	guest.Required(t)
	topo := newTopology(t, 2)
	topo.startEcho(t, "tcp", 8080)
	n := newRealNode(t, ipvs.Config{})
	st := serviceState("web", dataplane.TCP, 80, 0, "", topo.Backends...)
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
	vip := net.JoinHostPort(clusterIP.String(), "80")
	k := ipvs.Key{IP: clusterIP, Protocol: dataplane.TCP, Port: 80}
	active := func() int {
		sum := 0
		for _, rs := range n.realServers(k) {
			sum += rs.ActiveConns
		}
		return sum
	}
	hold := func() net.Conn {
		t.Helper()
		c, err := netnstest.Dial(topo.Client, "tcp", vip, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		reply, err := netnstest.Exchange(c, "hold", 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if id, _, err := netnstest.ReplyID(reply); err != nil || (id != "be0" && id != "be1") {
			t.Fatalf("reply %q: %v", reply, err)
		}
		if got := c.RemoteAddr().String(); got != vip {
			t.Errorf("getpeername shows %s, want %s", got, vip)
		}
		return c
	}

	// Outside the cgroup: IPVS.
	hold()
	if got := active(); got != 1 {
		t.Fatalf("IPVS active connections %d after one connection outside the cgroup, want 1", got)
	}
	// Inside: the socket LB; IPVS does not see them.
	cg.Enter(t)
	for range 4 {
		hold()
	}
	if got := active(); got != 1 {
		t.Errorf("IPVS active connections %d after 4 translated connections, want still 1", got)
	}
	var out uint64
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		cs, err := lb.Connections()
		if err != nil {
			t.Fatal(err)
		}
		out = 0
		for _, c := range cs {
			if c.Direction == ebpf.Out {
				out += c.Count
			}
		}
		if out == 4 {
			break
		}
	}
	if out != 4 {
		t.Errorf("sockops counts %d outgoing connections, want the 4 translated ones", out)
	}
}
