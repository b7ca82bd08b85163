package hostport

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"

	"github.com/switchyard/switchyard/conntrack"
	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/sysctl"
)

// fakeEnv is a Proxier on a FakeConn and a conntrack.Fake, recording what it
// asks of the sync loop and what it reports.
type fakeEnv struct {
	p       *Proxier
	conn    *FakeConn
	ct      *conntrack.Fake
	st      *dataplane.State
	notices atomic.Int32

	mu      sync.Mutex
	reports []Problems
}

func newFakeEnv(t *testing.T, conn *FakeConn, sc sysctl.Interface) *fakeEnv {
	t.Helper()
	if conn == nil {
		conn = NewFakeConn()
	}
	e := &fakeEnv{conn: conn, ct: conntrack.NewFake(), st: dataplane.NewState()}
	e.st.NodeName = testNode
	p, err := NewProxier(Config{Conn: conn, Conntrack: e.ct, Sysctl: sc,
		Notify: func() { e.notices.Add(1) },
		Report: func(pr Problems) { e.mu.Lock(); e.reports = append(e.reports, pr); e.mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	e.p = p
	return e
}

var (
	full    = dataplane.Changes{Full: true}
	partial = dataplane.Changes{}
)

func (e *fakeEnv) sync(t *testing.T, c dataplane.Changes) {
	t.Helper()
	if err := e.p.Sync(context.Background(), e.st, c); err != nil {
		t.Fatalf("sync (full=%v): %v", c.Full, err)
	}
}

func (e *fakeEnv) dump(t *testing.T) string {
	t.Helper()
	d, err := DumpTables(e.conn)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// elems returns the dump's element lines of one family's set, trimmed.
func (e *fakeEnv) elems(t *testing.T, fam, set string) []string {
	t.Helper()
	var out []string
	inTable, inSet := false, false
	for _, l := range strings.Split(e.dump(t), "\n") {
		switch {
		case strings.HasPrefix(l, "table "):
			inTable = l == "table "+fam+" "+TableName
		case strings.HasPrefix(l, "\t\t"):
			if inTable && inSet {
				out = append(out, strings.TrimSpace(l))
			}
		case strings.HasPrefix(l, "\t"):
			f := strings.Fields(l)
			inSet = len(f) >= 2 && (f[0] == "set" || f[0] == "map") && f[1] == set+":"
		}
	}
	return out
}

func (e *fakeEnv) takeReports() []Problems {
	e.mu.Lock()
	defer e.mu.Unlock()
	r := e.reports
	e.reports = nil
	return r
}

func ipv6Sysctl(value string) *sysctl.Fake {
	return sysctl.NewFake(map[string]string{sysctlDisableIPv6: value})
}

func TestProxierProgramsTables(t *testing.T) {
	e := newFakeEnv(t, nil, ipv6Sysctl("0"))
	e.p.OnPodUpsert(newPod("web", []string{"10.244.1.2", "fd00::2"}, port("c", "", "", 8080, 80), port("c", v1.ProtocolSCTP, "", 9999, 9)))
	e.p.OnPodUpsert(newPod("dns", []string{"10.244.1.3"}, port("c", v1.ProtocolUDP, "192.0.2.1", 53, 5353)))
	e.p.SetPodsSynced()
	e.sync(t, full)
	want := `table ip switchyard-hostport
	set hairpin: ipv4_addr . ipv4_addr . inet_proto . inet_service
		10.244.1.2 . 10.244.1.2 . sctp . 9
		10.244.1.2 . 10.244.1.2 . tcp . 80
		10.244.1.3 . 10.244.1.3 . udp . 5353
	map hostip-ports: ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service
		192.0.2.1 . udp . 53 : 10.244.1.3 . 5353
	map wildcard-ports: inet_proto . inet_service : ipv4_addr . inet_service
		sctp . 9999 : 10.244.1.2 . 9
		tcp . 8080 : 10.244.1.2 . 80
	chain hostports
		dnat ip to ip daddr . meta l4proto . th dport map @hostip-ports
		ip daddr != 127.0.0.0/8 dnat ip to meta l4proto . th dport map @wildcard-ports
	chain output: type nat hook output priority -110
		fib daddr type local jump hostports
	chain postrouting: type nat hook postrouting priority 100
		ct status dnat ip saddr . ip daddr . meta l4proto . th dport @hairpin masquerade
	chain prerouting: type nat hook prerouting priority -110
		fib daddr type local jump hostports
table ip6 switchyard-hostport
	set hairpin: ipv6_addr . ipv6_addr . inet_proto . inet_service
		fd00::2 . fd00::2 . sctp . 9
		fd00::2 . fd00::2 . tcp . 80
	map hostip-ports: ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service
	map wildcard-ports: inet_proto . inet_service : ipv6_addr . inet_service
		sctp . 9999 : fd00::2 . 9
		tcp . 8080 : fd00::2 . 80
	chain hostports
		dnat ip6 to ip6 daddr . meta l4proto . th dport map @hostip-ports
		ip6 daddr != ::1/128 dnat ip6 to meta l4proto . th dport map @wildcard-ports
	chain output: type nat hook output priority -110
		fib daddr type local jump hostports
	chain postrouting: type nat hook postrouting priority 100
		ct status dnat ip6 saddr . ip6 daddr . meta l4proto . th dport @hairpin masquerade
	chain prerouting: type nat hook prerouting priority -110
		fib daddr type local jump hostports
`
	if got := e.dump(t); got != want {
		t.Errorf("tables:\n%s\nwant:\n%s", got, want)
	}
	if flushes, _ := e.conn.Stats(); flushes != 1 {
		t.Errorf("first sync: %d transactions, want 1 for both families", flushes)
	}
	// The UDP mapping is new: flows that reached the port before it
	// existed are cleared.
	if got, want := e.ct.ClearedFilters(), []conntrack.Filter{
		{Protocol: sctp, OrigDstPort: 9999},
		{Protocol: udp, OrigDst: netip.MustParseAddr("192.0.2.1"), OrigDstPort: 53},
	}; !slices.Equal(got, want) {
		t.Errorf("cleared %v, want %v", got, want)
	}

	// Nothing changed: a full sync reads and writes nothing, a partial one
	// only checks the tables exist; neither clears flows.
	e.ct.Reset()
	for _, c := range []dataplane.Changes{full, partial} {
		e.sync(t, c)
		if flushes, msgs := e.conn.Stats(); flushes != 0 {
			t.Errorf("unchanged sync (full=%v) sent %d messages", c.Full, msgs)
		}
	}
	if c := e.ct.ClearedFilters(); len(c) != 0 {
		t.Errorf("unchanged syncs cleared %v", c)
	}

	// A restart: a new Proxier, same Pods, writes nothing.
	e2 := newFakeEnv(t, e.conn, ipv6Sysctl("0"))
	e2.p.OnPodUpsert(newPod("web", []string{"10.244.1.2", "fd00::2"}, port("c", "", "", 8080, 80), port("c", v1.ProtocolSCTP, "", 9999, 9)))
	e2.p.OnPodUpsert(newPod("dns", []string{"10.244.1.3"}, port("c", v1.ProtocolUDP, "192.0.2.1", 53, 5353)))
	e2.p.SetPodsSynced()
	e2.sync(t, full)
	if flushes, msgs := e.conn.Stats(); flushes != 0 {
		t.Errorf("restart sent %d messages", msgs)
	}
	if c := e2.ct.ClearedFilters(); len(c) != 0 {
		t.Errorf("restart cleared %v", c)
	}
}

func TestProxierPodLifecycle(t *testing.T) {
	e := newFakeEnv(t, nil, ipv6Sysctl("1"))
	e.p.SetPodsSynced()
	web := newPod("web", []string{"10.244.1.2"}, port("c", v1.ProtocolUDP, "", 53, 5353))
	steps := []struct {
		name    string
		do      func()
		notify  bool
		want    []string // wildcard-ports elements
		cleared []conntrack.Filter
	}{
		{name: "created", do: func() { e.p.OnPodUpsert(web) }, notify: true,
			want: []string{"udp . 53 : 10.244.1.2 . 5353"}, cleared: []conntrack.Filter{{Protocol: udp, OrigDstPort: 53}}},
		{name: "status update unrelated to hostPorts", do: func() {
			w := web.DeepCopy()
			w.Status.Conditions = append(w.Status.Conditions, v1.PodCondition{Type: v1.PodReady, Status: v1.ConditionTrue})
			w.Labels = map[string]string{"a": "b"}
			e.p.OnPodUpsert(w)
		}, want: []string{"udp . 53 : 10.244.1.2 . 5353"}},
		{name: "new Pod IP (a sandbox restart)", do: func() {
			w := web.DeepCopy()
			w.Status.PodIPs, w.Status.PodIP = []v1.PodIP{{IP: "10.244.1.9"}}, "10.244.1.9"
			e.p.OnPodUpsert(w)
		}, notify: true, want: []string{"udp . 53 : 10.244.1.9 . 5353"}, cleared: []conntrack.Filter{{Protocol: udp, OrigDstPort: 53}}},
		{name: "succeeded", do: func() {
			w := web.DeepCopy()
			w.Status.Phase = v1.PodSucceeded
			e.p.OnPodUpsert(w)
		}, notify: true, cleared: []conntrack.Filter{{Protocol: udp, OrigDstPort: 53}}},
		{name: "running again", do: func() { e.p.OnPodUpsert(web) }, notify: true,
			want: []string{"udp . 53 : 10.244.1.2 . 5353"}, cleared: []conntrack.Filter{{Protocol: udp, OrigDstPort: 53}}},
		{name: "hostPort removed from the spec", do: func() {
			w := web.DeepCopy()
			w.Spec.Containers[0].Ports[0].HostPort = 0
			e.p.OnPodUpsert(w)
		}, notify: true, cleared: []conntrack.Filter{{Protocol: udp, OrigDstPort: 53}}},
		{name: "a Pod without hostPorts is not kept", do: func() {
			e.p.OnPodUpsert(newPod("plain", []string{"10.244.1.4"}, port("c", "", "", 0, 80)))
			e.p.OnPodDelete("default", "plain")
		}},
		{name: "back, then deleted", do: func() { e.p.OnPodUpsert(web); e.p.OnPodDelete("default", "web") }, notify: true},
	}
	for _, s := range steps {
		e.notices.Store(0)
		e.ct.Reset()
		s.do()
		if got := e.notices.Load() > 0; got != s.notify {
			t.Errorf("%s: notified %v, want %v", s.name, got, s.notify)
		}
		e.sync(t, partial)
		if got := e.elems(t, "ip", mapWildcard); !slices.Equal(got, s.want) {
			t.Errorf("%s: wildcard-ports %q, want %q", s.name, got, s.want)
		}
		if got := e.ct.ClearedFilters(); !slices.Equal(got, s.cleared) {
			t.Errorf("%s: cleared %v, want %v", s.name, got, s.cleared)
		}
	}
	if d := e.dump(t); strings.Contains(d, "table ip6") {
		t.Errorf("ip6 table programmed on a node with IPv6 disabled:\n%s", d)
	}
}

// TestProxierKeepsAdoptedMappingsUntilPodsSynced: a restarted agent keeps
// the mappings of Pods it has not heard of until the Pod list is complete.
func TestProxierKeepsAdoptedMappingsUntilPodsSynced(t *testing.T) {
	a := newPod("a", []string{"10.244.1.2"}, port("c", "", "", 8080, 80))
	b := newPod("b", []string{"10.244.1.3"}, port("c", v1.ProtocolUDP, "", 53, 53))
	first := newFakeEnv(t, nil, ipv6Sysctl("1"))
	first.p.OnPodUpsert(a)
	first.p.OnPodUpsert(b)
	first.p.SetPodsSynced()
	first.sync(t, full)
	first.conn.Stats()

	e := newFakeEnv(t, first.conn, ipv6Sysctl("1"))
	e.sync(t, full) // no Pods yet
	if flushes, msgs := e.conn.Stats(); flushes != 0 {
		t.Errorf("restart before any Pod sent %d messages", msgs)
	}
	e.p.OnPodUpsert(a)
	e.sync(t, partial)
	if flushes, msgs := e.conn.Stats(); flushes != 0 {
		t.Errorf("restart with part of the Pods sent %d messages", msgs)
	}
	// A change of a known Pod is applied; the unknown one stays.
	a2 := a.DeepCopy()
	a2.Status.PodIPs = []v1.PodIP{{IP: "10.244.1.7"}}
	e.p.OnPodUpsert(a2)
	e.sync(t, partial)
	want := []string{"tcp . 8080 : 10.244.1.7 . 80", "udp . 53 : 10.244.1.3 . 53"}
	if got := e.elems(t, "ip", mapWildcard); !slices.Equal(got, want) {
		t.Errorf("before the Pods are synced: %q, want %q", got, want)
	}
	e.p.SetPodsSynced()
	e.sync(t, partial)
	want = []string{"tcp . 8080 : 10.244.1.7 . 80"}
	if got := e.elems(t, "ip", mapWildcard); !slices.Equal(got, want) {
		t.Errorf("after the Pods are synced: %q, want %q", got, want)
	}
	if got := e.ct.ClearedFilters(); !slices.Equal(got, []conntrack.Filter{{Protocol: udp, OrigDstPort: 53}}) {
		t.Errorf("cleared %v, want the flows of the removed UDP mapping", got)
	}
}

func TestProxierReportsProblems(t *testing.T) {
	e := newFakeEnv(t, nil, ipv6Sysctl("1"))
	e.p.SetPodsSynced()
	e.p.OnPodUpsert(newPod("old", []string{"10.244.1.2"}, age(1), port("c", "", "", 30080, 80)))
	e.p.OnPodUpsert(newPod("young", []string{"10.244.1.3"}, age(2), port("c", "", "", 30080, 80), port("d", "", "127.0.0.1", 8080, 80)))
	web := &dataplane.ServicePort{Name: dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: "default", Name: "web"}, Protocol: tcp},
		Port: 80, NodePort: 30080}
	e.st.Services[web.Name] = web
	e.sync(t, full)
	reports := e.takeReports()
	if len(reports) != 1 {
		t.Fatalf("%d reports, want 1", len(reports))
	}
	r := reports[0]
	if len(r.Conflicts) != 1 || r.Conflicts[0].Winner.Pod != nn("old") || r.Conflicts[0].Loser.Pod != nn("young") {
		t.Errorf("conflicts %v", r.Conflicts)
	}
	if len(r.Collisions) != 1 || r.Collisions[0].Mapping.Pod != nn("old") || r.Collisions[0].Service != web.Name {
		t.Errorf("collisions %v", r.Collisions)
	}
	if len(r.Invalid) != 1 || r.Invalid[0].Reason != ReasonUnsupportedHostIP {
		t.Errorf("invalid %v", r.Invalid)
	}
	if got := e.elems(t, "ip", mapWildcard); !slices.Equal(got, []string{"tcp . 30080 : 10.244.1.2 . 80"}) {
		t.Errorf("the earlier Pod must keep the port: %q", got)
	}

	// Unchanged problems are not reported again.
	e.sync(t, full)
	if r := e.takeReports(); len(r) != 0 {
		t.Errorf("reported again: %v", r)
	}
	// Solved: the loser goes, the Service loses its NodePort.
	e.p.OnPodDelete("default", "young")
	delete(e.st.Services, web.Name)
	e.sync(t, partial)
	if r := e.takeReports(); len(r) != 1 || len(r[0].Conflicts)+len(r[0].Collisions)+len(r[0].Invalid) != 0 {
		t.Errorf("after solving: %v, want one empty report", r)
	}
}

func TestProxierStaleFlowsRetried(t *testing.T) {
	e := newFakeEnv(t, nil, ipv6Sysctl("1"))
	e.p.SetPodsSynced()
	e.ct.Err = errors.New("netlink: boom")
	e.p.OnPodUpsert(newPod("dns", []string{"10.244.1.2"}, port("c", v1.ProtocolUDP, "", 53, 53)))
	if err := e.p.Sync(context.Background(), e.st, partial); err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("sync with failing conntrack: %v", err)
	}
	// The table was programmed all the same.
	if got := e.elems(t, "ip", mapWildcard); len(got) != 1 {
		t.Errorf("wildcard-ports %q", got)
	}
	// The next sync (full, as after any failure) has no table change, but
	// still owes the clearing.
	e.ct.Err = nil
	e.sync(t, full)
	if got := e.ct.ClearedFilters(); !slices.Equal(got, []conntrack.Filter{{Protocol: udp, OrigDstPort: 53}}) {
		t.Errorf("cleared %v", got)
	}
	e.ct.Reset()
	e.sync(t, full)
	if got := e.ct.ClearedFilters(); len(got) != 0 {
		t.Errorf("cleared again: %v", got)
	}
}

func TestProxierRepairsDrift(t *testing.T) {
	table := ipv4.tableRef()
	for _, tc := range []struct {
		name string
		// drift changes the table behind the Proxier's back.
		drift func(c Conn)
		// partialSees: a partial sync (no Pod change) repairs it too.
		partialSees bool
	}{
		{name: "element deleted", drift: func(c Conn) {
			_ = c.SetDeleteElements(&nftables.Set{Table: table, Name: mapWildcard}, []nftables.SetElement{{Key: append(proto4(tcp), port4(8080)...)}})
		}},
		{name: "element changed", drift: func(c Conn) {
			s := &nftables.Set{Table: table, Name: mapWildcard}
			k := append(proto4(tcp), port4(8080)...)
			_ = c.SetDeleteElements(s, []nftables.SetElement{{Key: k}})
			_ = c.SetAddElements(s, []nftables.SetElement{{Key: k, Val: []byte{10, 9, 9, 9, 0, 80, 0, 0}}})
		}},
		{name: "foreign element added", drift: func(c Conn) {
			_ = c.SetAddElements(&nftables.Set{Table: table, Name: mapWildcard},
				[]nftables.SetElement{{Key: append(proto4(tcp), port4(22)...), Val: []byte{10, 9, 9, 9, 0, 22, 0, 0}}})
		}},
		{name: "chain flushed", drift: func(c Conn) { c.FlushChain(&nftables.Chain{Table: table, Name: chainHostPorts}) }},
		{name: "foreign rule added", drift: func(c Conn) {
			c.AddRule(&nftables.Rule{Table: table, Chain: &nftables.Chain{Table: table, Name: chainPrerouting},
				Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}})
		}},
		{name: "foreign chain added", drift: func(c Conn) { c.AddChain(&nftables.Chain{Table: table, Name: "mine"}) }},
		{name: "base chain on another priority", drift: func(c Conn) {
			c.DelTable(table)
			c.AddTable(table)
			prio, hook := nftables.ChainPriority(-100), *nftables.ChainHookPrerouting
			c.AddChain(&nftables.Chain{Table: table, Name: chainPrerouting, Type: nftables.ChainTypeNAT, Hooknum: &hook, Priority: &prio})
		}},
		{name: "table deleted", drift: func(c Conn) { c.DelTable(table) }, partialSees: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newFakeEnv(t, nil, ipv6Sysctl("1"))
			e.p.SetPodsSynced()
			e.p.OnPodUpsert(newPod("web", []string{"10.244.1.2"}, port("c", "", "", 8080, 80)))
			e.sync(t, partial)
			want := e.dump(t)
			tc.drift(e.conn)
			if err := e.conn.Flush(); err != nil {
				t.Fatal(err)
			}
			if e.dump(t) == want {
				t.Fatal("drift changed nothing")
			}
			e.sync(t, partial)
			if got := e.dump(t); (got == want) != tc.partialSees {
				t.Errorf("after a partial sync, repaired = %v, want %v:\n%s", got == want, tc.partialSees, got)
			}
			e.sync(t, full)
			if got := e.dump(t); got != want {
				t.Errorf("after a full sync:\n%s\nwant:\n%s", got, want)
			}
			// One sync repaired it (the partial or the full one).
			if n := e.p.Repairs(); n != 1 {
				t.Errorf("%d repairs counted, want 1", n)
			}
			// A Pod change is programming, not a repair.
			e.p.OnPodUpsert(newPod("db", []string{"10.244.1.3"}, port("c", "", "", 5432, 5432)))
			e.sync(t, partial)
			e.sync(t, full)
			if n := e.p.Repairs(); n != 1 {
				t.Errorf("a new Pod counted as a repair: %d, want 1", n)
			}
		})
	}
}

