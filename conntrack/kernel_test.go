//go:build linux

package conntrack

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/sysctl"
	"github.com/switchyard/switchyard/test/netnstest"
)

// dnatRule is one "udp daddr:dport -> endpoint" stand-in for a Service
// frontend (tcp when tcp is set), programmed directly with google/nftables.
type dnatRule struct {
	frontend, endpoint netip.AddrPort
	tcp                bool
}

// installDNAT adds "table ip ctt { chain pre { type nat hook prerouting
// priority dstnat; ... } }" in ns with one DNAT rule per entry. The table
// goes away with the namespace.
func installDNAT(t *testing.T, ns *netnstest.NS, rules []dnatRule) {
	t.Helper()
	conn, err := nftables.New(nftables.WithNetNSFd(int(ns.NsHandle())))
	if err != nil {
		t.Fatalf("nftables in %s: %v", ns.Name(), err)
	}
	table := conn.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: "ctt"})
	chain := conn.AddChain(&nftables.Chain{
		Name: "pre", Table: table, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest,
	})
	for _, r := range rules {
		proto := byte(unix.IPPROTO_UDP)
		if r.tcp {
			proto = unix.IPPROTO_TCP
		}
		conn.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: r.frontend.Addr().AsSlice()},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(r.frontend.Port())},
			&expr.Immediate{Register: 1, Data: r.endpoint.Addr().AsSlice()},
			&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(r.endpoint.Port())},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
		}})
	}
	if err := conn.Flush(); err != nil {
		t.Fatalf("nftables flush in %s: %v", ns.Name(), err)
	}
}

