//go:build linux

package conntrack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/sysctl"
	"github.com/switchyard/switchyard/test/netnstest"
)

// ftEnv is a node namespace that DNATs three TCP frontends
// (10.96.0.10-12:80) to one local echo server (10.244.0.1:8080), and a
// client namespace (10.0.0.2) connecting to them: the node's conntrack
// table holds one entry per connection.
type ftEnv struct {
	node, cli *netnstest.NS
	ct        *Netlink
}

var (
	ftEndpoint  = netip.MustParseAddrPort("10.244.0.1:8080")
	ftFrontends = []netip.AddrPort{
		netip.MustParseAddrPort("10.96.0.10:80"),
		netip.MustParseAddrPort("10.96.0.11:80"),
		netip.MustParseAddrPort("10.96.0.12:80"),
	}
)

func newFTEnv(t *testing.T, prefix string) *ftEnv {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and reads their conntrack tables")
	}
	node, cli := netnstest.New(t, prefix+"-node"), netnstest.New(t, prefix+"-cli")
	netnstest.Veth(t, node, cli, "eth0", "eth0",
		netip.MustParsePrefix("10.0.0.1/24"), netip.MustParsePrefix("10.0.0.2/24"))
	netnstest.AddAddr(t, node, "lo", netip.MustParsePrefix("10.244.0.1/32"))
	netnstest.AddRoute(t, cli, netip.MustParsePrefix("10.96.0.0/16"), netip.MustParseAddr("10.0.0.1"))
	netnstest.StartEchoServer(t, node, "tcp", ftEndpoint.String(), "ep1")
	var rules []dnatRule
	for _, f := range ftFrontends {
		rules = append(rules, dnatRule{frontend: f, endpoint: ftEndpoint, tcp: true})
	}
	installDNAT(t, node, rules)
	ct, err := NewNetlink(node.NsHandle())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ct.Close)
	return &ftEnv{node: node, cli: cli, ct: ct}
}

// withoutEventCache runs fn with the node namespace's
// nf_conntrack_events at 0, so the entries fn creates get no event cache
// and never send an event: what entries made before any listener existed
// do. Relying on "no listener" instead is wrong on a shared machine: with
// nf_conntrack_events=2 the kernel (6.3+) asks whether a listener exists
// in ANY namespace, so an agent subscribed elsewhere (another test
// package) gives every new entry an event cache.
func (e *ftEnv) withoutEventCache(t *testing.T, fn func()) {
	t.Helper()
	const path = "/proc/sys/net/netfilter/nf_conntrack_events"
	var old []byte
	set := func(v []byte) {
		t.Helper()
		if err := e.node.Do(func() (err error) {
			if old == nil {
				if old, err = os.ReadFile(path); err != nil {
					return err
				}
			}
			return os.WriteFile(path, v, 0o644)
		}); err != nil {
			t.Fatalf("nf_conntrack_events in %s: %v", e.node.Name(), err)
		}
	}
	set([]byte("0\n"))
	defer set(old)
	fn()
}

