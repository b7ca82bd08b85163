package ipvsvm

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/iptables"
	"github.com/switchyard/switchyard/ipvs"
	"github.com/switchyard/switchyard/test/netnstest"
	"github.com/switchyard/switchyard/test/vm"
	"github.com/switchyard/switchyard/test/vm/guest"
)

// The dual-stack SNAT part of the IPVS dataplane, as the agent builds it on
// a node with IPv6: an IPv4 and an IPv6 iptables.Proxier (sharing the
// ipsets, each with its own iptables or ip6tables) followed by the
// ipvs.Proxier, with real IPv6 traffic. The topology gets ULA addresses
// next to its IPv4 ones (netnstest adds IPv6 addresses with IFA_F_NODAD, so
// they are usable at once):
//
//	client fd00:99::2 --- fd00:99::1 [node] fd00:100:N::1 --- fd00:100:N::2 backend N
//
// The IPv6 cluster CIDR fd00:100::/32 holds the backends, not the client.

var (
	clusterIP6   = netip.MustParseAddr("fd00:96::10")
	nodeAddr6    = netip.MustParseAddr("fd00:99::1")
	clientAddr6  = netip.MustParseAddr("fd00:99::2")
	podCIDR6     = netip.MustParsePrefix("fd00:100::/32")
	sysctlIPv6Fw = "net/ipv6/conf/all/forwarding"
)

// backendAddr6 and backendGW6 are backend i's IPv6 address and the node's
// address on its link.
func backendAddr6(i int) netip.Addr { return netip.MustParseAddr(fmt.Sprintf("fd00:100:%d::2", i)) }
func backendGW6(i int) netip.Addr   { return netip.MustParseAddr(fmt.Sprintf("fd00:100:%d::1", i)) }

// addIPv6 gives the topology its IPv6 addresses, routes and echo servers
// and turns on IPv6 forwarding (replies from backends to an outside client
// are forwarded through the node, where IPVS de-NATs them), restoring it in
// t.Cleanup.
func addIPv6(t *testing.T, topo *topology) {
	t.Helper()
	if v6 := iptables.ProbeIPv6("/proc/sys"); !v6.Usable() {
		t.Fatalf("the VM has no usable IPv6: %s", v6.Reason)
	}
	sysctl := ipvs.ProcSysctl{}
	old, err := sysctl.Get(sysctlIPv6Fw)
	if err != nil {
		t.Fatal(err)
	}
	if err := sysctl.Set(sysctlIPv6Fw, "1"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := sysctl.Set(sysctlIPv6Fw, old); err != nil {
			t.Errorf("restore %s: %v", sysctlIPv6Fw, err)
		}
	})
	netnstest.AddAddr(t, nil, "sy-c0", netip.PrefixFrom(nodeAddr6, 64))
	netnstest.AddAddr(t, topo.Client, "eth0", netip.PrefixFrom(clientAddr6, 64))
	netnstest.AddRoute(t, topo.Client, netip.MustParsePrefix("::/0"), nodeAddr6)
	for i, be := range topo.Backends {
		netnstest.AddAddr(t, nil, fmt.Sprintf("sy-b%d", i), netip.PrefixFrom(backendGW6(i), 64))
		netnstest.AddAddr(t, be.NS, "eth0", netip.PrefixFrom(backendAddr6(i), 64))
		netnstest.AddRoute(t, be.NS, netip.MustParsePrefix("::/0"), backendGW6(i))
		netnstest.StartEchoServer(t, be.NS, "tcp", netip.AddrPortFrom(backendAddr6(i), 8080).String(), be.ID)
	}
}

// dualStackSNATNode is the agent's IPVS dataplane on a dual-stack node.
type dualStackSNATNode struct {
	*realNode
	snat4, snat6 *iptables.Proxier
	sets         *iptables.NetlinkIPSet
	chain        dataplane.Chain
}

func newDualStackSNATNode(t *testing.T) *dualStackSNATNode {
	t.Helper()
	n := &dualStackSNATNode{realNode: newRealNode(t, ipvs.Config{})}
	var err error
	if n.sets, err = iptables.NewNetlinkIPSet(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.sets.Close)
	cidrs := []netip.Prefix{podCIDR, podCIDR6} // each Proxier takes its family's
	for _, fam := range []iptables.Family{iptables.FamilyINet, iptables.FamilyINet6} {
		tables, err := iptables.NewTables(iptables.WithFamily(fam))
		if err != nil {
			t.Fatal(err)
		}
		p, err := iptables.NewProxier(iptables.Config{Family: fam, ClusterCIDRs: cidrs}, n.sets, tables, iptables.NewProcSysctl())
		if err != nil {
			t.Fatal(err)
		}
		if fam == iptables.FamilyINet {
			n.snat4 = p
		} else {
			n.snat6 = p
		}
	}
	n.chain = dataplane.Chain{n.snat4, n.snat6, n.p}
	t.Cleanup(func() {
		// Runs before realNode's IPVS cleanup (t.Cleanup is LIFO).
		for _, p := range []*iptables.Proxier{n.snat6, n.snat4} {
			if err := p.Cleanup(context.Background()); err != nil {
				t.Errorf("%s Cleanup: %v", p.Name(), err)
			}
		}
	})
	return n
}