// TestNetlinkClearsExactlyStaleFlows makes real conntrack entries in a node
// namespace (a client namespace sends UDP through DNAT rules standing in
// for Service frontends), computes the filters for a Service change with
// StaleFlows and shows ClearFlows deletes exactly the flows the filters
// match, through the same namespace-bound Netlink used to list them.
func TestNetlinkClearsExactlyStaleFlows(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and reads their conntrack tables")
	}
	node, cli := netnstest.New(t, "ct-node"), netnstest.New(t, "ct-cli")
	netnstest.Veth(t, node, cli, "eth0", "eth0",
		netip.MustParsePrefix("10.0.0.1/24"), netip.MustParsePrefix("10.0.0.2/24"))
	netnstest.AddAddr(t, node, "lo", netip.MustParsePrefix("10.244.0.1/32"))
	netnstest.AddAddr(t, node, "lo", netip.MustParsePrefix("10.244.0.2/32"))
	netnstest.AddRoute(t, cli, netip.MustParsePrefix("10.96.0.0/16"), netip.MustParseAddr("10.0.0.1"))
	netnstest.AddRoute(t, cli, netip.MustParsePrefix("10.244.0.0/16"), netip.MustParseAddr("10.0.0.1"))
	netnstest.StartEchoServer(t, node, "udp", "10.244.0.1:8080", "ep1")
	netnstest.StartEchoServer(t, node, "udp", "10.244.0.2:8080", "ep2")

	ap := netip.MustParseAddrPort
	var (
		ep1, ep2 = ap("10.244.0.1:8080"), ap("10.244.0.2:8080")
		nodeIP   = netip.MustParseAddr("10.0.0.1")
	)
	// Service a: 10.96.0.10:53 + NodePort 30053 -> ep1 (ep1 is replaced)
	// Service b: 10.96.0.11:53 + NodePort 30054 -> ep2 (b is deleted)
	// Service c: 10.96.0.12:53 -> ep2 (unchanged)
	installDNAT(t, node, []dnatRule{
		{frontend: ap("10.96.0.10:53"), endpoint: ep1}, {frontend: ap("10.0.0.1:30053"), endpoint: ep1},
		{frontend: ap("10.96.0.11:53"), endpoint: ep2}, {frontend: ap("10.0.0.1:30054"), endpoint: ep2},
		{frontend: ap("10.96.0.12:53"), endpoint: ep2},
	})

	// One request per socket: each makes its own entry (new source port).
	for _, req := range []struct{ addr, id string }{
		{"10.96.0.10:53", "ep1"}, {"10.96.0.10:53", "ep1"}, {"10.0.0.1:30053", "ep1"},
		{"10.96.0.11:53", "ep2"}, {"10.0.0.1:30054", "ep2"},
		{"10.96.0.12:53", "ep2"},
		{"10.244.0.1:8080", "ep1"}, // direct, not NATed: same reply source as a's flows
	} {
		reply, err := netnstest.Request(cli, "udp", req.addr, "hello", 2*time.Second)
		if err != nil {
			t.Fatalf("request %s: %v", req.addr, err)
		}
		if id, _, err := netnstest.ReplyID(reply); err != nil || id != req.id {
			t.Fatalf("request %s answered by %q (%v), want %s", req.addr, reply, err, req.id)
		}
	}

	ct, err := NewNetlink(node.NsHandle())
	if err != nil {
		t.Fatal(err)
	}
	defer ct.Close()
	before := udpFlowsFrom(t, ct, "10.0.0.2")
	if len(before) != 7 {
		t.Fatalf("want 7 UDP flows from the client in %s, got %d:\n%s", node.Name(), len(before), flowLines(before))
	}
	t.Logf("conntrack in %s before clearing:\n%s", node.Name(), flowLines(before))

	udpSvc := func(name, clusterIP string, np uint16) *dataplane.ServicePort {
		return port(name, dataplane.UDP, clusterIP, nodePort(np))
	}
	prev := state(
		svc{udpSvc("a", "10.96.0.10", 30053), []dataplane.Endpoint{ep("10.244.0.1:8080")}},
		svc{udpSvc("b", "10.96.0.11", 30054), []dataplane.Endpoint{ep("10.244.0.2:8080")}},
		svc{udpSvc("c", "10.96.0.12", 0), []dataplane.Endpoint{ep("10.244.0.2:8080")}},
	)
	cur := state(
		svc{udpSvc("a", "10.96.0.10", 30053), []dataplane.Endpoint{ep("10.244.0.3:8080")}},
		svc{udpSvc("c", "10.96.0.12", 0), []dataplane.Endpoint{ep("10.244.0.2:8080")}},
	)
	filters := StaleFlows(prev, cur, []netip.Addr{nodeIP})
	var want []Filter
	for _, s := range []string{
		"udp 10.0.0.1 30053 10.244.0.1", "udp 10.0.0.1 30054",
		"udp 10.96.0.10 53 10.244.0.1", "udp 10.96.0.11 53",
	} {
		want = append(want, flt(t, s))
	}
	if !slices.Equal(filters, want) {
		t.Fatalf("StaleFlows = %s, want %s", filterList(filters), filterList(want))
	}

	var wantLeft []Flow
	for _, fl := range before {
		if !slices.ContainsFunc(filters, func(f Filter) bool { return f.Matches(fl) }) {
			wantLeft = append(wantLeft, fl)
		}
	}
	if len(wantLeft) != 2 {
		t.Fatalf("filters should leave c's flow and the direct one, would leave:\n%s", flowLines(wantLeft))
	}

	deleted, err := ct.ClearFlows(filters)
	if err != nil {
		t.Fatalf("ClearFlows: %v", err)
	}
	if deleted != len(before)-len(wantLeft) {
		t.Errorf("ClearFlows deleted %d, want %d", deleted, len(before)-len(wantLeft))
	}
	after := udpFlowsFrom(t, ct, "10.0.0.2")
	if !slices.Equal(after, wantLeft) {
		t.Errorf("flows left:\n%s\nwant:\n%s", flowLines(after), flowLines(wantLeft))
	}

	// Clearing again finds nothing; invalid filters touch nothing.
	if n, err := ct.ClearFlows(filters); n != 0 || err != nil {
		t.Errorf("second ClearFlows = %d, %v; want 0, nil", n, err)
	}
	if _, err := ct.ClearFlows([]Filter{{Protocol: dataplane.UDP}}); err == nil {
		t.Errorf("ClearFlows accepted a filter matching every UDP flow")
	}
	if got := udpFlowsFrom(t, ct, "10.0.0.2"); !slices.Equal(got, wantLeft) {
		t.Errorf("flows changed after no-op clears:\n%s", flowLines(got))
	}

	// The surviving Service still answers through a fresh entry.
	if reply, err := netnstest.Request(cli, "udp", "10.96.0.12:53", "again", 2*time.Second); err != nil || !strings.HasPrefix(reply, "ep2 ") {
		t.Errorf("service c after clearing: %q, %v", reply, err)
	}
}

