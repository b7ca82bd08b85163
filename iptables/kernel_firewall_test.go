package iptables

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/test/netnstest"
)

// firewallTopology is a node with two client namespaces:
//
//	client A 192.168.77.2 --- 192.168.77.1 [node] 192.168.78.1 --- 192.168.78.2 client B
//
// There is no IPVS on this host. As IPVS binds service addresses on its
// dummy link, the node has the load balancer IP and the cluster IP on lo,
// and local echo servers stand in for the virtual servers: on the LB IP's
// Service ports (TCP and UDP 80), on another port of the LB IP that is no
// Service port (8081), on the cluster IP and on the NodePort. Packets to
// them take the path IPVS's would up to LOCAL_IN: nat PREROUTING, then
// filter INPUT (the firewall), where IPVS would take over. The node's own
// requests leave through mangle OUTPUT (where IPVS would take over at
// LOCAL_OUT, after the firewall) and come back through lo and INPUT.
type firewallTopology struct {
	node, clientA, clientB *netnstest.NS
	sets                   *NetlinkIPSet
	tables                 *GoIPTables
}

const (
	fwNodeA   = "192.168.77.1"
	fwClientA = "192.168.77.2"
	fwNodeB   = "192.168.78.1"
	fwClientB = "192.168.78.2"
	fwLBIP    = "198.51.100.10"
	fwCluster = "10.96.0.10"
)

func newFirewallTopology(t *testing.T, binary string) *firewallTopology {
	t.Helper()
	topo := &firewallTopology{node: netnstest.New(t, "sy-fw-node"), clientA: netnstest.New(t, "sy-fw-a"), clientB: netnstest.New(t, "sy-fw-b")}
	p := netip.MustParsePrefix
	netnstest.Veth(t, topo.node, topo.clientA, "cla0", "eth0", p(fwNodeA+"/24"), p(fwClientA+"/24"))
	netnstest.Veth(t, topo.node, topo.clientB, "clb0", "eth0", p(fwNodeB+"/24"), p(fwClientB+"/24"))
	netnstest.AddRoute(t, topo.clientA, p("0.0.0.0/0"), netip.MustParseAddr(fwNodeA))
	netnstest.AddRoute(t, topo.clientB, p("0.0.0.0/0"), netip.MustParseAddr(fwNodeB))
	netnstest.AddAddr(t, topo.node, "lo", p(fwLBIP+"/32"))
	netnstest.AddAddr(t, topo.node, "lo", p(fwCluster+"/32"))
	for _, s := range []struct{ proto, addr, id string }{
		{"tcp", fwLBIP + ":80", "lb"},
		{"udp", fwLBIP + ":80", "lb-udp"},
		{"tcp", fwLBIP + ":8081", "other-port"},
		{"tcp", fwCluster + ":80", "cluster-ip"},
		{"tcp", fmt.Sprintf("0.0.0.0:%d", nodePort), "node-port"},
	} {
		netnstest.StartEchoServer(t, topo.node, s.proto, s.addr, s.id)
	}
	topo.sets, topo.tables, _ = kernelClients(t, topo.node, binary)
	return topo
}

// firewallState is a LoadBalancer Service on TCP and UDP port 80 with
// ranges (none: no firewall) and the node's address on client A's link as
// its node IP.
func firewallState(t *testing.T, ranges ...string) *dataplane.State {
	t.Helper()
	var svcs []svc
	for _, proto := range []dataplane.Protocol{dataplane.TCP, dataplane.UDP} {
		svcs = append(svcs, svc{ns: "default", name: "lb", port: "p-" + string(proto), proto: proto, svcPort: 80, nodePort: nodePort,
			clusterIPs: []string{fwCluster}, lbIPs: []string{fwLBIP}, sourceRanges: ranges, endpoints: []string{"10.244.1.2:8080"}})
	}
	st := newState(t, svcs...)
	st.NodeIPs = []netip.Addr{netip.MustParseAddr(fwNodeA)}
	return st
}

// TestKernelSourceRanges sends real packets from two clients and from the
// node itself to a load balancer IP firewalled by the Proxier, for each
// iptables backend: sources inside the ranges get their answer (and the
// server sees their own address), the LB IP itself as source (the node's
// own requests) passes exactly when a node IP is inside a range, every
// other source gets no answer; the cluster IP, the NodePort and other
// ports of the LB IP are never filtered.
func TestKernelSourceRanges(t *testing.T) {
	requireKernel(t)
	for _, bin := range backends(t) {
		t.Run(bin, func(t *testing.T) { testKernelSourceRanges(t, bin) })
	}
}

