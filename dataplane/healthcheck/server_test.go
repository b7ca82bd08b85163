package healthcheck

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard/switchyard/dataplane"
)

const nodeName = "node-a"

// loopbackListener binds every requested address to 127.0.0.1:0 (or to the
// address pinned for it, to provoke a real EADDRINUSE) and remembers where
// each request ended up.
type loopbackListener struct {
	mu     sync.Mutex
	pinned map[string]string // requested address -> address actually bound
	bound  map[string]string // requested address -> listening address
	calls  map[string]int    // successful Listen calls per requested address
}

func newLoopbackListener() *loopbackListener {
	return &loopbackListener{pinned: map[string]string{}, bound: map[string]string{}, calls: map[string]int{}}
}

func (l *loopbackListener) Listen(ctx context.Context, network, address string) (net.Listener, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	target := "127.0.0.1:0"
	if p, ok := l.pinned[address]; ok {
		target = p
	}
	ln, err := (&net.ListenConfig{}).Listen(ctx, network, target)
	if err != nil {
		return nil, err
	}
	l.bound[address] = ln.Addr().String()
	l.calls[address]++
	return ln, nil
}

func (l *loopbackListener) addr(t *testing.T, requested string) string {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	a, ok := l.bound[requested]
	if !ok {
		t.Fatalf("%s was never bound; bound: %v", requested, l.bound)
	}
	return a
}

func (l *loopbackListener) requested() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for a := range l.bound {
		out = append(out, a)
	}
	slices.Sort(out)
	return out
}

// newTestServer returns a server whose sockets are loopback ephemeral ports.
func newTestServer(t *testing.T, prefixes []netip.Prefix, healthy *atomic.Bool) (*ServiceHealthServer, *loopbackListener) {
	t.Helper()
	s := New(prefixes, healthy.Load)
	ll := newLoopbackListener()
	s.listener = ll
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Cleanup(ctx); err != nil {
			t.Errorf("Cleanup: %v", err)
		}
	})
	return s, ll
}

var client = &http.Client{
	Timeout:   5 * time.Second,
	Transport: &http.Transport{DisableKeepAlives: true},
}

// get fetches http://addr/ and returns the status code and body.
func get(t *testing.T, addr string) (int, string) {
	t.Helper()
	resp, err := client.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatalf("GET %s: %v", addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading body: %v", addr, err)
	}
	return resp.StatusCode, string(body)
}

func wantServing(t *testing.T, addr string, code int, body string) {
	t.Helper()
	gotCode, gotBody := get(t, addr)
	if gotCode != code || gotBody != body {
		t.Errorf("GET %s = %d\n%s\nwant %d\n%s", addr, gotCode, gotBody, code, body)
	}
}

func wantClosed(t *testing.T, addr string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err == nil {
		c.Close()
		t.Errorf("%s still accepts connections", addr)
	}
}

func body(ns, name string, n int, healthy bool) string {
	h := "false"
	if healthy {
		h = "true"
	}
	return "{\n\t\"service\": {\n\t\t\"namespace\": \"" + ns + "\",\n\t\t\"name\": \"" + name +
		"\"\n\t},\n\t\"localEndpoints\": " + strconv.Itoa(n) + ",\n\t\"serviceProxyHealthy\": " + h + "\n}"
}

// state builds a State from Service ports and endpoints.
type state struct{ st *dataplane.State }

func newState() *state {
	st := dataplane.NewState()
	st.NodeName = nodeName
	return &state{st}
}

func (s *state) port(ns, name, port string, hc uint16, eps ...dataplane.Endpoint) *state {
	spn := dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: ns, Name: name}, Port: port, Protocol: dataplane.TCP}
	sp := &dataplane.ServicePort{
		Name:       spn,
		Port:       80,
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
	}
	if hc != 0 {
		sp.NodePort = 31000
		sp.LoadBalancerIPs = []netip.Addr{netip.MustParseAddr("203.0.113.1")}
		sp.ExternalPolicyLocal = true
		sp.HealthCheckNodePort = hc
	}
	s.st.Services[spn] = sp
	s.st.Endpoints[spn] = eps
	return s
}

func ep(addr, node string, ready, terminating bool) dataplane.Endpoint {
	return dataplane.Endpoint{
		Addr:        netip.MustParseAddrPort(addr),
		Ready:       ready,
		Serving:     ready || terminating,
		Terminating: terminating,
		NodeName:    node,
	}
}