func TestProxierFailedTransaction(t *testing.T) {
	e := newFakeEnv(t, nil, ipv6Sysctl("1"))
	e.p.SetPodsSynced()
	e.p.OnPodUpsert(newPod("web", []string{"10.244.1.2"}, port("c", "", "", 8080, 80)))
	e.conn.FailFlush(unix.ENOBUFS)
	if err := e.p.Sync(context.Background(), e.st, partial); !errors.Is(err, unix.ENOBUFS) {
		t.Fatalf("sync: %v, want ENOBUFS", err)
	}
	if d := e.dump(t); d != "" {
		t.Fatalf("a failed transaction left:\n%s", d)
	}
	// No Pod changed since, and the runner may retry with a partial sync:
	// the failure made the next sync read the kernel again.
	e.sync(t, partial)
	if got := e.elems(t, "ip", mapWildcard); !slices.Equal(got, []string{"tcp . 8080 : 10.244.1.2 . 80"}) {
		t.Errorf("after the retry: %q", got)
	}
}

func TestProxierFamilies(t *testing.T) {
	for _, tc := range []struct {
		name   string
		sc     sysctl.Interface
		tables []string
	}{
		{"IPv6 enabled", ipv6Sysctl("0"), []string{"ip", "ip6"}},
		{"IPv6 disabled", ipv6Sysctl("1"), []string{"ip"}},
		{"kernel without IPv6", sysctl.NewFake(nil), []string{"ip"}},
		{"no sysctl: both", nil, []string{"ip", "ip6"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newFakeEnv(t, nil, tc.sc)
			e.p.SetPodsSynced()
			e.p.OnPodUpsert(newPod("web", []string{"10.244.1.2", "fd00::2"}, port("c", "", "", 8080, 80)))
			e.sync(t, full)
			var got []string
			for _, f := range allFamilies {
				if ok, _ := tableExists(e.conn, f); ok {
					got = append(got, f.name)
				}
			}
			if !slices.Equal(got, tc.tables) {
				t.Errorf("tables %v, want %v", got, tc.tables)
			}
		})
	}
}

