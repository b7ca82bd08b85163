package socklbbench

import (
	"errors"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// TestPaths sets up the benchmark's topology and checks a handful of real
// replies on every path, without timing anything.
func TestPaths(t *testing.T) {
	topo := newTopology(t)
	topo.check(t)
}

// Bounds of check: connect ops per path, persistent connections and
// requests on each.
const (
	checkConnects = 16
	checkConns    = 2
	checkRequests = 8
)

// check proves each path works as the benchmark assumes: replies with the
// request echoed from the expected backends, over new and persistent
// connections; the socket LB spreads connections and shows the ClusterIP
// as the peer; its ClusterIP is unreachable to sockets outside its cgroup
// (so nothing but the socket LB can have answered there).
func (topo *topology) check(tb testing.TB) {
	tb.Helper()
	for _, p := range topo.paths {
		if err := p.enter(); err != nil {
			tb.Fatal(err)
		}
		seen := map[byte]int{}
		var x exchanger
		err := p.ns.Do(func() error {
			for i := range uint64(checkConnects) {
				id, err := p.connectOnce(&x, i)
				if err != nil {
					return err
				}
				seen[id]++
			}
			return nil
		})
		if err != nil {
			tb.Fatal(err)
		}
		// Direct dials every backend in turn; the load balancers pick at
		// random: 16 picks of 4 backends all alike has odds of 4^-15.
		if len(seen) < 2 {
			tb.Errorf("%s: %d connections all reached backend(s) %v", p.name, checkConnects, seen)
		}
		conns, err := p.dial(0, checkConns)
		if err != nil {
			tb.Fatal(err)
		}
		defer closeAll(conns)
		for _, c := range conns {
			for i := range uint64(checkRequests) {
				if _, err := x.exchange(c.fd, i, 0, c.id, p.nBackends); err != nil {
					tb.Fatalf("%s: request %d on a persistent connection: %v", p.name, i, err)
				}
			}
			if vip, ok := map[string]string{"socketlb": lbClusterIP, "socketlb-nocount": lbNoCountClusterIP}[p.name]; ok {
				peer, err := unix.Getpeername(c.fd)
				if err != nil {
					tb.Fatal(err)
				}
				sa, ok := peer.(*unix.SockaddrInet4)
				want := netip.AddrPortFrom(netip.MustParseAddr(vip), servicePort)
				if !ok || saString(sa) != want.String() {
					tb.Errorf("%s: getpeername = %#v, want the ClusterIP %s", p.name, peer, want)
				}
			}
		}
		tb.Logf("%s: %d connects reached backends %v; %d persistent connections answered", p.name, checkConnects, seen, checkConns)
	}

	// Outside the socket LB's cgroup its ClusterIP must not answer.
	lb := topo.path("socketlb")
	if err := topo.plain.Add(unix.Getpid()); err != nil {
		tb.Fatal(err)
	}
	sa, _ := lb.target(0)
	err := lb.ns.Do(func() error {
		fd, err := newSocket()
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return connectFD(fd, sa)
	})
	if err == nil {
		tb.Fatalf("socketlb: %s answered a socket outside the socket LB's cgroup", saString(sa))
	}
	if !errors.Is(err, unix.EHOSTUNREACH) && !errors.Is(err, unix.ENETUNREACH) {
		tb.Logf("socketlb: untranslated connect failed with %v (expected unreachable)", err)
	}
}