func doSync(t *testing.T, s *ServiceHealthServer, st *state) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Sync(ctx, st.st, dataplane.Changes{Full: true}); err != nil {
		t.Fatalf("Sync: %v", err)
	}
}

func TestName(t *testing.T) {
	var dp dataplane.Dataplane = New(nil, nil)
	if dp.Name() != "healthcheck" {
		t.Errorf("Name() = %q", dp.Name())
	}
}

func TestWantedServices(t *testing.T) {
	a := dataplane.ServiceName{Namespace: "ns", Name: "a"}
	for _, tc := range []struct {
		desc string
		st   *state
		want map[dataplane.ServiceName]wanted
	}{
		{
			desc: "no health check port",
			st:   newState().port("ns", "a", "", 0, ep("10.0.0.1:80", nodeName, true, false)),
			want: map[dataplane.ServiceName]wanted{},
		},
		{
			desc: "no endpoint",
			st:   newState().port("ns", "a", "", 30001),
			want: map[dataplane.ServiceName]wanted{a: {port: 30001}},
		},
		{
			desc: "only ready local endpoints count",
			st: newState().port("ns", "a", "", 30001,
				ep("10.0.0.1:80", nodeName, true, false),
				ep("10.0.0.2:80", nodeName, false, false), // not ready
				ep("10.0.0.3:80", nodeName, false, true),  // serving, terminating
				ep("10.0.0.4:80", "node-b", true, false),  // remote
				ep("10.0.0.5:80", "", true, false),        // node unknown
				ep("10.0.0.6:80", nodeName, true, false)),
			want: map[dataplane.ServiceName]wanted{a: {port: 30001, localEndpoints: 2}},
		},
		{
			desc: "a pod is counted once over the Service's ports",
			st: newState().
				port("ns", "a", "http", 30001, ep("10.0.0.1:80", nodeName, true, false)).
				port("ns", "a", "https", 30001, ep("10.0.0.1:443", nodeName, true, false), ep("10.0.0.2:443", nodeName, true, false)),
			want: map[dataplane.ServiceName]wanted{a: {port: 30001, localEndpoints: 2}},
		},
		{
			desc: "only terminating local endpoints: 0",
			st:   newState().port("ns", "a", "", 30001, ep("10.0.0.3:80", nodeName, false, true)),
			want: map[dataplane.ServiceName]wanted{a: {port: 30001}},
		},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			got := wantedServices(tc.st.st)
			if len(got) != len(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			for n, w := range tc.want {
				if got[n] != w {
					t.Errorf("%s: got %+v, want %+v", n, got[n], w)
				}
			}
		})
	}
}