func (n *dualStackSNATNode) sync(st *dataplane.State, ch dataplane.Changes) {
	n.t.Helper()
	if err := n.chain.Sync(context.Background(), st, ch); err != nil {
		n.t.Fatalf("Sync: %v", err)
	}
}

// dualStackService is Service "edge": ClusterIPs 10.96.0.10 and
// fd00:96::10 port 80, NodePort 30080, both backends in both families.
func dualStackService(topo *topology) *dataplane.State {
	st := dataplane.NewState()
	st.NodeName = vmNode
	spn := addService(st, "edge", dataplane.TCP, 80, 30080, "", topo.Backends...)
	st.Services[spn].ClusterIPs = []netip.Addr{clusterIP, clusterIP6}
	for i := range topo.Backends {
		st.Endpoints[spn] = append(st.Endpoints[spn], dataplane.Endpoint{Addr: netip.AddrPortFrom(backendAddr6(i), 8080), Ready: true, Serving: true})
	}
	slices.SortFunc(st.Endpoints[spn], dataplane.CompareEndpoints)
	return st
}

// runTool runs a tool in the VM and returns its output.
func runTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestVMIPv6SNAT sends IPv6 traffic through IPVS with the dual-stack SNAT
// chain: an IPv6 client outside the cluster CIDR is masqueraded to the
// node's IPv6 address (NodePort and ClusterIP), a pod inside the IPv6
// cluster CIDR keeps its address, and a pod reaching itself through the
// Service (hairpin) is masqueraded; IPv4 works alongside as before; Cleanup
// of both families leaves no ipset, iptables or ip6tables object of ours.
func TestVMIPv6SNAT(t *testing.T) {
	guest.Required(t)
	for _, bin := range []string{"ip6tables", "ipset"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s not in the VM: %v", bin, err)
		}
	}
	topo := newTopology(t, 2)
	topo.startEcho(t, "tcp", 8080)
	addIPv6(t, topo)
	be0, be1 := topo.Backends[0], topo.Backends[1]
	n := newDualStackSNATNode(t)
	st := dualStackService(topo)

	// Control, IPVS alone: IPv6 NodePort traffic keeps the client address
	// (the backends route back through the node, so IPVS needs no SNAT).
	if err := n.p.Sync(context.Background(), st, fullSync); err != nil {
		t.Fatal(err)
	}
	nodePort6 := netip.AddrPortFrom(nodeAddr6, 30080).String()
	expectSources(t, "IPv6 NodePort without the SNAT part", sources(t, topo.Client, nodePort6, 4),
		map[string][]netip.Addr{be0.ID: {clientAddr6}, be1.ID: {clientAddr6}})

	n.sync(st, fullSync)
	if _, ok := n.virtualServers()[ipvs.Key{IP: nodeAddr6, Protocol: dataplane.TCP, Port: 30080}]; !ok {
		t.Fatalf("no IPv6 NodePort virtual server on %s; have %v", nodeAddr6, n.virtualServers())
	}
	// What the IPv6 Proxier programmed: inet6 sets, ip6tables chains with
	// the same names as the IPv4 ones.
	set, err := n.sets.Get("SWITCHYARD6-CLUSTER-IP")
	if err != nil || set.Family != iptables.FamilyINet6 || len(set.Members) != 1 || set.Members[0].String() != "fd00:96::10,tcp:80" {
		t.Errorf("SWITCHYARD6-CLUSTER-IP: %+v, %v", set, err)
	}
	if out := runTool(t, "ip6tables", "-t", "nat", "-S", "SWITCHYARD-SERVICES"); !strings.Contains(out, "! -s fd00:100::/32") ||
		!strings.Contains(out, "--match-set SWITCHYARD6-CLUSTER-IP dst,dst") {
		t.Errorf("ip6tables SWITCHYARD-SERVICES:\n%s", out)
	}
	if out := runTool(t, "iptables", "-t", "nat", "-S", "SWITCHYARD-SERVICES"); strings.Contains(out, "SWITCHYARD6-") || strings.Contains(out, "fd00:") {
		t.Errorf("IPv6 in iptables SWITCHYARD-SERVICES:\n%s", out)
	}

	vip6 := netip.AddrPortFrom(clusterIP6, 80).String()
	gw0, gw1 := backendGW6(0), backendGW6(1)
	t.Run("NodePort from outside is masqueraded", func(t *testing.T) {
		expectSources(t, "IPv6 NodePort", sources(t, topo.Client, nodePort6, 4),
			map[string][]netip.Addr{be0.ID: {gw0}, be1.ID: {gw1}})
	})
	t.Run("ClusterIP from outside the cluster CIDR is masqueraded", func(t *testing.T) {
		expectSources(t, "IPv6 ClusterIP from the client", sources(t, topo.Client, vip6, 4),
			map[string][]netip.Addr{be0.ID: {gw0}, be1.ID: {gw1}})
	})
	t.Run("ClusterIP from the cluster CIDR keeps its source, hairpin is masqueraded", func(t *testing.T) {
		// From be1 (a pod): be0 sees be1's own address; be1, reaching itself,
		// sees the node's address on its link.
		expectSources(t, "IPv6 ClusterIP from a pod", sources(t, be1.NS, vip6, 4),
			map[string][]netip.Addr{be0.ID: {backendAddr6(1)}, be1.ID: {gw1}})
	})
	t.Run("IPv4 alongside", func(t *testing.T) {
		expectSources(t, "IPv4 NodePort", sources(t, topo.Client, netip.AddrPortFrom(nodeAddr, 30080).String(), 4),
			map[string][]netip.Addr{be0.ID: {netip.MustParseAddr("10.100.0.1")}, be1.ID: {netip.MustParseAddr("10.100.1.1")}})
		expectSources(t, "IPv4 ClusterIP from a pod", sources(t, be1.NS, "10.96.0.10:80", 4),
			map[string][]netip.Addr{be0.ID: {be1.Addr}, be1.ID: {netip.MustParseAddr("10.100.1.1")}})
	})

	t.Run("cleanup of both families", func(t *testing.T) {
		// Fresh Proxiers, as `switchyard --cleanup`.
		sets, err := iptables.NewNetlinkIPSet()
		if err != nil {
			t.Fatal(err)
		}
		defer sets.Close()
		for _, fam := range []iptables.Family{iptables.FamilyINet6, iptables.FamilyINet} {
			tables, err := iptables.NewTables(iptables.WithFamily(fam))
			if err != nil {
				t.Fatal(err)
			}
			p, err := iptables.NewProxier(iptables.Config{Family: fam}, sets, tables, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := p.Cleanup(context.Background()); err != nil {
				t.Fatalf("%s Cleanup: %v", p.Name(), err)
			}
		}
		names, err := sets.ListNames()
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range names {
			if strings.HasPrefix(name, "SWITCHYARD") {
				t.Errorf("set %s left after Cleanup", name)
			}
		}
		for _, bin := range []string{"iptables-save", "ip6tables-save"} {
			if out := runTool(t, bin); strings.Contains(out, "SWITCHYARD") || strings.Contains(out, "switchyard") {
				t.Errorf("%s after Cleanup:\n%s", bin, out)
			}
		}
		// IPVS alone again: the client's address is back.
		expectSources(t, "IPv6 NodePort after Cleanup", sources(t, topo.Client, nodePort6, 2),
			map[string][]netip.Addr{be0.ID: {clientAddr6}, be1.ID: {clientAddr6}})
	})

	t.Run("agent --cleanup covers both families", func(t *testing.T) {
		if _, err := os.Stat(vm.AgentPath); err != nil {
			t.Skipf("agent binary not in the VM (vmtest -agent=): %v", err)
		}
		n.sync(st, fullSync)
		if set, err := n.sets.Get("SWITCHYARD6-LOOP-BACK"); err != nil || len(set.Members) != 2 {
			t.Fatalf("IPv6 sets not back after a full sync: %+v %v", set, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, vm.AgentPath, "--cleanup", "--hostname-override", vmNode, "--state-dir", t.TempDir()).CombinedOutput()
		if err != nil || !regexp.MustCompile(`"Cleanup done" dataplane="iptables\+ip6tables\+`).Match(out) {
			t.Fatalf("switchyard --cleanup on a node with IPv6 (want iptables and ip6tables parts): %v\n%s", err, out)
		}
		names, err := n.sets.ListNames()
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range names {
			if strings.HasPrefix(name, "SWITCHYARD") {
				t.Errorf("set %s left after switchyard --cleanup", name)
			}
		}
		for _, bin := range []string{"iptables-save", "ip6tables-save"} {
			if out := runTool(t, bin); strings.Contains(out, "SWITCHYARD") || strings.Contains(out, "switchyard") {
				t.Errorf("%s after switchyard --cleanup:\n%s", bin, out)
			}
		}
	})
}
