package ebpf

import (
	"context"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/test/netnstest"
)

// env is a client network namespace (a pod, or the node itself) whose
// sockets the socket LB translates, and a backends namespace holding three
// backend pod addresses per family with TCP and UDP echo servers. The
// client has routes to the pod addresses only: a connect to a service IP
// succeeds only if the programs translated it.
type env struct {
	client, backends *netnstest.NS
	cg               *netnstest.Cgroup
	backendIPs       []netip.Addr // v4 then v6
	nodeAddrs        []netip.Addr
}

const backendPort = 8080

var (
	clusterIP4 = netip.MustParseAddr("10.96.0.10")
	clusterIP6 = netip.MustParseAddr("fd00:96::10")
)

func newEnv(t *testing.T) *env {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("needs root: network namespaces, cgroups and BPF")
	}
	e := &env{
		client:   netnstest.New(t, "sy-lbc"),
		backends: netnstest.New(t, "sy-lbb"),
		cg:       netnstest.NewCgroup(t, "sy-lb"),
	}
	netnstest.Veth(t, e.client, e.backends, "c0", "b0", netip.MustParsePrefix("10.0.0.1/24"), netip.MustParsePrefix("10.0.0.2/24"))
	netnstest.AddAddr(t, e.client, "c0", netip.MustParsePrefix("fd00::1/64"))
	netnstest.AddAddr(t, e.backends, "b0", netip.MustParsePrefix("fd00::2/64"))
	netnstest.AddRoute(t, e.client, netip.MustParsePrefix("10.244.1.0/24"), netip.MustParseAddr("10.0.0.2"))
	netnstest.AddRoute(t, e.client, netip.MustParsePrefix("fd00:244::/64"), netip.MustParseAddr("fd00::2"))
	e.nodeAddrs = []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1")}
	for _, s := range []string{"10.244.1.1", "10.244.1.2", "10.244.1.3", "fd00:244::1", "fd00:244::2", "fd00:244::3"} {
		a := netip.MustParseAddr(s)
		bits := 32
		if a.Is6() {
			bits = 128
		}
		netnstest.AddAddr(t, e.backends, "b0", netip.PrefixFrom(a, bits))
		e.backendIPs = append(e.backendIPs, a)
	}
	// Enter before the servers start: their listeners then belong to the
	// cgroup too, and sockops sees the accepted ("in") side as well.
	e.cg.Enter(t)
	for _, a := range e.backendIPs {
		ap := netip.AddrPortFrom(a, backendPort).String()
		netnstest.StartEchoServer(t, e.backends, "tcp", ap, a.String())
		netnstest.StartEchoServer(t, e.backends, "udp", ap, a.String())
	}
	return e
}

// newLB attaches a socket LB to the env's cgroup; it is closed (and,
// without pinning, detached) at the end of the test.
func (e *env) newLB(t *testing.T, pinPath string) *SocketLB {
	t.Helper()
	lb, err := New(Config{
		CgroupPath:    e.cg.Path,
		PinPath:       pinPath,
		NodeAddresses: func() ([]netip.Addr, error) { return e.nodeAddrs, nil },
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { lb.Close() })
	return lb
}

func (e *env) v4Backends() []netip.Addr { return e.backendIPs[:3] }
func (e *env) v6Backends() []netip.Addr { return e.backendIPs[3:] }

// service returns a Service port "default/<name>" on the given ClusterIPs
// with one ready endpoint per backend address.
func service(st *dataplane.State, name string, proto dataplane.Protocol, port uint16, clusterIPs []netip.Addr, backends []netip.Addr) *dataplane.ServicePort {
	spn := dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: "default", Name: name}, Protocol: proto}
	sp := &dataplane.ServicePort{Name: spn, Port: port, ClusterIPs: clusterIPs}
	st.Services[spn] = sp
	var eps []dataplane.Endpoint
	for _, b := range backends {
		eps = append(eps, dataplane.Endpoint{Addr: netip.AddrPortFrom(b, backendPort), Ready: true, Serving: true})
	}
	st.Endpoints[spn] = eps
	return sp
}

func syncFull(t *testing.T, lb *SocketLB, st *dataplane.State) {
	t.Helper()
	if err := lb.Sync(context.Background(), st, dataplane.Changes{Full: true}); err != nil {
		t.Fatalf("Sync: %v", err)
	}
}

// request sends one TCP line to addr from the client namespace and returns
// the answering backend's id, checking the reply names the client's own
// address (no SNAT on this path) and getpeername shows addr.
func (e *env) request(t *testing.T, proto, addr string) string {
	t.Helper()
	c, err := netnstest.Dial(e.client, proto, addr, 3*time.Second)
	if err != nil {
		t.Fatalf("%v", err)
	}
	defer c.Close()
	if got := c.RemoteAddr().String(); got != addr {
		t.Errorf("getpeername: connection to %s reports peer %s", addr, got)
	}
	reply, err := netnstest.Exchange(c, "hello", 3*time.Second)
	if err != nil {
		t.Fatalf("%s %s: %v", proto, addr, err)
	}
	id, remote, err := netnstest.ReplyID(reply)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(remote, "10.0.0.1:") && !strings.HasPrefix(remote, "[fd00::1]:") {
		t.Errorf("backend %s saw source %s, want the client's own address", id, remote)
	}
	return id
}

// ids collects which backends answer n requests.
func (e *env) ids(t *testing.T, proto, addr string, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for range n {
		got[e.request(t, proto, addr)]++
	}
	return got
}

func addrStrings(as []netip.Addr) []string {
	var out []string
	for _, a := range as {
		out = append(out, a.String())
	}
	return out
}

func hostPort(a netip.Addr, port uint16) string { return netip.AddrPortFrom(a, port).String() }

// untranslated reports whether a TCP connect from the client to addr
// fails: nothing routes service IPs there, so only a translated connect
// succeeds. A connection that did succeed is closed.
func (e *env) untranslated(addr string) bool {
	c, err := netnstest.Dial(e.client, "tcp", addr, time.Second)
	if err == nil {
		c.Close()
		return false
	}
	return true
}