// connect opens a TCP connection to frontend, checks the echo server's
// reply names the endpoint and the client's address, and returns the
// entry the connection must have: original tuple client -> frontend,
// reply tuple endpoint -> what the server saw. That is the client's own
// address and port unless conntrack had to change the port because two
// connections to different frontends used the same one: both are DNAT'd
// to the same endpoint, and their reply tuples must differ.
// The connection closes at cleanup unless closed before.
func (e *ftEnv) connect(t *testing.T, frontend netip.AddrPort) (net.Conn, Flow) {
	t.Helper()
	c, err := netnstest.Dial(e.cli, "tcp", frontend.String(), 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	reply, err := netnstest.Exchange(c, "hello", 3*time.Second)
	if err != nil {
		t.Fatalf("connection to %s: %v", frontend, err)
	}
	local := netip.MustParseAddrPort(c.LocalAddr().String())
	id, remote, err := netnstest.ReplyID(reply)
	seen, perr := netip.ParseAddrPort(remote)
	if err != nil || perr != nil || id != "ep1" || seen.Addr() != local.Addr() {
		t.Fatalf("connection to %s from %s: reply %q (%v), want ep1 seeing the client address", frontend, local, reply, err)
	}
	return c, Flow{Protocol: dataplane.TCP, Orig: Tuple{local, frontend}, Reply: Tuple{ftEndpoint, seen}}
}

// fromClient keeps the TCP entries of the client namespace's connections.
func fromClient(f Flow) bool {
	return f.Protocol == dataplane.TCP && f.Orig.Src.Addr() == netip.MustParseAddr("10.0.0.2")
}

// sameEntry compares what identifies an entry and where it goes.
func sameEntry(a, b Flow) bool {
	return a.Protocol == b.Protocol && a.Orig == b.Orig && a.Reply == b.Reply
}

func lookup(flows []Flow, want Flow) (Flow, bool) {
	i := slices.IndexFunc(flows, func(f Flow) bool { return sameEntry(f, want) })
	if i < 0 {
		return Flow{}, false
	}
	return flows[i], true
}

// eventually polls cond every 20ms for up to timeout; cond returns
// whether it holds and, if not, what it saw.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, saw := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v, still not %s; last saw:\n%s", timeout, what, saw)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// runTable runs ft until the test ends and checks that Run returns nil
// after Close.
func runTable(t *testing.T, ft *FlowTable) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- ft.Run(context.Background()) }()
	t.Cleanup(func() {
		ft.Close()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run after Close: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("Run did not return after Close")
		}
	})
}

