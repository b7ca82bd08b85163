package agentspec

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard/switchyard/test/netnstest"
)

// Reply is one echo server answer: who answered, and the source address it
// saw.
type Reply struct {
	ID  string
	Src netip.Addr
}

// ParseReply splits an echo reply.
func ParseReply(t *testing.T, reply string) Reply {
	t.Helper()
	id, remote, err := netnstest.ReplyID(reply)
	if err != nil {
		t.Fatal(err)
	}
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		t.Fatalf("reply %q: source %q: %v", reply, remote, err)
	}
	return Reply{ID: id, Src: ap.Addr()}
}

// RequestAll makes n requests (proto "tcp" or "udp") from ns (nil = the
// test process's namespace), one connection each, and returns the parsed
// replies.
func RequestAll(t *testing.T, ns *netnstest.NS, proto, addr string, n int) []Reply {
	t.Helper()
	out := make([]Reply, 0, n)
	for i := range n {
		reply, err := netnstest.Request(ns, proto, addr, fmt.Sprintf("req%d", i), 5*time.Second)
		if err != nil {
			t.Fatalf("request %d to %s %s from %s: %v", i, proto, addr, ns.Name(), err)
		}
		out = append(out, ParseReply(t, reply))
	}
	return out
}

// CountIDs counts the replies per backend.
func CountIDs(rs []Reply) map[string]int {
	m := map[string]int{}
	for _, r := range rs {
		m[r.ID]++
	}
	return m
}

// maxSpreadRequests bounds the requests Spread makes when the choice is
// random: the chance that one of two endpoints never answers in 60
// requests is 2^-59.
const maxSpreadRequests = 60

// Spread makes n requests (n a multiple of len(want)) from ns to addr and
// returns the replies: every reply must come from a backend in want, and
// every backend in want must answer. With FeatureRoundRobin each backend
// answers exactly n/len(want) of them; otherwise (a random choice) more
// requests follow until every backend answered, at most 60 in all.
func (e *Env) Spread(t *testing.T, what string, ns *netnstest.NS, proto, addr string, n int, want ...Backend) []Reply {
	t.Helper()
	ids := map[string]bool{}
	for _, be := range want {
		ids[be.ID] = true
	}
	rs := RequestAll(t, ns, proto, addr, n)
	if e.DP.Supports(FeatureRoundRobin) {
		got := CountIDs(rs)
		for id := range ids {
			if got[id] != n/len(want) {
				t.Errorf("%s: replies per backend %v, want %d each of %v (round robin)", what, got, n/len(want), slices.Sorted(maps.Keys(ids)))
				break
			}
		}
	}
	for len(rs) < maxSpreadRequests && len(CountIDs(rs)) < len(ids) {
		rs = append(rs, RequestAll(t, ns, proto, addr, 1)...)
	}
	got := CountIDs(rs)
	for id := range got {
		if !ids[id] {
			t.Errorf("%s: %s answered (%v), want only %v", what, id, got, slices.Sorted(maps.Keys(ids)))
		}
	}
	for id := range ids {
		if got[id] == 0 {
			t.Errorf("%s: %s never answered in %d requests (%v)", what, id, len(rs), got)
		}
	}
	return rs
}

// Only makes n requests and checks that each is answered by be.
func Only(t *testing.T, what string, ns *netnstest.NS, proto, addr string, n int, be Backend) []Reply {
	t.Helper()
	rs := RequestAll(t, ns, proto, addr, n)
	if got := CountIDs(rs); got[be.ID] != n {
		t.Errorf("%s: replies %v, want all %d from %s", what, got, n, be.ID)
	}
	return rs
}

// ExpectSources checks the source every backend saw against
// want(backend).
func ExpectSources(t *testing.T, what string, topo *Topology, rs []Reply, want func(be Backend) netip.Addr) {
	t.Helper()
	for _, r := range rs {
		be, ok := topo.Backend(r.ID)
		if !ok {
			t.Errorf("%s: reply from unknown backend %q", what, r.ID)
			continue
		}
		if w := want(be); r.Src != w {
			t.Errorf("%s: %s saw source %s, want %s", what, r.ID, r.Src, w)
		}
	}
}

// Masqueraded is the source a backend sees for SNATed traffic.
func Masqueraded(be Backend) netip.Addr { return be.NodeSide() }

// From returns a want function for ExpectSources: the source is kept.
func From(addr netip.Addr) func(Backend) netip.Addr {
	return func(Backend) netip.Addr { return addr }
}

// ExpectRefused checks that a request is rejected at once (connection
// refused: a TCP reset or an ICMP port unreachable), not left to time out.
func ExpectRefused(t *testing.T, what string, ns *netnstest.NS, proto, addr string) {
	t.Helper()
	start := time.Now()
	reply, err := netnstest.Request(ns, proto, addr, "hello", 3*time.Second)
	d := time.Since(start)
	switch {
	case err == nil:
		t.Errorf("%s: %s %s answered %q, want connection refused", what, proto, addr, reply)
	case !errors.Is(err, syscall.ECONNREFUSED):
		t.Errorf("%s: %s %s: %v after %v, want connection refused at once", what, proto, addr, err, d.Round(time.Millisecond))
	case d > time.Second:
		t.Errorf("%s: %s %s refused only after %v", what, proto, addr, d)
	}
}

// ExpectNoAnswer checks that a request gets no answer.
func ExpectNoAnswer(t *testing.T, what string, ns *netnstest.NS, proto, addr string) {
	t.Helper()
	if reply, err := netnstest.Request(ns, proto, addr, "x", 2*time.Second); err == nil {
		t.Errorf("%s: %s %s answered %q, want no answer", what, proto, addr, reply)
	}
}

// ExpectSameSnapshot reports the lines that differ between two snapshots.
func ExpectSameSnapshot(t *testing.T, what, before, after string) {
	t.Helper()
	if before == after {
		return
	}
	bl, al := strings.Split(before, "\n"), strings.Split(after, "\n")
	var gone, added []string
	for _, l := range bl {
		if !slices.Contains(al, l) {
			gone = append(gone, l)
		}
	}
	for _, l := range al {
		if !slices.Contains(bl, l) {
			added = append(added, l)
		}
	}
	t.Errorf("%s: the node changed\nonly before:\n  %s\nonly after:\n  %s\n(order may differ too; full before:\n%s)",
		what, strings.Join(gone, "\n  "), strings.Join(added, "\n  "), before)
}

// HoldConnection opens a TCP connection from ns to addr, exchanges one
// message (so it is established and its backend known) and keeps it open
// until the test ends (or the caller closes it). It returns the backend
// that answered and the connection.
func HoldConnection(t *testing.T, topo *Topology, ns *netnstest.NS, addr string) (Backend, net.Conn) {
	t.Helper()
	conn, err := netnstest.Dial(ns, "tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	reply, err := netnstest.Exchange(conn, "hold", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	id := ParseReply(t, reply).ID
	be, ok := topo.Backend(id)
	if !ok {
		t.Fatalf("held connection answered by unknown backend %q", id)
	}
	return be, conn
}
