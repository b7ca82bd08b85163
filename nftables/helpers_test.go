package nftables

import (
	"context"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/sysctl"
	"github.com/switchyard/switchyard/test/netnstest"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

// Real-kernel tests program network namespaces they create, never the
// root namespace.
func requireKernel(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("real-kernel test skipped in -short mode")
	}
	if os.Geteuid() != 0 {
		t.Skip("real-kernel test needs root (network namespaces, nftables)")
	}
}

// svc describes one Service port for test States.
type svc struct {
	ns, name, port string
	proto          dataplane.Protocol
	svcPort        uint16
	nodePort       uint16
	clusterIPs     []string
	externalIPs    []string
	lbIPs          []string
	endpoints      []string // "ip:port", ready
	terminating    []string // "ip:port", serving and terminating
	remote         []string // "ip:port", ready, on another node (node-b)

	etpLocal, itpLocal bool
	affinity           time.Duration // sessionAffinity ClientIP timeout
	sourceRanges       []string      // loadBalancerSourceRanges
	maxConns           int           // switchyard.io/max-connections-per-backend
}

func (s svc) portName() dataplane.ServicePortName {
	return dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: s.ns, Name: s.name}, Port: s.port, Protocol: s.proto}
}

func addrs(ss []string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func newState(svcs ...svc) *dataplane.State {
	st := dataplane.NewState()
	st.NodeName = "node-a"
	for _, s := range svcs {
		putService(st, s)
	}
	return st
}

// putService adds or replaces one Service port.
func putService(st *dataplane.State, s svc) {
	name := s.portName()
	st.Services[name] = &dataplane.ServicePort{
		Name: name, Port: s.svcPort, NodePort: s.nodePort,
		ClusterIPs: addrs(s.clusterIPs), ExternalIPs: addrs(s.externalIPs), LoadBalancerIPs: addrs(s.lbIPs),
		ExternalPolicyLocal: s.etpLocal, InternalPolicyLocal: s.itpLocal, SessionAffinityTimeout: s.affinity,
		LoadBalancerSourceRanges: prefixes(s.sourceRanges...), MaxConnectionsPerBackend: s.maxConns,
	}
	var eps []dataplane.Endpoint
	for _, e := range s.endpoints {
		eps = append(eps, dataplane.Endpoint{Addr: netip.MustParseAddrPort(e), Ready: true, Serving: true, NodeName: "node-a"})
	}
	for _, e := range s.remote {
		eps = append(eps, dataplane.Endpoint{Addr: netip.MustParseAddrPort(e), Ready: true, Serving: true, NodeName: "node-b"})
	}
	for _, e := range s.terminating {
		eps = append(eps, dataplane.Endpoint{Addr: netip.MustParseAddrPort(e), Serving: true, Terminating: true, NodeName: "node-a"})
	}
	slices.SortFunc(eps, dataplane.CompareEndpoints)
	delete(st.Endpoints, name)
	if len(eps) > 0 {
		st.Endpoints[name] = eps
	}
}

// changed returns a partial Changes naming the Services.
func changed(names ...dataplane.ServiceName) dataplane.Changes {
	c := dataplane.Changes{Services: map[dataplane.ServiceName]struct{}{}}
	for _, n := range names {
		c.Services[n] = struct{}{}
	}
	return c
}

var full = dataplane.Changes{Full: true}

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

// golden compares got with testdata/<name>.golden (rewritten with -update).
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
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

// countingConn counts the netlink messages queued through it. Each queuing
// call of the library is one message, except AddSet with elements (two:
// the set and its elements).
type countingConn struct {
	Conn
	mu       sync.Mutex
	msgs     int
	flushes  int
	lastSent int
}

func (c *countingConn) add(n int) {
	c.mu.Lock()
	c.msgs += n
	c.mu.Unlock()
}

func (c *countingConn) AddTable(t *nftables.Table) *nftables.Table {
	c.add(1)
	return c.Conn.AddTable(t)
}
func (c *countingConn) DelTable(t *nftables.Table) { c.add(1); c.Conn.DelTable(t) }
func (c *countingConn) AddChain(ch *nftables.Chain) *nftables.Chain {
	c.add(1)
	return c.Conn.AddChain(ch)
}
func (c *countingConn) DelChain(ch *nftables.Chain)             { c.add(1); c.Conn.DelChain(ch) }
func (c *countingConn) FlushChain(ch *nftables.Chain)           { c.add(1); c.Conn.FlushChain(ch) }
func (c *countingConn) AddRule(r *nftables.Rule) *nftables.Rule { c.add(1); return c.Conn.AddRule(r) }
func (c *countingConn) DelSet(s *nftables.Set)                  { c.add(1); c.Conn.DelSet(s) }
func (c *countingConn) AddSet(s *nftables.Set, v []nftables.SetElement) error {
	if len(v) > 0 {
		c.add(2)
	} else {
		c.add(1)
	}
	return c.Conn.AddSet(s, v)
}
func (c *countingConn) SetAddElements(s *nftables.Set, v []nftables.SetElement) error {
	c.add(1)
	return c.Conn.SetAddElements(s, v)
}
func (c *countingConn) SetDeleteElements(s *nftables.Set, v []nftables.SetElement) error {
	c.add(1)
	return c.Conn.SetDeleteElements(s, v)
}
func (c *countingConn) Flush() error {
	c.mu.Lock()
	c.flushes++
	c.lastSent, c.msgs = c.msgs, 0
	c.mu.Unlock()
	return c.Conn.Flush()
}

// take returns the messages sent by Flush since the last take, and how many
// Flush calls there were.
func (c *countingConn) take() (msgs, flushes int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	msgs, flushes = c.lastSent, c.flushes
	c.lastSent, c.flushes = 0, 0
	return msgs, flushes
}

// kernelNS is a network namespace with an nftables connection in it.
type kernelNS struct {
	ns   *netnstest.NS
	conn *NetlinkConn
	cnt  *countingConn
}

func newKernelNS(t testing.TB, prefix string) *kernelNS {
	t.Helper()
	ns := netnstest.New(t, prefix)
	return &kernelNS{ns: ns, conn: openConn(t, ns)}
}

func openConn(t testing.TB, ns *netnstest.NS) *NetlinkConn {
	t.Helper()
	conn, err := NewConn(int(ns.NsHandle()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// proxier returns a Proxier on a counting wrapper of the namespace's
// connection.
func (k *kernelNS) proxier(t testing.TB, cfg Config) *Proxier {
	t.Helper()
	k.cnt = &countingConn{Conn: k.conn}
	p, err := NewProxier(cfg, k.cnt, sysctl.NewAt(k.ns.NsHandle()))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func (k *kernelNS) dump(t testing.TB) string {
	t.Helper()
	s, err := DumpTable(k.conn)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func mustSync(t testing.TB, p *Proxier, st *dataplane.State, c dataplane.Changes) {
	t.Helper()
	if err := p.Sync(context.Background(), st, c); err != nil {
		t.Fatalf("sync (full=%v): %v", c.Full, err)
	}
}

// dedent removes the common tab indentation of a raw string literal and
// its leading newline.
func dedent(s string) string {
	lines := strings.Split(strings.TrimPrefix(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimLeft(l, "\t")
	}
	return strings.Join(lines, "\n")
}

func addrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func (c *countingConn) Discard() {
	if d, ok := c.Conn.(interface{ Discard() }); ok {
		d.Discard()
	}
}
