package ipvsvm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	libipvs "github.com/moby/ipvs"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/ipvs"
	"github.com/switchyard/switchyard/test/netnstest"
	"github.com/switchyard/switchyard/test/vm/guest"
)

// These tests drive the real ipvs.Proxier (moby/ipvs handle, netlink links
// on the VM's root namespace as the node, /proc/sys) with dataplane.State
// values built by hand, and check real traffic from the topology's client
// namespace and from the node itself.

var (
	clusterIP = netip.MustParseAddr("10.96.0.10")
	nodeAddr  = netip.MustParseAddr("10.99.0.1") // the node's address on the client veth
)

// realNode is a Proxier on the VM's kernel plus direct handles to inspect
// and tamper with what it programs.
type realNode struct {
	t        *testing.T
	p        *ipvs.Proxier
	h        *ipvs.KernelHandle
	links    *ipvs.NetlinkLinks
	nl       *netlink.Handle
	cfg      ipvs.Config
	stateDir string
	// foreign are virtual servers the test made as another program would.
	foreign map[ipvs.Key]bool
}

func newRealNode(t *testing.T, cfg ipvs.Config) *realNode {
	t.Helper()
	if cfg.StateDir == "" {
		cfg.StateDir = t.TempDir()
	}
	h, err := ipvs.NewHandle("")
	if err != nil {
		t.Fatal(err)
	}
	nl, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	n := &realNode{t: t, h: h, nl: nl, links: ipvs.NewNetlinkLinks(nl, ""), cfg: cfg, stateDir: cfg.StateDir, foreign: map[ipvs.Key]bool{}}
	n.p = n.newProxier(n.h, n.links)
	t.Cleanup(func() {
		// Leave the VM clean for the next test, and prove Cleanup does.
		if err := n.p.Cleanup(context.Background()); err != nil {
			t.Errorf("Cleanup: %v", err)
		}
		n.expectNoSwitchyardObjects()
		h.Close()
		nl.Close()
	})
	return n
}

func (n *realNode) newProxier(h ipvs.Handle, l ipvs.Links) *ipvs.Proxier {
	n.t.Helper()
	p, err := ipvs.NewProxier(n.cfg, h, l, ipvs.ProcSysctl{})
	if err != nil {
		n.t.Fatal(err)
	}
	return p
}

func (n *realNode) sync(st *dataplane.State, ch dataplane.Changes) {
	n.t.Helper()
	if err := n.p.Sync(context.Background(), st, ch); err != nil {
		n.t.Fatalf("Sync: %v", err)
	}
}

// realServers reads a virtual server's real servers from the kernel.
func (n *realNode) realServers(k ipvs.Key) map[netip.AddrPort]ipvs.RealServer {
	n.t.Helper()
	rss, err := n.h.ListRealServers(k)
	if err != nil {
		n.t.Fatalf("read back %s: %v", k, err)
	}
	out := map[netip.AddrPort]ipvs.RealServer{}
	for _, rs := range rss {
		out[rs.Addr] = rs
	}
	return out
}

func (n *realNode) virtualServers() map[ipvs.Key]ipvs.VirtualServer {
	n.t.Helper()
	vss, err := n.h.ListVirtualServers()
	if err != nil {
		n.t.Fatal(err)
	}
	out := map[ipvs.Key]ipvs.VirtualServer{}
	for _, vs := range vss {
		out[vs.Key] = vs
	}
	return out
}

// expectNoSwitchyardObjects checks what Cleanup promises: no dummy link, no
// virtual server on a service address or node port of these tests, no state
// file.
func (n *realNode) expectNoSwitchyardObjects() {
	n.t.Helper()
	if _, err := n.nl.LinkByName(ipvs.DefaultLinkName); err == nil {
		n.t.Errorf("%s still exists after Cleanup", ipvs.DefaultLinkName)
	}
	for k := range n.virtualServers() {
		if n.foreign[k] {
			continue
		}
		if strings.HasPrefix(k.IP.String(), "10.96.") || k.Port >= 30000 && k.Port < 32768 {
			n.t.Errorf("virtual server %s left after Cleanup", k)
		}
	}
	if _, err := os.Stat(filepath.Join(n.stateDir, ipvs.StateFileName)); !errors.Is(err, os.ErrNotExist) {
		n.t.Errorf("state file left after Cleanup: %v", err)
	}
}

// serviceState builds a State with one Service port whose endpoints are the
// given backends at port 8080.
func serviceState(name string, proto dataplane.Protocol, port, nodePort uint16, sched string, backends ...backend) *dataplane.State {
	st := dataplane.NewState()
	addService(st, name, proto, port, nodePort, sched, backends...)
	return st
}

func addService(st *dataplane.State, name string, proto dataplane.Protocol, port, nodePort uint16, sched string, backends ...backend) dataplane.ServicePortName {
	spn := dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: "default", Name: name}, Protocol: proto}
	st.Services[spn] = &dataplane.ServicePort{
		Name: spn, Port: port, NodePort: nodePort, Scheduler: sched,
		ClusterIPs: []netip.Addr{clusterIP},
	}
	var eps []dataplane.Endpoint
	for _, be := range backends {
		eps = append(eps, dataplane.Endpoint{Addr: netip.AddrPortFrom(be.Addr, 8080), Ready: true, Serving: true})
	}
	slices.SortFunc(eps, dataplane.CompareEndpoints)
	if len(eps) > 0 {
		st.Endpoints[spn] = eps
	} else {
		delete(st.Endpoints, spn)
	}
	return spn
}

func changedSvc(names ...dataplane.ServicePortName) dataplane.Changes {
	c := dataplane.Changes{Services: map[dataplane.ServiceName]struct{}{}}
	for _, n := range names {
		c.Services[n.ServiceName] = struct{}{}
	}
	return c
}

var fullSync = dataplane.Changes{Full: true}

func expectEven(t *testing.T, what string, seen map[string]int, each int) {
	t.Helper()
	if seen["be0"] != each || seen["be1"] != each {
		t.Errorf("%s: replies per backend %v, want %d each (round robin)", what, seen, each)
	}
}

func TestVMProxierClusterIPRoundRobin(t *testing.T) {
	guest.Required(t)
	topo := newTopology(t, 2)
	topo.startEcho(t, "tcp", 8080)
	topo.startEcho(t, "udp", 8080)
	n := newRealNode(t, ipvs.Config{})
	st := serviceState("web", dataplane.TCP, 80, 0, "", topo.Backends...)
	addService(st, "dns", dataplane.UDP, 53, 0, "", topo.Backends...)
	n.sync(st, fullSync)

	// The dummy link is down and holds the ClusterIP as a /32.
	link, err := n.nl.LinkByName(ipvs.DefaultLinkName)
	if err != nil {
		t.Fatal(err)
	}
	if link.Type() != "dummy" || link.Attrs().Flags&net.FlagUp != 0 {
		t.Errorf("%s: type %s flags %v, want a dummy link left down", ipvs.DefaultLinkName, link.Type(), link.Attrs().Flags)
	}
	addrs, err := n.nl.AddrList(link, netlink.FAMILY_V4)
	if err != nil || len(addrs) != 1 || addrs[0].IPNet.String() != "10.96.0.10/32" {
		t.Errorf("addresses on %s: %v %v", ipvs.DefaultLinkName, addrs, err)
	}
	for _, s := range []string{"net/ipv4/vs/conntrack", "net/ipv4/vs/expire_nodest_conn", "net/ipv4/vs/expire_quiescent_template", "net/ipv4/ip_forward"} {
		if v, err := (ipvs.ProcSysctl{}).Get(s); err != nil || v != "1" {
			t.Errorf("sysctl %s = %q, %v", s, v, err)
		}
	}

	tcp := net.JoinHostPort(clusterIP.String(), "80")
	expectEven(t, "TCP from client namespace", requestIDs(t, topo.Client, "tcp", tcp, 6, topo.ClientAddr), 3)
	expectEven(t, "TCP from the node", requestIDs(t, nil, "tcp", tcp, 6, netip.Addr{}), 3)
	udp := net.JoinHostPort(clusterIP.String(), "53")
	expectEven(t, "UDP from client namespace", requestIDs(t, topo.Client, "udp", udp, 4, topo.ClientAddr), 2)

	// The snapshot shows what the kernel has.
	snap := n.p.Snapshot()
	if len(snap) != 2 || len(snap[0].RealServers) != 2 || snap[0].Service == "" {
		t.Errorf("snapshot: %+v", snap)
	}
}

func TestVMProxierNodePort(t *testing.T) {
	guest.Required(t)
	topo := newTopology(t, 2)
	topo.startEcho(t, "tcp", 8080)
	n := newRealNode(t, ipvs.Config{})
	n.sync(serviceState("np", dataplane.TCP, 80, 30080, "", topo.Backends...), fullSync)

	k := ipvs.Key{IP: nodeAddr, Protocol: dataplane.TCP, Port: 30080}
	if _, ok := n.virtualServers()[k]; !ok {
		t.Fatalf("no NodePort virtual server %s; have %v", k, n.virtualServers())
	}
	b, err := os.ReadFile(filepath.Join(n.stateDir, ipvs.StateFileName))
	if err != nil || !strings.Contains(string(b), k.String()) {
		t.Errorf("state file does not record %s: %s %v", k, b, err)
	}
	// The backends' default route goes through the node, so masquerading
	// IPVS needs no SNAT: the client's address is kept.
	addr := netip.AddrPortFrom(nodeAddr, 30080).String()
	expectEven(t, "NodePort from client namespace", requestIDs(t, topo.Client, "tcp", addr, 4, topo.ClientAddr), 2)
}

func TestVMProxierSchedulerAnnotation(t *testing.T) {
	guest.Required(t)
	topo := newTopology(t, 2)
	topo.startEcho(t, "tcp", 8080)
	n := newRealNode(t, ipvs.Config{})
	k := ipvs.Key{IP: clusterIP, Protocol: dataplane.TCP, Port: 80}
	sched := func() string {
		t.Helper()
		vs, err := n.h.GetVirtualServer(k)
		if err != nil {
			t.Fatal(err)
		}
		return vs.Scheduler
	}
	st := serviceState("web", dataplane.TCP, 80, 0, "", topo.Backends...)
	n.sync(st, fullSync)
	if got := sched(); got != "rr" {
		t.Errorf("default scheduler %q, want rr", got)
	}
	spn := addService(st, "web", dataplane.TCP, 80, 0, "lc", topo.Backends...)
	n.sync(st, changedSvc(spn))
	if got := sched(); got != "lc" {
		t.Errorf("scheduler %q after annotation, want lc", got)
	}
	addService(st, "web", dataplane.TCP, 80, 0, "sh", topo.Backends...)
	n.sync(st, changedSvc(spn))
	if got := sched(); got != "sh" {
		t.Errorf("scheduler %q after annotation change, want sh", got)
	}
	// Source hashing: one client, one backend.
	seen := requestIDs(t, topo.Client, "tcp", net.JoinHostPort(clusterIP.String(), "80"), 4, topo.ClientAddr)
	if len(seen) != 1 {
		t.Errorf("sh sent one client to %v", seen)
	}
}