// TestFlowTableFollowsEvents: a connection made before the table is in
// its first dump; connections made after appear through events with their
// tuples and reach ESTABLISHED; a mark set with MarkFlows shows; a closed
// connection's entry leaves on its DESTROY. The older entry sends no
// events at all, so its deletion is seen by the sweep.
func TestFlowTableFollowsEvents(t *testing.T) {
	env := newFTEnv(t, "ftev")
	var wantOlder Flow
	env.withoutEventCache(t, func() { _, wantOlder = env.connect(t, ftFrontends[0]) })

	ft, err := NewFlowTable(env.node.NsHandle(), fromClient, WithSweepInterval(300*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	got, ok := lookup(ft.Flows(), wantOlder)
	if !ok || got.TCPState != "ESTABLISHED" {
		t.Fatalf("initial dump: %s missing or not ESTABLISHED in:\n%s", wantOlder, flowLines(ft.Flows()))
	}
	if st := ft.Stats(); st.Flows != 1 || st.Silent != 1 {
		t.Fatalf("after the initial dump: %+v, want 1 flow, silent", st)
	}
	runTable(t, ft)

	b, wantB := env.connect(t, ftFrontends[1])
	c, wantC := env.connect(t, ftFrontends[2])
	eventually(t, 3*time.Second, "both new connections ESTABLISHED in the table", func() (bool, string) {
		flows := ft.Flows()
		fb, okB := lookup(flows, wantB)
		fc, okC := lookup(flows, wantC)
		return okB && okC && fb.TCPState == "ESTABLISHED" && fc.TCPState == "ESTABLISHED", flowLines(flows)
	})
	if st := ft.Stats(); st.Flows != 3 || st.Silent != 1 || st.Events < 6 {
		t.Errorf("after two connections: %+v, want 3 flows, 1 silent, >= 6 events (NEW, SYN_RECV, ESTABLISHED each)", st)
	}

	if n, err := env.ct.MarkFlows([]Flow{wantB}, 0x10, 0x10); n != 1 || err != nil {
		t.Fatalf("MarkFlows = %d, %v", n, err)
	}
	eventually(t, 3*time.Second, "B's mark 0x10 in the table", func() (bool, string) {
		f, ok := lookup(ft.Flows(), wantB)
		return ok && f.Mark == 0x10 && f.TCPState == "ESTABLISHED", fmt.Sprintf("%+v", f)
	})

	// C closes: its entry goes through the FIN states to TIME_WAIT and
	// leaves on the DESTROY its deletion sends.
	c.Close()
	eventually(t, 3*time.Second, "C in TIME_WAIT", func() (bool, string) {
		f, ok := lookup(ft.Flows(), wantC)
		return ok && f.TCPState == "TIME_WAIT", fmt.Sprintf("%+v", f)
	})
	if n, err := env.ct.ClearFlows([]Filter{{Protocol: dataplane.TCP, OrigDst: ftFrontends[2].Addr()}}); n != 1 || err != nil {
		t.Fatalf("ClearFlows(C) = %d, %v", n, err)
	}
	eventually(t, 3*time.Second, "C gone", func() (bool, string) {
		_, ok := lookup(ft.Flows(), wantC)
		return !ok, flowLines(ft.Flows())
	})

	// The older entry's deletion sends no DESTROY (no event cache): the
	// event count stays put and the sweep drops it.
	events := ft.Stats().Events
	if n, err := env.ct.ClearFlows([]Filter{{Protocol: dataplane.TCP, OrigDst: ftFrontends[0].Addr()}}); n != 1 || err != nil {
		t.Fatalf("ClearFlows(older) = %d, %v", n, err)
	}
	eventually(t, 3*time.Second, "the older entry swept away", func() (bool, string) {
		_, ok := lookup(ft.Flows(), wantOlder)
		return !ok, flowLines(ft.Flows())
	})
	st := ft.Stats()
	if st.Events != events || st.Silent != 0 || st.Sweeps == 0 {
		t.Errorf("after sweeping the older entry: %+v; want %d events (none for it), 0 silent, sweeps > 0", st, events)
	}

	// B is untouched, still marked, and still carries traffic.
	if f, ok := lookup(ft.Flows(), wantB); !ok || f.Mark != 0x10 || len(ft.Flows()) != 1 {
		t.Errorf("want only B (marked) left, got:\n%s", flowLines(ft.Flows()))
	}
	if reply, err := netnstest.Exchange(b, "again", 3*time.Second); err != nil || !strings.HasPrefix(reply, "ep1 ") {
		t.Errorf("B after all that: %q, %v", reply, err)
	}
	if ft.Resyncs() != 0 || ft.Err() != nil {
		t.Errorf("Resyncs %d, Err %v; want no resync without overflow", ft.Resyncs(), ft.Err())
	}
}

// matchesTruth compares the table with a dump of the kernel's table:
// same entries, same TCP states and marks.
func matchesTruth(t *testing.T, env *ftEnv, ft *FlowTable) (bool, string) {
	t.Helper()
	truth := flowsFrom(t, env.ct, dataplane.TCP, "10.0.0.2", true)
	table := ft.Flows()
	for i := range table {
		table[i].Timeout, table[i].Start = 0, time.Time{}
	}
	slices.SortFunc(table, func(a, b Flow) int { return strings.Compare(a.String(), b.String()) })
	saw := fmt.Sprintf("table (%d):\n%skernel (%d):\n%s", len(table), flowLines(table), len(truth), flowLines(truth))
	return slices.Equal(table, truth), saw
}

// TestFlowTableResyncsAfterOverflow: with the smallest receive buffer the
// kernel allows, the events of 40 connections made while nobody reads
// overflow it; Run sees ENOBUFS, re-dumps, and the table matches the
// kernel's. Deleting a quarter of them afterwards converges too, by
// events or by further resyncs.
func TestFlowTableResyncsAfterOverflow(t *testing.T) {
	env := newFTEnv(t, "ftov")
	ft, err := NewFlowTable(env.node.NsHandle(), fromClient, WithEventBuffer(1), WithSweepInterval(0))
	if err != nil {
		t.Fatal(err)
	}
	var want []Flow
	for i := range 40 {
		fe := ftFrontends[0]
		if i%4 == 0 {
			fe = ftFrontends[1]
		}
		_, w := env.connect(t, fe)
		want = append(want, w)
	}
	runTable(t, ft)
	eventually(t, 5*time.Second, "the table equal to the kernel's after an overflow", func() (bool, string) {
		ok, saw := matchesTruth(t, env, ft)
		return ok && ft.Resyncs() > 0, fmt.Sprintf("resyncs %d\n%s", ft.Resyncs(), saw)
	})
	for _, w := range want {
		if f, ok := lookup(ft.Flows(), w); !ok || f.TCPState != "ESTABLISHED" {
			t.Errorf("%s: %+v, want ESTABLISHED in the table", w, f)
		}
	}
	t.Logf("after the overflow: %+v", ft.Stats())

	if n, err := env.ct.ClearFlows([]Filter{{Protocol: dataplane.TCP, OrigDst: ftFrontends[1].Addr()}}); n != 10 || err != nil {
		t.Fatalf("ClearFlows = %d, %v; want 10", n, err)
	}
	eventually(t, 5*time.Second, "30 entries left, as in the kernel", func() (bool, string) {
		ok, saw := matchesTruth(t, env, ft)
		return ok && len(ft.Flows()) == 30, saw
	})
	t.Logf("after deleting 10: %+v", ft.Stats())
}

// TestGetFlows: GET by tuple returns the entries' current timers (a
// connection that just carried data has a fresh one, an idle one not),
// their other details as a dump has them, in the order asked, and leaves
// out entries that are gone.
func TestGetFlows(t *testing.T) {
	env := newFTEnv(t, "ftget")
	procSys := sysctl.NewAt(env.node.NsHandle())
	if err := procSys.Set(sysctlTCPEstablishedTimeout, "600"); err != nil {
		t.Fatal(err)
	}
	timeouts, err := ReadTCPTimeouts(procSys)
	if err != nil {
		t.Fatal(err)
	}
	var (
		conns []net.Conn
		asked []Flow
	)
	for _, fe := range ftFrontends {
		c, w := env.connect(t, fe)
		conns = append(conns, c)
		asked = append(asked, w)
	}
	ft, err := NewFlowTable(env.node.NsHandle(), fromClient, WithSweepInterval(0))
	if err != nil {
		t.Fatal(err)
	}
	defer ft.Close()

	time.Sleep(2200 * time.Millisecond) // idle for at least 2 whole seconds
	if reply, err := netnstest.Exchange(conns[0], "busy", 3*time.Second); err != nil || !strings.HasPrefix(reply, "ep1 ") {
		t.Fatalf("traffic on connection 0: %q, %v", reply, err)
	}
	dumped := flowsFrom(t, env.ct, dataplane.TCP, "10.0.0.2", false)
	for _, get := range []struct {
		name string
		fn   func([]Flow) ([]Flow, error)
	}{{"Netlink", env.ct.GetFlows}, {"FlowTable", ft.GetFlows}} {
		got, err := get.fn(asked)
		if err != nil {
			t.Fatalf("%s.GetFlows: %v", get.name, err)
		}
		if len(got) != 3 {
			t.Fatalf("%s.GetFlows: %d flows, want 3:\n%s", get.name, len(got), flowLines(got))
		}
		for i, f := range got {
			d, _ := lookup(dumped, asked[i])
			if !sameEntry(f, asked[i]) || f.TCPState != "ESTABLISHED" || f.Mark != d.Mark {
				t.Errorf("%s.GetFlows[%d] = %s %s mark %#x, want %s ESTABLISHED as dumped", get.name, i, f, f.TCPState, f.Mark, asked[i])
			}
		}
		if idle := got[0].Idle(timeouts); idle > time.Second {
			t.Errorf("%s: connection 0 just carried data, Idle %v (timer %v)", get.name, idle, got[0].Timeout)
		}
		for _, f := range got[1:] {
			if idle := f.Idle(timeouts); idle < 2*time.Second {
				t.Errorf("%s: %s idle since connect (>= 2.2s), Idle %v (timer %v)", get.name, f, idle, f.Timeout)
			}
		}
	}

	// A gone entry is left out, the order kept; so is a tuple that never
	// existed.
	if n, err := env.ct.ClearFlows([]Filter{{Protocol: dataplane.TCP, OrigDst: ftFrontends[1].Addr()}}); n != 1 || err != nil {
		t.Fatalf("ClearFlows = %d, %v", n, err)
	}
	never := asked[0]
	never.Orig.Src = netip.AddrPortFrom(never.Orig.Src.Addr(), 1)
	got, err := env.ct.GetFlows([]Flow{asked[2], asked[1], never, asked[0]})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !sameEntry(got[0], asked[2]) || !sameEntry(got[1], asked[0]) {
		t.Errorf("after deleting connection 1: got\n%swant connections 2 then 0", flowLines(got))
	}

	icmp := Flow{Protocol: dataplane.Protocol("proto-1"), Orig: asked[0].Orig}
	if _, err := env.ct.GetFlows([]Flow{asked[0], icmp}); !errors.Is(err, ErrInvalidFlow) {
		t.Errorf("GetFlows with an ICMP flow: %v, want ErrInvalidFlow", err)
	}
	if got, err := env.ct.GetFlows(nil); len(got) != 0 || err != nil {
		t.Errorf("GetFlows(nil) = %v, %v", got, err)
	}
}

// createFlows makes n ESTABLISHED TCP entries in ns through ctnetlink
// (`conntrack -I`), from 10.1.x.y:40000 to 10.96.0.10:80 and DNAT'd to
// 10.244.0.1:8080: no sockets needed for big tables.
func createFlows(tb testing.TB, ns netns.NsHandle, n int) []Flow {
	tb.Helper()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_NETFILTER)
	if err != nil {
		tb.Fatal(err)
	}
	defer h.Close()
	fe, ep := ftFrontends[0], ftEndpoint
	out := make([]Flow, 0, n)
	for i := range n {
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), 40000)
		err := h.ConntrackCreate(netlink.ConntrackTable, unix.AF_INET, &netlink.ConntrackFlow{
			FamilyType: unix.AF_INET,
			Forward: netlink.IPTuple{Protocol: unix.IPPROTO_TCP, SrcIP: src.Addr().AsSlice(), SrcPort: src.Port(),
				DstIP: fe.Addr().AsSlice(), DstPort: fe.Port()},
			Reverse: netlink.IPTuple{Protocol: unix.IPPROTO_TCP, SrcIP: ep.Addr().AsSlice(), SrcPort: ep.Port(),
				DstIP: src.Addr().AsSlice(), DstPort: src.Port()},
			TimeOut:   600,
			ProtoInfo: &netlink.ProtoInfoTCP{State: 3}, // ESTABLISHED
		})
		if err != nil {
			tb.Fatalf("create entry %d: %v", i, err)
		}
		out = append(out, Flow{Protocol: dataplane.TCP, Orig: Tuple{src, fe}, Reply: Tuple{ep, src}})
	}
	return out
}