func TestProxierCleanup(t *testing.T) {
	conn := NewFakeConn()
	foreign := &nftables.Table{Name: "other", Family: nftables.TableFamilyIPv4}
	conn.AddTable(foreign)
	if err := conn.Flush(); err != nil {
		t.Fatal(err)
	}
	e := newFakeEnv(t, conn, ipv6Sysctl("0"))
	// Cleanup needs no Sync, and succeeds with nothing to delete.
	if err := e.p.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.p.SetPodsSynced()
	e.p.OnPodUpsert(newPod("web", []string{"10.244.1.2", "fd00::2"}, port("c", "", "", 8080, 80)))
	e.sync(t, full)
	if err := e.p.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if d := e.dump(t); d != "" {
		t.Errorf("left after cleanup:\n%s", d)
	}
	if tables, _ := conn.ListTablesOfFamily(nftables.TableFamilyIPv4); len(tables) != 1 || tables[0].Name != "other" {
		t.Errorf("tables after cleanup: %v", tables)
	}
	// The next sync programs everything again.
	e.sync(t, partial)
	if got := e.elems(t, "ip6", mapWildcard); len(got) != 1 {
		t.Errorf("after cleanup and sync: %q", got)
	}
}

// TestProxierConcurrentPods runs Pod events against syncs (for -race).
func TestProxierConcurrentPods(t *testing.T) {
	e := newFakeEnv(t, nil, ipv6Sysctl("1"))
	e.p.SetPodsSynced()
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				name := fmt.Sprintf("p%d-%d", g, i%5)
				e.p.OnPodUpsert(newPod(name, []string{fmt.Sprintf("10.244.%d.%d", g, i%5+2)}, port("c", "", "", int32(10000+g*10+i%5), 80)))
				if i%3 == 0 {
					e.p.OnPodDelete("default", name)
				}
			}
		}()
	}
	for range 20 {
		e.sync(t, partial)
	}
	wg.Wait()
	e.sync(t, partial)
	want := 0
	e.p.podMu.Lock()
	for range e.p.pods {
		want++
	}
	e.p.podMu.Unlock()
	if got := len(e.elems(t, "ip", mapWildcard)); got != want {
		t.Errorf("%d mappings for %d Pods", got, want)
	}
}
