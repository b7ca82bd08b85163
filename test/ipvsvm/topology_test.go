package ipvsvm

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/switchyard/switchyard/test/netnstest"
)

// topology is a small node: the VM's root namespace plays the Kubernetes
// node (where IPVS and the service IPs live), each backend ("pod") is a
// namespace on a veth, and a client namespace sends traffic through the node
// like a pod or an external client would.
//
//	client 10.99.0.2 --veth-- 10.99.0.1 [root ns: IPVS, VIPs] 10.100.N.1 --veth-- 10.100.N.2 backend N
//
// Addresses exist only inside the VM (it has no network card).
type topology struct {
	Client     *netnstest.NS
	ClientAddr netip.Addr
	Backends   []backend
}

type backend struct {
	ID   string // "be0", "be1", ...: what its echo servers answer
	NS   *netnstest.NS
	Addr netip.Addr
}

// newTopology builds the client and n backends; everything is removed in
// t.Cleanup. Root-side link names are fixed (sy-c0, sy-bN), so two
// topologies cannot coexist.
func newTopology(t *testing.T, n int) *topology {
	t.Helper()
	topo := &topology{Client: netnstest.New(t, "client"), ClientAddr: netip.MustParseAddr("10.99.0.2")}
	netnstest.Veth(t, nil, topo.Client, "sy-c0", "eth0",
		netip.MustParsePrefix("10.99.0.1/24"), netip.MustParsePrefix("10.99.0.2/24"))
	netnstest.AddRoute(t, topo.Client, netip.MustParsePrefix("0.0.0.0/0"), netip.MustParseAddr("10.99.0.1"))
	for i := range n {
		be := backend{ID: fmt.Sprintf("be%d", i), NS: netnstest.New(t, fmt.Sprintf("be%d", i))}
		be.Addr = netip.AddrFrom4([4]byte{10, 100, byte(i), 2})
		gw := netip.AddrFrom4([4]byte{10, 100, byte(i), 1})
		netnstest.Veth(t, nil, be.NS, fmt.Sprintf("sy-b%d", i), "eth0",
			netip.PrefixFrom(gw, 24), netip.PrefixFrom(be.Addr, 24))
		// Masquerading IPVS keeps the client's source address: replies must
		// route back through the node to be de-NATed.
		netnstest.AddRoute(t, be.NS, netip.MustParsePrefix("0.0.0.0/0"), gw)
		topo.Backends = append(topo.Backends, be)
	}
	return topo
}

// startEcho starts an echo server on every backend at port, answering with
// the backend's ID.
func (topo *topology) startEcho(t *testing.T, proto string, port uint16) {
	t.Helper()
	for _, be := range topo.Backends {
		netnstest.StartEchoServer(t, be.NS, proto, netip.AddrPortFrom(be.Addr, port).String(), be.ID)
	}
}

// addServiceIP puts vip/32 on a dummy link in the root namespace, left
// down as kube-proxy leaves kube-ipvs0: the address is still local, which is
// all IPVS needs to see packets for it.
func addServiceIP(t *testing.T, link string, vip netip.Addr) {
	t.Helper()
	d := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: link}}
	if err := netlink.LinkAdd(d); err != nil {
		t.Fatalf("add dummy %s: %v", link, err)
	}
	t.Cleanup(func() {
		if err := netlink.LinkDel(d); err != nil {
			t.Errorf("delete dummy %s: %v", link, err)
		}
	})
	netnstest.AddAddr(t, nil, link, netip.PrefixFrom(vip, 32))
}

// requestIDs makes n requests from ns (nil = root), one connection each, and
// returns how many each backend answered, checking the source address each
// backend saw when wantSrc is valid.
func requestIDs(t *testing.T, ns *netnstest.NS, proto, addr string, n int, wantSrc netip.Addr) map[string]int {
	t.Helper()
	seen := map[string]int{}
	for i := range n {
		reply, err := netnstest.Request(ns, proto, addr, fmt.Sprintf("req%d", i), 5*time.Second)
		if err != nil {
			t.Fatalf("request %d from %s: %v", i, ns.Name(), err)
		}
		id, remote, err := netnstest.ReplyID(reply)
		if err != nil {
			t.Fatal(err)
		}
		if wantSrc.IsValid() {
			if ap, err := netip.ParseAddrPort(remote); err != nil || ap.Addr() != wantSrc {
				t.Fatalf("backend %s saw source %s, want %s", id, remote, wantSrc)
			}
		}
		seen[id]++
	}
	return seen
}