func TestFilterAddrs(t *testing.T) {
	addrs := []netip.Addr{
		netip.MustParseAddr("192.168.1.5"),
		netip.MustParseAddr("10.0.0.1"),
		netip.MustParseAddr("::ffff:10.0.0.2"),
		netip.MustParseAddr("127.0.0.1"),
		netip.MustParseAddr("fd00::1"),
		netip.MustParseAddr("fe80::1"),
		netip.MustParseAddr("10.0.0.1"),
	}
	for _, tc := range []struct {
		desc     string
		prefixes []string
		want     []string
	}{
		{"none match", []string{"172.16.0.0/12"}, nil},
		{"IPv4 prefix, mapped address unmapped, duplicates dropped", []string{"10.0.0.0/8"}, []string{"10.0.0.1", "10.0.0.2"}},
		{"both families", []string{"192.168.1.0/24", "fd00::/8"}, []string{"192.168.1.5", "fd00::1"}},
		{"loopback when asked for", []string{"127.0.0.0/8"}, []string{"127.0.0.1"}},
		{"link-local never", []string{"fe80::/10"}, nil},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			var prefixes []netip.Prefix
			for _, p := range tc.prefixes {
				prefixes = append(prefixes, netip.MustParsePrefix(p))
			}
			var got []string
			for _, a := range filterAddrs(addrs, prefixes) {
				got = append(got, a.String())
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestLifecycle(t *testing.T) {
	var healthy atomic.Bool
	healthy.Store(true)
	s, ll := newTestServer(t, nil, &healthy)

	// a: one pod behind two ports plus a remote one; b: only a terminating
	// local endpoint; c: no health check port.
	st := newState().
		port("ns", "a", "http", 30001, ep("10.0.0.1:80", nodeName, true, false), ep("10.0.1.1:80", "node-b", true, false)).
		port("ns", "a", "https", 30001, ep("10.0.0.1:443", nodeName, true, false)).
		port("ns", "b", "", 30002, ep("10.0.0.2:80", nodeName, false, true)).
		port("ns", "c", "", 0, ep("10.0.0.3:80", nodeName, true, false))
	doSync(t, s, st)

	if got, want := ll.requested(), []string{":30001", ":30002"}; !slices.Equal(got, want) {
		t.Fatalf("listened on %v, want %v (wildcard, one per health check port)", got, want)
	}
	addrA, addrB := ll.addr(t, ":30001"), ll.addr(t, ":30002")
	wantServing(t, addrA, 200, body("ns", "a", 1, true))
	wantServing(t, addrB, 503, body("ns", "b", 0, true))

	// Endpoint changes update the count on the same sockets.
	st.port("ns", "a", "http", 30001, ep("10.0.0.1:80", nodeName, true, false), ep("10.0.0.4:80", nodeName, true, false)).
		port("ns", "b", "", 30002, ep("10.0.0.5:80", nodeName, true, false))
	doSync(t, s, st)
	wantServing(t, addrA, 200, body("ns", "a", 2, true))
	wantServing(t, addrB, 200, body("ns", "b", 1, true))
	if ll.calls[":30001"] != 1 || ll.calls[":30002"] != 1 {
		t.Errorf("sockets reopened on an endpoint change: %v", ll.calls)
	}

	// The proxy's own health is read on every request.
	healthy.Store(false)
	wantServing(t, addrA, 503, body("ns", "a", 2, false))
	healthy.Store(true)

	// Service b removed: its port closes, a keeps serving.
	delete(st.st.Services, dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: "ns", Name: "b"}, Protocol: dataplane.TCP})
	doSync(t, s, st)
	wantClosed(t, addrB)
	wantServing(t, addrA, 200, body("ns", "a", 2, true))

	// Health check port changed: old port closed, new one served.
	st.port("ns", "a", "http", 30011, ep("10.0.0.1:80", nodeName, true, false)).
		port("ns", "a", "https", 30011)
	doSync(t, s, st)
	wantClosed(t, addrA)
	wantServing(t, ll.addr(t, ":30011"), 200, body("ns", "a", 1, true))

	// Cleanup closes everything, and may run twice.
	addrA = ll.addr(t, ":30011")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for range 2 {
		if err := s.Cleanup(ctx); err != nil {
			t.Fatalf("Cleanup: %v", err)
		}
	}
	wantClosed(t, addrA)
	if errs := s.ListenErrors(); len(errs) != 0 {
		t.Errorf("ListenErrors after Cleanup = %v", errs)
	}
}

func TestPortConflict(t *testing.T) {
	var healthy atomic.Bool
	healthy.Store(true)
	s, ll := newTestServer(t, nil, &healthy)

	// Another process owns the address a's health check port maps to.
	occupier, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer occupier.Close()
	ll.pinned[":30001"] = occupier.Addr().String()

	st := newState().
		port("ns", "a", "", 30001, ep("10.0.0.1:80", nodeName, true, false)).
		port("ns", "b", "", 30002, ep("10.0.0.2:80", nodeName, true, false))
	// Sync succeeds: a failed port must not fail the chain.
	doSync(t, s, st)

	errs := s.ListenErrors()
	a := dataplane.ServiceName{Namespace: "ns", Name: "a"}
	var le *ListenError
	if len(errs) != 1 || !errors.As(errs[a], &le) || le.Service != a || le.Address != ":30001" || !errors.Is(errs[a], syscall.EADDRINUSE) {
		t.Fatalf("ListenErrors = %v, want EADDRINUSE for %s on :30001 only", errs, a)
	}
	wantServing(t, ll.addr(t, ":30002"), 200, body("ns", "b", 1, true))

	// Still taken: still reported, b unaffected.
	doSync(t, s, st)
	if errs := s.ListenErrors(); errs[a] == nil {
		t.Errorf("error for %s dropped while the port is still taken", a)
	}
	wantServing(t, ll.addr(t, ":30002"), 200, body("ns", "b", 1, true))

	// The port is freed: the next sync binds it.
	addr := occupier.Addr().String()
	occupier.Close()
	doSync(t, s, st)
	if errs := s.ListenErrors(); len(errs) != 0 {
		t.Errorf("ListenErrors after the port was freed = %v", errs)
	}
	wantServing(t, addr, 200, body("ns", "a", 1, true))
	wantServing(t, ll.addr(t, ":30002"), 200, body("ns", "b", 1, true))

	// A Service that failed and went away leaves no error behind.
	occupier2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer occupier2.Close()
	ll.pinned[":30003"] = occupier2.Addr().String()
	st.port("ns", "c", "", 30003)
	doSync(t, s, st)
	if errs := s.ListenErrors(); len(errs) != 1 {
		t.Fatalf("ListenErrors = %v, want one for ns/c", errs)
	}
	delete(st.st.Services, dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: "ns", Name: "c"}, Protocol: dataplane.TCP})
	doSync(t, s, st)
	if errs := s.ListenErrors(); len(errs) != 0 {
		t.Errorf("ListenErrors after removal = %v", errs)
	}
}