// TestGetFlowsReasksDroppedReplies: 1000 GETs in batches far beyond what
// the default receive buffer holds lose replies (ENOBUFS); get asks those
// again in smaller batches and returns every entry, each one its own.
func TestGetFlowsReasksDroppedReplies(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace and writes its conntrack table")
	}
	ns := netnstest.New(t, "ftmany")
	flows := createFlows(t, ns.NsHandle(), 1000)
	ct, err := NewNetlink(ns.NsHandle())
	if err != nil {
		t.Fatal(err)
	}
	defer ct.Close()
	r := newRequester(ct.upd.Socket)
	t.Logf("default receive buffer allows batches of %d", r.batch)
	r.batch = 1000
	got, err := r.get(flows)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(flows) {
		t.Fatalf("got %d entries, want %d", len(got), len(flows))
	}
	for i, f := range got {
		if !sameEntry(f, flows[i]) || f.TCPState != "ESTABLISHED" || f.Timeout <= 590*time.Second {
			t.Fatalf("entry %d: %s %s timer %v, want %s ESTABLISHED with ~600s", i, f, f.TCPState, f.Timeout, flows[i])
		}
	}
	if r.reasked == 0 {
		t.Errorf("no GET was asked again: the test did not overflow the receive buffer")
	}
	t.Logf("%d GETs asked again", r.reasked)
}