// udpFlowsFrom lists the UDP flows whose client is src, sorted, without
// their timers (Timeout runs down between two listings).
func udpFlowsFrom(t *testing.T, ct *Netlink, src string) []Flow {
	t.Helper()
	return flowsFrom(t, ct, dataplane.UDP, src, true)
}

// flowsFrom lists the flows of proto whose client is src, sorted;
// noTimers zeroes Timeout and Start.
func flowsFrom(t *testing.T, ct *Netlink, proto dataplane.Protocol, src string, noTimers bool) []Flow {
	t.Helper()
	all, err := ct.ListFlows()
	if err != nil {
		t.Fatalf("ListFlows: %v", err)
	}
	client := netip.MustParseAddr(src)
	var out []Flow
	for _, f := range all {
		if f.Protocol == proto && f.Orig.Src.Addr() == client {
			if noTimers {
				f.Timeout, f.Start = 0, time.Time{}
			}
			out = append(out, f)
		}
	}
	slices.SortFunc(out, func(a, b Flow) int { return strings.Compare(a.String(), b.String()) })
	return out
}

func flowLines(fs []Flow) string {
	var b strings.Builder
	for _, f := range fs {
		fmt.Fprintf(&b, "  %s\n", f)
	}
	return b.String()
}

// TestNetlinkMarkFlows marks real TCP entries in a node namespace (a
// client namespace connects through a DNAT rule): only the entries named
// are marked, only the masked bits change, entries that are gone are
// skipped, and the listing reports marks, timers and (with conntrack
// timestamps on) start times.
func TestNetlinkMarkFlows(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and writes their conntrack tables")
	}
	node, cli := netnstest.New(t, "ctm-node"), netnstest.New(t, "ctm-cli")
	netnstest.Veth(t, node, cli, "eth0", "eth0",
		netip.MustParsePrefix("10.0.0.1/24"), netip.MustParsePrefix("10.0.0.2/24"))
	netnstest.AddAddr(t, node, "lo", netip.MustParsePrefix("10.244.0.1/32"))
	netnstest.AddRoute(t, cli, netip.MustParsePrefix("10.96.0.0/16"), netip.MustParseAddr("10.0.0.1"))
	netnstest.StartEchoServer(t, node, "tcp", "10.244.0.1:8080", "ep1")
	installDNAT(t, node, []dnatRule{{frontend: netip.MustParseAddrPort("10.96.0.10:80"),
		endpoint: netip.MustParseAddrPort("10.244.0.1:8080"), tcp: true}})
	procSys := sysctl.NewAt(node.NsHandle())
	if err := procSys.Set("net/netfilter/nf_conntrack_timestamp", "1"); err != nil {
		t.Fatal(err)
	}

	ct, err := NewNetlink(node.NsHandle())
	if err != nil {
		t.Fatal(err)
	}
	defer ct.Close()

	t0 := time.Now()
	conns := make([]net.Conn, 3)
	for i := range conns {
		c, err := netnstest.Dial(cli, "tcp", "10.96.0.10:80", 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if reply, err := netnstest.Exchange(c, "hello", 3*time.Second); err != nil || !strings.HasPrefix(reply, "ep1 ") {
			t.Fatalf("connection %d: %q, %v", i, reply, err)
		}
		conns[i] = c
	}
	// byConn finds each connection's entry by the client's own address.
	byConn := func(flows []Flow) []Flow {
		t.Helper()
		out := make([]Flow, len(conns))
		for i, c := range conns {
			local := netip.MustParseAddrPort(c.LocalAddr().String())
			j := slices.IndexFunc(flows, func(f Flow) bool { return f.Orig.Src == local })
			if j < 0 {
				t.Fatalf("no entry for connection %d (%s) in:\n%s", i, local, flowLines(flows))
			}
			out[i] = flows[j]
		}
		return out
	}
	flows := byConn(flowsFrom(t, ct, dataplane.TCP, "10.0.0.2", false))
	t1 := time.Now()
	timeouts, err := ReadTCPTimeouts(procSys)
	if err != nil {
		t.Fatal(err)
	}
	for i, f := range flows {
		if f.TCPState != "ESTABLISHED" || f.Mark != 0 || f.Reply.Src != netip.MustParseAddrPort("10.244.0.1:8080") {
			t.Errorf("connection %d: %s state %s mark %#x, want an unmarked ESTABLISHED entry to the endpoint", i, f, f.TCPState, f.Mark)
		}
		if f.Timeout <= timeouts.Unacknowledged || f.Timeout > timeouts.Established {
			t.Errorf("connection %d: timer %v, want in (%v, %v]", i, f.Timeout, timeouts.Unacknowledged, timeouts.Established)
		}
		// The listing counts whole seconds down: at most one second
		// more than the real idle time.
		if idle := f.Idle(timeouts); idle > t1.Sub(t0)+time.Second {
			t.Errorf("connection %d: Idle %v, but it was made %v ago", i, idle, t1.Sub(t0))
		}
		if f.Start.Before(t0) || f.Start.After(t1) {
			t.Errorf("connection %d: Start %v, want between %v and %v (timestamps are on)", i, f.Start, t0, t1)
		}
	}

	gone := flows[1]
	gone.Orig.Src = netip.AddrPortFrom(gone.Orig.Src.Addr(), 1) // no connection from port 1
	if n, err := ct.MarkFlows(flows[2:3], 0x1, 0x1); n != 1 || err != nil {
		t.Fatalf("MarkFlows(0x1) = %d, %v; want 1, nil", n, err)
	}
	if n, err := ct.MarkFlows([]Flow{flows[0], flows[2], gone}, 0x8000, 0x8000); n != 2 || err != nil {
		t.Fatalf("MarkFlows(0x8000) = %d, %v; want 2 (the third is gone), nil", n, err)
	}
	marks := func() []uint32 {
		var out []uint32
		for _, f := range byConn(flowsFrom(t, ct, dataplane.TCP, "10.0.0.2", true)) {
			out = append(out, f.Mark)
		}
		return out
	}
	if got := marks(); !slices.Equal(got, []uint32{0x8000, 0, 0x8001}) {
		t.Errorf("marks %#x, want [0x8000 0 0x8001]: the bit on the named entries, the other bit kept", got)
	}
	if n, err := ct.MarkFlows(flows[2:3], 0, 0x8000); n != 1 || err != nil {
		t.Fatalf("clearing MarkFlows = %d, %v", n, err)
	}
	if _, err := ct.MarkFlows(flows, 0x8000, 0); !errors.Is(err, ErrInvalidMark) {
		t.Errorf("empty mask: %v, want ErrInvalidMark", err)
	}
	if got := marks(); !slices.Equal(got, []uint32{0x8000, 0, 0x1}) {
		t.Errorf("marks after clearing %#x, want [0x8000 0 0x1]", got)
	}
	// Marks alone change nothing for the traffic.
	for i, c := range conns {
		if reply, err := netnstest.Exchange(c, "again", 3*time.Second); err != nil || !strings.HasPrefix(reply, "ep1 ") {
			t.Errorf("connection %d after marking: %q, %v", i, reply, err)
		}
	}
}