func TestNodePortAddresses(t *testing.T) {
	var healthy atomic.Bool
	healthy.Store(true)
	s, ll := newTestServer(t, []netip.Prefix{netip.MustParsePrefix("10.0.0.7/8"), netip.MustParsePrefix("fd00::/8")}, &healthy)
	nodeAddrs := []netip.Addr{
		netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("192.168.1.1"),
		netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fe80::1"), netip.MustParseAddr("127.0.0.1"),
	}
	var addrErr error
	s.nodeAddrs = func() ([]netip.Addr, error) { return nodeAddrs, addrErr }

	st := newState().port("ns", "a", "", 30001, ep("10.0.0.1:80", nodeName, true, false))
	doSync(t, s, st)
	if got, want := ll.requested(), []string{"10.0.0.1:30001", "[fd00::1]:30001"}; !slices.Equal(got, want) {
		t.Fatalf("listened on %v, want %v", got, want)
	}
	v4, v6 := ll.addr(t, "10.0.0.1:30001"), ll.addr(t, "[fd00::1]:30001")
	wantServing(t, v4, 200, body("ns", "a", 1, true))
	wantServing(t, v6, 200, body("ns", "a", 1, true))

	// The IPv6 address goes away: its socket closes, IPv4 stays.
	nodeAddrs = nodeAddrs[:2]
	doSync(t, s, st)
	wantClosed(t, v6)
	wantServing(t, v4, 200, body("ns", "a", 1, true))

	// Addresses unreadable: Sync fails, open sockets are kept and counts
	// still follow the State.
	addrErr = errors.New("netlink: boom")
	st.port("ns", "a", "", 30001)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Sync(ctx, st.st, dataplane.Changes{Full: true}); err == nil || !errors.Is(err, addrErr) {
		t.Fatalf("Sync = %v, want the address error", err)
	}
	wantServing(t, v4, 503, body("ns", "a", 0, true))
}

// TestRealListener runs the production listener and address lookup on the
// loopback address.
func TestRealListener(t *testing.T) {
	addrs, err := interfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(addrs, netip.MustParseAddr("127.0.0.1")) {
		t.Skip("no 127.0.0.1 on this host")
	}
	// Find a free port; the tiny window before Sync binds it again is
	// acceptable for a test.
	probe, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := netip.MustParseAddrPort(probe.Addr().String()).Port()
	probe.Close()

	s := New([]netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	defer s.Cleanup(ctx)
	st := newState().port("ns", "a", "", port, ep("10.0.0.1:80", nodeName, true, false))
	doSync(t, s, st)
	if errs := s.ListenErrors(); len(errs) != 0 {
		t.Fatalf("ListenErrors = %v", errs)
	}
	addr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port).String()
	wantServing(t, addr, 200, body("ns", "a", 1, true))
	if err := s.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	wantClosed(t, addr)
}

// TestRealWildcardListener checks that without --nodeport-addresses one
// socket per port answers on every address, IPv4 and (when the host has
// it) IPv6.
func TestRealWildcardListener(t *testing.T) {
	probe, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	port := netip.MustParseAddrPort(probe.Addr().String()).Port()
	probe.Close()

	s := New(nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	defer s.Cleanup(ctx)
	doSync(t, s, newState().port("ns", "a", "", port, ep("10.0.0.1:80", nodeName, true, false)))
	if errs := s.ListenErrors(); len(errs) != 0 {
		t.Fatalf("ListenErrors = %v", errs)
	}
	hosts := []string{"127.0.0.1"}
	if c, err := net.Listen("tcp6", "[::1]:0"); err == nil {
		c.Close()
		hosts = append(hosts, "::1")
	}
	for _, h := range hosts {
		addr := netip.AddrPortFrom(netip.MustParseAddr(h), port).String()
		wantServing(t, addr, 200, body("ns", "a", 1, true))
	}
	if err := s.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	for _, h := range hosts {
		wantClosed(t, netip.AddrPortFrom(netip.MustParseAddr(h), port).String())
	}
}