// benchTable makes a namespace with n entries and a FlowTable over them.
func benchTable(b *testing.B, n int) (*FlowTable, *Netlink, []Flow) {
	b.Helper()
	if os.Geteuid() != 0 {
		b.Skip("needs root: creates a network namespace and writes its conntrack table")
	}
	ns := netnstest.New(b, "ftbench")
	flows := createFlows(b, ns.NsHandle(), n)
	ft, err := NewFlowTable(ns.NsHandle(), func(f Flow) bool { return f.Protocol == dataplane.TCP })
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(ft.Close)
	if got := len(ft.Flows()); got != n {
		b.Fatalf("table has %d flows, want %d", got, n)
	}
	ct, err := NewNetlink(ns.NsHandle())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(ct.Close)
	return ft, ct, flows
}

// BenchmarkFlowTable5000 compares, on a table of 5000 entries, what the
// rebalancer's round costs: a snapshot of the FlowTable, GETs for 1000
// entries (one Service's flows), and the full dump it replaces.
func BenchmarkFlowTable5000(b *testing.B) {
	ft, ct, flows := benchTable(b, 5000)
	b.Run("Flows", func(b *testing.B) {
		for b.Loop() {
			if len(ft.Flows()) != 5000 {
				b.Fatal("wrong snapshot")
			}
		}
	})
	for _, g := range []struct {
		name string
		fn   func([]Flow) ([]Flow, error)
	}{{"GetFlows1000/FlowTable", ft.GetFlows}, {"GetFlows1000/Netlink", ct.GetFlows}} {
		b.Run(g.name, func(b *testing.B) {
			for b.Loop() {
				got, err := g.fn(flows[:1000])
				if err != nil || len(got) != 1000 {
					b.Fatalf("GetFlows: %d, %v", len(got), err)
				}
			}
		})
	}
	b.Run("ListFlows", func(b *testing.B) {
		for b.Loop() {
			got, err := ct.ListFlows()
			if err != nil || len(got) != 5000 {
				b.Fatalf("ListFlows: %d, %v", len(got), err)
			}
		}
	})
	b.Run("dump", func(b *testing.B) {
		for b.Loop() {
			got, err := ft.dump()
			if err != nil || len(got) != 5000 {
				b.Fatalf("dump: %d, %v", len(got), err)
			}
		}
	})
}