func testKernelSourceRanges(t *testing.T, binary string) {
	topo := newFirewallTopology(t, binary)
	ctx := context.Background()
	cfg := Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}}
	p, err := NewProxier(cfg, topo.sets, topo.tables, nil)
	if err != nil {
		t.Fatal(err)
	}
	lb := fwLBIP + ":80"
	// answers checks that a request from ns reaches the echo server id and
	// that the server saw src as the source; noAnswer that it gets none.
	answers := func(what string, ns *netnstest.NS, proto, addr, id, src string) {
		t.Helper()
		reply, err := netnstest.Request(ns, proto, addr, "hello", 3*time.Second)
		if err != nil {
			t.Errorf("%s: %s %s: %v, want an answer from %s", what, proto, addr, err, id)
			return
		}
		gotID, remote, err := netnstest.ReplyID(reply)
		ap, perr := netip.ParseAddrPort(remote)
		if err != nil || perr != nil || gotID != id || ap.Addr().String() != src {
			t.Errorf("%s: %s %s answered %q, want %s seeing source %s", what, proto, addr, reply, id, src)
		}
	}
	noAnswer := func(what string, ns *netnstest.NS, proto, addr string) {
		t.Helper()
		if reply, err := netnstest.Request(ns, proto, addr, "hello", time.Second); err == nil {
			t.Errorf("%s: %s %s answered %q, want no answer (dropped)", what, proto, addr, reply)
		}
	}
	// Never filtered, whatever the ranges.
	unfiltered := func(what string) {
		t.Helper()
		answers(what+", cluster IP", topo.clientB, "tcp", fwCluster+":80", "cluster-ip", fwClientB)
		answers(what+", NodePort", topo.clientB, "tcp", fmt.Sprintf("%s:%d", fwNodeB, nodePort), "node-port", fwClientB)
		answers(what+", LB IP on a port that is no Service port", topo.clientB, "tcp", fwLBIP+":8081", "other-port", fwClientB)
	}

	for _, tc := range []struct {
		name   string
		ranges []string
		// Which sources pass: client A, client B, the node (its requests
		// to the LB IP carry the LB IP as source).
		a, b, node bool
	}{
		{name: "no ranges", a: true, b: true, node: true},
		{name: "client A's link, with the node IP", ranges: []string{"192.168.77.0/24"}, a: true, node: true},
		{name: "client B only", ranges: []string{fwClientB + "/32", "203.0.113.0/24"}, b: true},
		{name: "everything", ranges: []string{"0.0.0.0/0"}, a: true, b: true, node: true},
		{name: "nobody here", ranges: []string{"203.0.113.0/24"}},
		{name: "no ranges again", a: true, b: true, node: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := firewallState(t, tc.ranges...)
			// Partial syncs, as the agent does on a Service change.
			if err := p.Sync(ctx, st, dataplane.Changes{Services: map[dataplane.ServiceName]struct{}{{Namespace: "default", Name: "lb"}: {}}}); err != nil {
				t.Fatalf("sync: %v", err)
			}
			want := Desired(st, p.cfg)
			if got := ownedDump(t, topo.sets, topo.tables, want); got != want.Dump() {
				t.Fatalf("kernel differs from desired:\n%s", lineDiff(want.Dump(), got))
			}
			for _, c := range []struct {
				who  string
				ns   *netnstest.NS
				src  string
				pass bool
			}{{"client A", topo.clientA, fwClientA, tc.a}, {"client B", topo.clientB, fwClientB, tc.b}, {"the node", topo.node, fwLBIP, tc.node}} {
				if c.pass {
					answers(c.who, c.ns, "tcp", lb, "lb", c.src)
					answers(c.who, c.ns, "udp", lb, "lb-udp", c.src)
				} else {
					noAnswer(c.who, c.ns, "tcp", lb)
					noAnswer(c.who, c.ns, "udp", lb)
				}
			}
			unfiltered(tc.name)
		})
	}

	// Each hook alone: IPVS takes the node's own connections at
	// LOCAL_OUT, before INPUT, so the mangle OUTPUT hook must drop them
	// by itself; filter INPUT alone drops the clients'.
	t.Run("each hook alone", func(t *testing.T) {
		st := firewallState(t, fwClientB+"/32")
		if err := p.Sync(ctx, st, dataplane.Changes{Full: true}); err != nil {
			t.Fatal(err)
		}
		deleteHook := func(table, chain string) {
			t.Helper()
			rules, err := topo.tables.ListRules(table, chain)
			// Our firewall hook, after nothing but our other hooks (in
			// filter INPUT, the reset of marked connections).
			i := slices.IndexFunc(rules, func(r Rule) bool { return r.Target() == chainFirewall })
			if err != nil || i < 0 || !isOurHook(rules[i]) || slices.ContainsFunc(rules[:i], func(r Rule) bool { return !isOurHook(r) }) {
				t.Fatalf("%s %s: %v %v, want our firewall hook first after our other hooks", table, chain, rules, err)
			}
			if err := topo.tables.DeleteAt(table, chain, i+1); err != nil {
				t.Fatal(err)
			}
		}
		deleteHook(TableFilter, builtinInput)
		noAnswer("the node, mangle OUTPUT hook only", topo.node, "tcp", lb)
		answers("client A without the INPUT hook", topo.clientA, "tcp", lb, "lb", fwClientA)
		if err := p.Sync(ctx, st, dataplane.Changes{}); err != nil {
			t.Fatal(err)
		}
		deleteHook(TableMangle, builtinOutput)
		noAnswer("client A, filter INPUT hook only", topo.clientA, "tcp", lb)
		answers("client B, filter INPUT hook only", topo.clientB, "tcp", lb, "lb", fwClientB)
		if err := p.Sync(ctx, st, dataplane.Changes{}); err != nil {
			t.Fatal(err)
		}
		want := Desired(st, p.cfg)
		if got := ownedDump(t, topo.sets, topo.tables, want); got != want.Dump() {
			t.Errorf("hooks not repaired:\n%s", lineDiff(want.Dump(), got))
		}
		noAnswer("the node, both hooks back", topo.node, "tcp", lb)
		noAnswer("client A, both hooks back", topo.clientA, "tcp", lb)
	})

	t.Run("cleanup", func(t *testing.T) {
		if err := p.Cleanup(ctx); err != nil {
			t.Fatal(err)
		}
		assertNoOwnedObjects(t, topo.sets, topo.tables)
		answers("client A after Cleanup", topo.clientA, "tcp", lb, "lb", fwClientA)
		answers("the node after Cleanup", topo.node, "tcp", lb, "lb", fwLBIP)
	})
}