// TestVMProxierGracefulDrain removes the endpoint an open TCP connection
// uses: the real server drops to weight 0, the connection keeps working,
// new connections go elsewhere, and once the connection is closed the
// drain-check trigger leads to syncs that delete the real server.
func TestVMProxierGracefulDrain(t *testing.T) {
	guest.Required(t)
	topo := newTopology(t, 2)
	topo.startEcho(t, "tcp", 8080)
	n := newRealNode(t, ipvs.Config{DrainCheckInterval: 500 * time.Millisecond})
	triggered := make(chan struct{}, 1)
	n.p.SetTrigger(func() {
		select {
		case triggered <- struct{}{}:
		default:
		}
	})
	st := serviceState("web", dataplane.TCP, 80, 0, "", topo.Backends...)
	n.sync(st, fullSync)
	addr := net.JoinHostPort(clusterIP.String(), "80")
	conn, err := netnstest.Dial(topo.Client, "tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	reply, err := netnstest.Exchange(conn, "hello", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	usedID, _, _ := netnstest.ReplyID(reply)
	var used, other backend
	for _, be := range topo.Backends {
		if be.ID == usedID {
			used = be
		} else {
			other = be
		}
	}
	if used.ID == "" {
		t.Fatalf("unexpected reply %q", reply)
	}

	// Remove the endpoint the connection uses.
	spn := addService(st, "web", dataplane.TCP, 80, 0, "", other)
	n.sync(st, changedSvc(spn))
	k := ipvs.Key{IP: clusterIP, Protocol: dataplane.TCP, Port: 80}
	rs, ok := n.realServers(k)[netip.AddrPortFrom(used.Addr, 8080)]
	if !ok || rs.Weight != 0 || rs.ActiveConns != 1 {
		t.Fatalf("draining real server: %+v present=%v, want weight 0 with 1 active connection", rs, ok)
	}
	// The open connection still works; new ones avoid the drained backend.
	for i := range 3 {
		if r, err := netnstest.Exchange(conn, fmt.Sprintf("again%d", i), 5*time.Second); err != nil || !strings.HasPrefix(r, used.ID+" ") {
			t.Fatalf("open connection after drain: %q %v", r, err)
		}
	}
	if seen := requestIDs(t, topo.Client, "tcp", addr, 4, topo.ClientAddr); seen[other.ID] != 4 {
		t.Errorf("new connections during drain went to %v, want all on %s", seen, other.ID)
	}

	// Close with RST: IPVS moves the entry to CLOSE (10 s timeout) rather
	// than TIME_WAIT (2 min), which keeps this test short. The entry counts
	// as inactive until it expires; then the next sync deletes the server.
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	conn.Close()
	deadline := time.After(60 * time.Second)
	for {
		select {
		case <-triggered:
		case <-deadline:
			t.Fatalf("real server still there 60 s after the connection closed: %+v", n.realServers(k))
		}
		n.sync(st, changedSvc()) // what the loop does on a trigger
		if _, ok := n.realServers(k)[netip.AddrPortFrom(used.Addr, 8080)]; !ok {
			break
		}
	}
	if rss := n.realServers(k); len(rss) != 1 {
		t.Errorf("real servers after drain: %v", rss)
	}
}

// countingHandle and countingLinks record every write a Proxier makes.
type countingHandle struct {
	ipvs.Handle
	mu     sync.Mutex
	writes []string
}

func (c *countingHandle) note(s string) {
	c.mu.Lock()
	c.writes = append(c.writes, s)
	c.mu.Unlock()
}

func (c *countingHandle) AddVirtualServer(vs ipvs.VirtualServer) error {
	c.note("AddVirtualServer " + vs.Key.String())
	return c.Handle.AddVirtualServer(vs)
}

func (c *countingHandle) UpdateVirtualServer(vs ipvs.VirtualServer) error {
	c.note("UpdateVirtualServer " + vs.Key.String())
	return c.Handle.UpdateVirtualServer(vs)
}

func (c *countingHandle) DeleteVirtualServer(k ipvs.Key) error {
	c.note("DeleteVirtualServer " + k.String())
	return c.Handle.DeleteVirtualServer(k)
}

func (c *countingHandle) AddRealServer(k ipvs.Key, rs ipvs.RealServer) error {
	c.note("AddRealServer " + k.String() + " " + rs.Addr.String())
	return c.Handle.AddRealServer(k, rs)
}

func (c *countingHandle) UpdateRealServer(k ipvs.Key, rs ipvs.RealServer) error {
	c.note("UpdateRealServer " + k.String() + " " + rs.Addr.String())
	return c.Handle.UpdateRealServer(k, rs)
}

func (c *countingHandle) DeleteRealServer(k ipvs.Key, a netip.AddrPort) error {
	c.note("DeleteRealServer " + k.String() + " " + a.String())
	return c.Handle.DeleteRealServer(k, a)
}

type countingLinks struct {
	ipvs.Links
	writes []string
}

func (c *countingLinks) AddAddress(a netip.Addr) error {
	c.writes = append(c.writes, "AddAddress "+a.String())
	return c.Links.AddAddress(a)
}

func (c *countingLinks) DeleteAddress(a netip.Addr) error {
	c.writes = append(c.writes, "DeleteAddress "+a.String())
	return c.Links.DeleteAddress(a)
}

func (c *countingLinks) DeleteLink() error {
	c.writes = append(c.writes, "DeleteLink")
	return c.Links.DeleteLink()
}

// TestVMProxierRestartKeepsConnections starts a second Proxier (an agent
// restart) while a TCP connection is open: its first sync changes nothing
// and the connection keeps working.
func TestVMProxierRestartKeepsConnections(t *testing.T) {
	guest.Required(t)
	topo := newTopology(t, 2)
	topo.startEcho(t, "tcp", 8080)
	n := newRealNode(t, ipvs.Config{})
	st := serviceState("web", dataplane.TCP, 80, 30080, "", topo.Backends...)
	// A second Service with ClientIP affinity and another scheduler: the
	// persistence flag and timeout must read back exactly as written, or
	// every restart would rewrite them.
	sticky := addService(st, "sticky", dataplane.TCP, 81, 0, "wrr", topo.Backends...)
	st.Services[sticky].SessionAffinityTimeout = 3 * time.Hour
	n.sync(st, fullSync)
	if vs, err := n.h.GetVirtualServer(ipvs.Key{IP: clusterIP, Protocol: dataplane.TCP, Port: 81}); err != nil || vs.Flags != ipvs.FlagPersistent || vs.Timeout != 10800 {
		t.Errorf("persistent virtual server reads back as %+v, %v", vs, err)
	}
	conn, err := netnstest.Dial(topo.Client, "tcp", net.JoinHostPort(clusterIP.String(), "80"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	first, err := netnstest.Exchange(conn, "before", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}

	h := &countingHandle{Handle: n.h}
	l := &countingLinks{Links: n.links}
	restarted := n.newProxier(h, l)
	if err := restarted.Sync(context.Background(), st, dataplane.Changes{}); err != nil {
		t.Fatal(err)
	}
	if len(h.writes)+len(l.writes) != 0 {
		t.Errorf("restarted proxier changed the kernel: %v %v", h.writes, l.writes)
	}
	again, err := netnstest.Exchange(conn, "after", 5*time.Second)
	if err != nil || again != first {
		t.Errorf("connection after restart: %q %v, want %q", again, err, first)
	}
	n.p = restarted // its Cleanup runs at the end
}

// TestVMProxierRepairsDrift deletes, behind the agent's back and with
// netlink directly, a virtual server, a real server and the service
// address; the next full sync restores them and traffic flows again.
func TestVMProxierRepairsDrift(t *testing.T) {
	guest.Required(t)
	topo := newTopology(t, 2)
	topo.startEcho(t, "tcp", 8080)
	n := newRealNode(t, ipvs.Config{})
	st := serviceState("web", dataplane.TCP, 80, 0, "", topo.Backends...)
	n.sync(st, fullSync)

	raw, err := libipvs.New("")
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	svc := &libipvs.Service{Address: clusterIP.AsSlice(), Protocol: unix.IPPROTO_TCP, Port: 80, AddressFamily: unix.AF_INET}
	if err := raw.DelService(svc); err != nil {
		t.Fatalf("delete behind the agent's back: %v", err)
	}
	link, err := n.nl.LinkByName(ipvs.DefaultLinkName)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.nl.AddrDel(link, &netlink.Addr{IPNet: &net.IPNet{IP: clusterIP.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
		t.Fatal(err)
	}
	if _, err := netnstest.Request(topo.Client, "tcp", net.JoinHostPort(clusterIP.String(), "80"), "x", 2*time.Second); err == nil {
		t.Fatal("service still answers after deleting it")
	}

	n.sync(st, fullSync)
	k := ipvs.Key{IP: clusterIP, Protocol: dataplane.TCP, Port: 80}
	if rss := n.realServers(k); len(rss) != 2 {
		t.Fatalf("virtual server not restored: %v", rss)
	}
	expectEven(t, "after repair", requestIDs(t, topo.Client, "tcp", net.JoinHostPort(clusterIP.String(), "80"), 4, topo.ClientAddr), 2)

	// A deleted real server comes back too.
	if err := raw.DelDestination(svc, &libipvs.Destination{Address: topo.Backends[0].Addr.AsSlice(), Port: 8080, AddressFamily: unix.AF_INET}); err != nil {
		t.Fatal(err)
	}
	n.sync(st, fullSync)
	if rss := n.realServers(k); len(rss) != 2 {
		t.Errorf("real server not restored: %v", rss)
	}
}

// TestVMProxierLeavesForeignVirtualServers: virtual servers another program
// made, one on a node address and one on an address switchyard never had,
// survive Sync (even when switchyard wants the same NodePort key) and
// Cleanup.
func TestVMProxierLeavesForeignVirtualServers(t *testing.T) {
	guest.Required(t)
	topo := newTopology(t, 2)
	topo.startEcho(t, "tcp", 8080)
	// The node first, so its cleanup (Cleanup and the leftovers check) runs
	// after the foreign virtual servers are gone.
	n := newRealNode(t, ipvs.Config{})
	raw, err := libipvs.New("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(raw.Close)
	var foreign []*libipvs.Service
	for _, f := range []struct {
		ip   netip.Addr
		port uint16
	}{{nodeAddr, 9999}, {netip.MustParseAddr("172.16.0.1"), 80}, {nodeAddr, 30081}} {
		s := &libipvs.Service{Address: f.ip.AsSlice(), Protocol: unix.IPPROTO_TCP, Port: f.port, SchedName: "wlc", AddressFamily: unix.AF_INET, Netmask: 0xffffffff}
		if err := raw.NewService(s); err != nil {
			t.Fatal(err)
		}
		if err := raw.NewDestination(s, &libipvs.Destination{Address: topo.Backends[1].Addr.AsSlice(), Port: 8080, Weight: 7, AddressFamily: unix.AF_INET}); err != nil {
			t.Fatal(err)
		}
		foreign = append(foreign, s)
		n.foreign[ipvs.Key{IP: f.ip, Protocol: dataplane.TCP, Port: f.port}] = true
	}
	t.Cleanup(func() {
		for _, s := range foreign {
			if err := raw.DelService(s); err != nil {
				t.Errorf("delete foreign virtual server: %v", err)
			}
		}
	})
	checkForeign := func(when string) {
		t.Helper()
		for _, s := range foreign {
			got, err := raw.GetService(s)
			if err != nil {
				t.Errorf("%s: foreign %s:%d gone: %v", when, net.IP(s.Address), s.Port, err)
				continue
			}
			dests, err := raw.GetDestinations(got)
			if got.SchedName != "wlc" || err != nil || len(dests) != 1 || dests[0].Weight != 7 {
				t.Errorf("%s: foreign %s:%d changed: sched %s dests %+v %v", when, net.IP(s.Address), s.Port, got.SchedName, dests, err)
			}
		}
	}

	st := serviceState("web", dataplane.TCP, 80, 30080, "", topo.Backends[0])
	addService(st, "clash", dataplane.TCP, 81, 30081, "", topo.Backends[0]) // wants the foreign NodePort key
	n.sync(st, fullSync)
	n.sync(st, fullSync)
	checkForeign("after Sync")
	n.sync(dataplane.NewState(), fullSync)
	checkForeign("after removing every Service")
	n.sync(st, fullSync)
	if err := n.p.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	checkForeign("after Cleanup")
	n.expectNoSwitchyardObjects()
}

// TestVMProxierCleanupFreshProcess runs Cleanup from a Proxier that never
// synced, as `switchyard --cleanup` would.
func TestVMProxierCleanupFreshProcess(t *testing.T) {
	guest.Required(t)
	topo := newTopology(t, 2)
	n := newRealNode(t, ipvs.Config{})
	n.sync(serviceState("web", dataplane.TCP, 80, 30080, "", topo.Backends...), fullSync)
	fresh := n.newProxier(n.h, n.links)
	if err := fresh.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	n.expectNoSwitchyardObjects()
	for k := range n.virtualServers() {
		t.Errorf("virtual server %s left", k)
	}
}

// TestVMProxierDualStack gives a Service an IPv4 and an IPv6 ClusterIP with
// backends of both families; each family's virtual server gets only its own
// family's backends and answers from the node.
func TestVMProxierDualStack(t *testing.T) {
	guest.Required(t)
	topo := newTopology(t, 2)
	topo.startEcho(t, "tcp", 8080)
	var v6backends []netip.Addr
	for i, be := range topo.Backends {
		gw := netip.MustParsePrefix(fmt.Sprintf("fd00:100:%d::1/64", i))
		addr := netip.MustParsePrefix(fmt.Sprintf("fd00:100:%d::2/64", i))
		netnstest.AddAddr(t, nil, fmt.Sprintf("sy-b%d", i), gw)
		netnstest.AddAddr(t, be.NS, "eth0", addr)
		netnstest.AddRoute(t, be.NS, netip.MustParsePrefix("::/0"), gw.Addr())
		netnstest.StartEchoServer(t, be.NS, "tcp", netip.AddrPortFrom(addr.Addr(), 8080).String(), be.ID)
		v6backends = append(v6backends, addr.Addr())
	}
	n := newRealNode(t, ipvs.Config{})
	st := serviceState("ds", dataplane.TCP, 80, 0, "", topo.Backends...)
	spn := dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: "default", Name: "ds"}, Protocol: dataplane.TCP}
	vip6 := netip.MustParseAddr("fd00:96::10")
	st.Services[spn].ClusterIPs = []netip.Addr{clusterIP, vip6}
	for _, a := range v6backends {
		st.Endpoints[spn] = append(st.Endpoints[spn], dataplane.Endpoint{Addr: netip.AddrPortFrom(a, 8080), Ready: true, Serving: true})
	}
	slices.SortFunc(st.Endpoints[spn], dataplane.CompareEndpoints)
	n.sync(st, fullSync)

	rss := n.realServers(ipvs.Key{IP: vip6, Protocol: dataplane.TCP, Port: 80})
	if len(rss) != 2 {
		t.Fatalf("IPv6 virtual server has %v, want the 2 IPv6 backends", rss)
	}
	for a := range rss {
		if !a.Addr().Is6() {
			t.Errorf("IPv4 backend %s on the IPv6 virtual server", a)
		}
	}
	// IPv6 needs a moment the test setup does not control: the kernel
	// installs the local route of an address on the (down) dummy link from
	// its address-configuration work queue (ENETUNREACH until then), and
	// neighbour discovery towards the backends waits for the veths'
	// automatic link-local addresses to finish DAD (~1-2 s; a connect
	// times out until then). Wait for both, bounded, before counting.
	// Round robin alternates backends: two successes in a row reached both.
	for deadline, ok := time.Now().Add(10*time.Second), 0; ok < 2; time.Sleep(100 * time.Millisecond) {
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(vip6, 80).String(), time.Second)
		if err == nil {
			c.Close()
			ok++
			continue
		}
		ok = 0
		if time.Now().After(deadline) {
			t.Fatalf("IPv6 VIP not reachable from the node: %v", err)
		}
	}
	expectEven(t, "IPv6 from the node", requestIDs(t, nil, "tcp", netip.AddrPortFrom(vip6, 80).String(), 4, netip.Addr{}), 2)
	expectEven(t, "IPv4 from the node", requestIDs(t, nil, "tcp", net.JoinHostPort(clusterIP.String(), "80"), 4, netip.Addr{}), 2)
}