// TestFlowTableRunEndsWithContext: cancelling Run's context wakes its
// blocked receive; Run returns the context's error and the last table
// stays readable until Close.
func TestFlowTableRunEndsWithContext(t *testing.T) {
	env := newFTEnv(t, "ftctx")
	_, want := env.connect(t, ftFrontends[0])
	ft, err := NewFlowTable(env.node.NsHandle(), fromClient, WithSweepInterval(0))
	if err != nil {
		t.Fatal(err)
	}
	defer ft.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ft.Run(ctx) }()
	time.Sleep(50 * time.Millisecond) // let Run block in its receive
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Run = %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if _, ok := lookup(ft.Flows(), want); !ok {
		t.Errorf("table lost %s after Run ended:\n%s", want, flowLines(ft.Flows()))
	}
	if err := ft.Run(context.Background()); err != nil {
		t.Errorf("second Run = %v, want an immediate nil", err)
	}
}

// TestFlowTableSweepsByDump: with more silent entries than the sweep
// reads by GET (forced here to none), the sweep re-reads them with a dump:
// a deleted older entry leaves, the others stay.
func TestFlowTableSweepsByDump(t *testing.T) {
	env := newFTEnv(t, "ftsweep")
	var want []Flow
	env.withoutEventCache(t, func() {
		for _, fe := range ftFrontends {
			_, w := env.connect(t, fe)
			want = append(want, w)
		}
	})
	ft, err := NewFlowTable(env.node.NsHandle(), fromClient, WithSweepInterval(200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	ft.sweepGets = 0
	runTable(t, ft)
	if st := ft.Stats(); st.Flows != 3 || st.Silent != 3 {
		t.Fatalf("initial table: %+v, want 3 silent flows", st)
	}
	if n, err := env.ct.ClearFlows([]Filter{{Protocol: dataplane.TCP, OrigDst: ftFrontends[1].Addr()}}); n != 1 || err != nil {
		t.Fatalf("ClearFlows = %d, %v", n, err)
	}
	eventually(t, 3*time.Second, "the deleted entry swept away, the others kept", func() (bool, string) {
		flows := ft.Flows()
		_, ok0 := lookup(flows, want[0])
		_, ok1 := lookup(flows, want[1])
		_, ok2 := lookup(flows, want[2])
		return ok0 && !ok1 && ok2 && len(flows) == 2, flowLines(flows)
	})
	if st := ft.Stats(); st.Silent != 2 || st.Sweeps == 0 || st.Events != 0 {
		t.Errorf("after the sweep: %+v, want 2 silent, sweeps > 0, no events", st)
	}
}
