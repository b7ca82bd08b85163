package ipvs

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/switchyard/switchyard/dataplane"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

// golden compares got with testdata/<name>.golden (rewritten with -update).
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from golden file:\n--- got\n%s--- want\n%s", path, got, want)
	}
}

// expectDump compares a dump with a raw string literal whose lines are
// indented with tabs (removed) and starts with a newline (removed).
func expectDump(t *testing.T, what, got, want string) {
	t.Helper()
	want = strings.TrimLeft(dedent(want), "\n")
	if got != want {
		t.Errorf("%s:\n--- got\n%s--- want\n%s", what, got, want)
	}
}

// dedent removes the common tab indentation of a raw string literal.
func dedent(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimLeft(l, "\t")
	}
	return strings.Join(lines, "\n")
}

func addr(s string) netip.Addr         { return netip.MustParseAddr(s) }
func addrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = addr(s)
	}
	return out
}

func key(s string) Key {
	k, err := ParseKey(s)
	if err != nil {
		panic(err)
	}
	return k
}

func spn(nsName, port string, proto dataplane.Protocol) dataplane.ServicePortName {
	ns, name, _ := strings.Cut(nsName, "/")
	return dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: ns, Name: name}, Port: port, Protocol: proto}
}

// svc builds a ServicePort; mutate the result for extras.
func svc(nsName, portName string, proto dataplane.Protocol, port uint16, clusterIPs ...string) *dataplane.ServicePort {
	return &dataplane.ServicePort{Name: spn(nsName, portName, proto), Port: port, ClusterIPs: addrs(clusterIPs...)}
}

func ready(ap string) dataplane.Endpoint {
	return dataplane.Endpoint{Addr: addrPort(ap), Ready: true, Serving: true}
}

func terminating(ap string, serving bool) dataplane.Endpoint {
	return dataplane.Endpoint{Addr: addrPort(ap), Serving: serving, Terminating: true}
}

// put adds or replaces a Service port and its endpoints in st.
func put(st *dataplane.State, sp *dataplane.ServicePort, eps ...dataplane.Endpoint) {
	st.Services[sp.Name] = sp
	slices.SortFunc(eps, dataplane.CompareEndpoints)
	if len(eps) == 0 {
		delete(st.Endpoints, sp.Name)
	} else {
		st.Endpoints[sp.Name] = eps
	}
}

func remove(st *dataplane.State, name dataplane.ServicePortName) {
	delete(st.Services, name)
	delete(st.Endpoints, name)
}

func changed(names ...dataplane.ServicePortName) dataplane.Changes {
	c := dataplane.Changes{Services: map[dataplane.ServiceName]struct{}{}}
	for _, n := range names {
		c.Services[n.ServiceName] = struct{}{}
	}
	return c
}

var full = dataplane.Changes{Full: true}

// fakeClock is a manual clock; timers fire only through Fire.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	at      time.Time
	f       func()
	stopped bool
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{at: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		was := !t.stopped
		t.stopped = true
		return was
	}
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// Pending counts armed timers.
func (c *fakeClock) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, t := range c.timers {
		if !t.stopped {
			n++
		}
	}
	return n
}

// FireDue runs timers that are due, synchronously, and returns how many.
func (c *fakeClock) FireDue() int {
	c.mu.Lock()
	var due []*fakeTimer
	for _, t := range c.timers {
		if !t.stopped && !t.at.After(c.now) {
			t.stopped = true
			due = append(due, t)
		}
	}
	c.mu.Unlock()
	for _, t := range due {
		t.f()
	}
	return len(due)
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }
