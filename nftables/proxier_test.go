package nftables

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/sysctl"
)

// manyServices returns n Services, each with a cluster IP and two
// endpoints; every tenth has a NodePort and every seventh none endpoints.
func manyServices(n int) []svc {
	out := make([]svc, 0, n)
	for i := range n {
		s := svc{ns: "bench", name: fmt.Sprintf("svc-%05d", i), port: "http", proto: dataplane.TCP, svcPort: 80,
			clusterIPs: []string{fmt.Sprintf("10.96.%d.%d", i/250, i%250+1)}}
		if i%7 != 3 {
			s.endpoints = []string{fmt.Sprintf("10.244.%d.%d:8080", i/250, i%250+1), fmt.Sprintf("10.245.%d.%d:8080", i/250, i%250+1)}
		}
		if i%10 == 0 {
			s.nodePort = uint16(30000 + i%2700)
		}
		out = append(out, s)
	}
	return out
}

// TestPartialSyncMessages shows that a one-endpoint change costs the same
// number of netlink messages whatever the number of Services, and that
// partial syncs leave the kernel exactly as a full sync would.
func TestPartialSyncMessages(t *testing.T) {
	requireKernel(t)
	counts := map[int][]int{}
	for _, n := range []int{20, 500} {
		k := newKernelNS(t, "sy-nft-part")
		p := k.proxier(t, Config{ClusterCIDRs: clusterCIDR})
		svcs := manyServices(n)
		st := newState(svcs...)
		mustSync(t, p, st, full)
		k.cnt.take()

		target := svcs[7]
		steps := []struct {
			name string
			edit func(s *svc)
		}{
			{"add endpoint", func(s *svc) { s.endpoints = append(s.endpoints, "10.246.0.7:8080") }},
			{"remove endpoint", func(s *svc) { s.endpoints = s.endpoints[:2] }},
			{"endpoint not ready", func(s *svc) { s.terminating = []string{s.endpoints[1]}; s.endpoints = s.endpoints[:1] }},
			{"no endpoints", func(s *svc) { s.endpoints, s.terminating = nil, nil }},
			{"endpoints back", func(s *svc) { s.endpoints = []string{"10.244.0.8:8080", "10.245.0.8:8080"} }},
			{"add node port and external IP", func(s *svc) { s.nodePort, s.externalIPs = 31999, []string{"192.0.2.7"} }},
		}
		for _, step := range steps {
			step.edit(&target)
			putService(st, target)
			mustSync(t, p, st, changed(target.portName().ServiceName))
			msgs, flushes := k.cnt.take()
			if flushes != 1 {
				t.Fatalf("%d Services, %s: %d transactions, want 1", n, step.name, flushes)
			}
			counts[n] = append(counts[n], msgs)
			// The cache must equal the kernel: a full sync finds nothing to do.
			mustSync(t, p, st, full)
			if msgs, _ := k.cnt.take(); msgs != 0 {
				t.Fatalf("%d Services, %s: full sync after the partial one sent %d messages", n, step.name, msgs)
			}
		}
		// Removing the Service deletes its chain and elements.
		delete(st.Services, target.portName())
		delete(st.Endpoints, target.portName())
		mustSync(t, p, st, changed(target.portName().ServiceName))
		msgs, _ := k.cnt.take()
		counts[n] = append(counts[n], msgs)
		if d := k.dump(t); strings.Contains(d, "bench/svc-00007") || strings.Contains(d, "10.96.0.8 ") {
			t.Errorf("%d Services: removed Service still in the table:\n%s", n, d)
		}
		mustSync(t, p, st, full)
		if msgs, _ := k.cnt.take(); msgs != 0 {
			t.Fatalf("%d Services: full sync after removal sent %d messages", n, msgs)
		}
	}
	t.Logf("messages per step (add, remove, not ready, none, back, nodeport, delete): 20 Services %v, 500 Services %v", counts[20], counts[500])
	if fmt.Sprint(counts[20]) != fmt.Sprint(counts[500]) {
		t.Errorf("message counts depend on the number of Services: %v vs %v", counts[20], counts[500])
	}
	// Flush the chain, its masquerade rule, the anonymous map (set and
	// elements), the dnat rule, one hairpin element.
	if got := counts[20][0]; got != 6 {
		t.Errorf("adding one endpoint sent %d messages, want 6", got)
	}
}

// TestPartialMatchesFull applies a sequence of changes partially in one
// namespace and fully in a fresh one each time; the tables must be equal.
func TestPartialMatchesFull(t *testing.T) {
	requireKernel(t)
	cfg := Config{ClusterCIDRs: clusterCIDR, ConntrackDropInvalid: true}
	k := newKernelNS(t, "sy-nft-pm")
	p := k.proxier(t, cfg)
	a := svc{ns: "default", name: "a", proto: dataplane.TCP, svcPort: 80, clusterIPs: []string{"10.96.0.1"}, endpoints: []string{"10.244.1.1:80"}}
	b := svc{ns: "default", name: "b", proto: dataplane.UDP, svcPort: 53, nodePort: 30053, clusterIPs: []string{"10.96.0.2"}}
	st := newState(a, b)
	mustSync(t, p, st, full)
	steps := []func(){
		func() { b.endpoints = []string{"10.244.1.1:53"} }, // shares a's pod
		func() { a.endpoints = nil },                       // hairpin element stays for b
		func() { b.endpoints = nil },                       // now it goes
		func() { a.externalIPs, b.externalIPs = []string{"192.0.2.9"}, []string{"192.0.2.9"} }, // different protocols: no conflict
		func() { a.lbIPs, a.endpoints = []string{"198.51.100.1"}, []string{"10.244.3.3:80", "10.244.3.4:80"} },
		// Traffic policies, affinity, source ranges.
		func() { a.etpLocal, a.remote, a.nodePort = true, []string{"10.244.9.9:80"}, 30080 },
		func() { a.endpoints = nil }, // no local endpoint: drop sets
		func() { a.affinity, a.endpoints = time.Minute, []string{"10.244.3.3:80"} }, // affinity maps
		func() { a.itpLocal, b.itpLocal, b.remote = true, true, []string{"10.244.9.8:53"} },
		func() { a.sourceRanges = []string{"192.0.2.0/24"} },
		func() { a.lbIPs = nil }, // firewall goes with the LB IP
		func() { a.affinity, a.etpLocal, a.itpLocal = 0, false, false },
		func() { a.remote, b.remote = nil, nil },
	}
	for i, step := range steps {
		step()
		putService(st, a)
		putService(st, b)
		mustSync(t, p, st, changed(a.portName().ServiceName, b.portName().ServiceName))
		fresh := newKernelNS(t, "sy-nft-pm")
		mustSync(t, fresh.proxier(t, cfg), st, full)
		if got, want := k.dump(t), fresh.dump(t); got != want {
			t.Fatalf("step %d: partial syncs left\n%s\nfull sync gives\n%s", i, got, want)
		}
	}
}

// TestFullSyncRepairsDrift edits the table behind the Proxier's back.
func TestFullSyncRepairsDrift(t *testing.T) {
	requireKernel(t)
	cfg := Config{ClusterCIDRs: clusterCIDR, ConntrackDropInvalid: true}
	k := newKernelNS(t, "sy-nft-drift")
	p := k.proxier(t, cfg)
	other := svc{ns: "default", name: "other", proto: dataplane.TCP, svcPort: 81, clusterIPs: []string{"10.96.0.11"},
		endpoints: []string{"10.244.1.9:81"}}
	st := newState(withNodePort(web(), 30080), other)
	mustSync(t, p, st, full)
	mustSync(t, p, st, full) // periodic, nothing to do
	if n := p.Repairs(); n != 0 {
		t.Fatalf("repairs after the first and an idle full sync: %d, want 0", n)
	}
	want := k.dump(t)
	table := ipv4.tableRef()
	webChain := servicePortChain(web().portName())
	otherChain := servicePortChain(other.portName())

	// Foreign writes, each in its own transaction.
	c := k.conn
	edits := []func(){
		// A Service chain and the map element leading to it.
		func() {
			mustDelElem(t, c, mapServiceIPs, frontend{addr: addrs([]string{"10.96.0.11"})[0], proto: protoTCP, port: 81}.key())
			c.DelChain(&nftables.Chain{Table: table, Name: otherChain})
		},
		// A NodePort element and a hairpin element.
		func() {
			mustDelElem(t, c, mapServiceNodePorts, frontend{proto: protoTCP, port: 30080}.key())
			mustDelElem(t, c, setHairpin, hairpinKey(addrs([]string{"10.244.1.2"})[0]))
		},
		// The rules of a Service chain and of a fixed chain.
		func() {
			c.FlushChain(&nftables.Chain{Table: table, Name: webChain})
			c.FlushChain(&nftables.Chain{Table: table, Name: chainNatPostrouting})
		},
		// A rule added to a chain, an element added, a stale chain.
		func() {
			c.AddRule(&nftables.Rule{Table: table, Chain: &nftables.Chain{Name: chainServices}, Exprs: []expr.Any{verdict(expr.VerdictAccept)}})
			mustAddElem(t, c, setNoEndpointServices, frontend{addr: addrs([]string{"10.96.9.9"})[0], proto: protoUDP, port: 9}.key())
			c.AddChain(&nftables.Chain{Table: table, Name: "svc-STALE000-gone/gone/tcp"})
		},
		// A base chain.
		func() { c.DelChain(&nftables.Chain{Table: table, Name: chainFilterForward}) },
	}
	for i, edit := range edits {
		edit()
		if err := c.Flush(); err != nil {
			t.Fatalf("edit %d: %v", i, err)
		}
		if k.dump(t) == want {
			t.Fatalf("edit %d changed nothing", i)
		}
		mustSync(t, p, st, full)
		if got := k.dump(t); got != want {
			t.Fatalf("edit %d not repaired:\n--- got\n%s--- want\n%s", i, got, want)
		}
		msgs, _ := k.cnt.take()
		t.Logf("edit %d repaired with %d messages", i, msgs)
		if n := p.Repairs(); n != uint64(i+1) {
			t.Errorf("edit %d: %d repairs counted, want %d", i, n, i+1)
		}
	}

	// A model change is programming, not a repair, in a partial sync or
	// in a full one that carries it.
	before := p.Repairs()
	o2 := other
	o2.endpoints = []string{"10.244.1.10:81"}
	putService(st, o2)
	mustSync(t, p, st, changed(o2.portName().ServiceName))
	o2.endpoints = []string{"10.244.1.11:81"}
	putService(st, o2)
	ch := changed(o2.portName().ServiceName)
	ch.Full = true
	mustSync(t, p, st, ch)
	if n := p.Repairs(); n != before {
		t.Errorf("endpoint changes counted as %d repairs", n-before)
	}
	// The table deleted: found by the next sync, even a partial one.
	c.DelTable(table)
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	o2.endpoints = []string{"10.244.1.12:81"}
	putService(st, o2)
	mustSync(t, p, st, changed(o2.portName().ServiceName))
	if n := p.Repairs(); n != before+1 {
		t.Errorf("table deleted: %d repairs counted, want 1", n-before)
	}
}

func mustDelElem(t *testing.T, c Conn, set string, key []byte) {
	t.Helper()
	if err := c.SetDeleteElements(&nftables.Set{Table: ipv4.tableRef(), Name: set}, []nftables.SetElement{{Key: key}}); err != nil {
		t.Fatal(err)
	}
}

func mustAddElem(t *testing.T, c Conn, set string, key []byte) {
	t.Helper()
	if err := c.SetAddElements(&nftables.Set{Table: ipv4.tableRef(), Name: set}, []nftables.SetElement{{Key: key}}); err != nil {
		t.Fatal(err)
	}
}

// addForeignTable creates "table ip foreign" with a base chain and a rule.
func addForeignTable(t *testing.T, c Conn) {
	t.Helper()
	ft := c.AddTable(&nftables.Table{Name: "foreign", Family: nftables.TableFamilyIPv4})
	ch := c.AddChain(&nftables.Chain{Table: ft, Name: "input", Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter})
	c.AddRule(&nftables.Rule{Table: ft, Chain: ch, Exprs: []expr.Any{&expr.Counter{}}})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
}

func foreignRules(t *testing.T, c Conn) int {
	t.Helper()
	rules, err := c.GetRules(&nftables.Table{Name: "foreign", Family: nftables.TableFamilyIPv4}, &nftables.Chain{Name: "input"})
	if err != nil {
		t.Fatalf("foreign table: %v", err)
	}
	return len(rules)
}

// TestCleanup: only switchyard's table goes, repeatedly, from any process.
func TestCleanup(t *testing.T) {
	requireKernel(t)
	k := newKernelNS(t, "sy-nft-clean")
	addForeignTable(t, k.conn)
	p := k.proxier(t, Config{ClusterCIDRs: clusterCIDR})
	mustSync(t, p, newState(web()), full)
	if foreignRules(t, k.conn) != 1 {
		t.Fatal("Sync touched the foreign table")
	}
	// A fresh Proxier (as `switchyard --cleanup`) cleans up, twice.
	fresh := k.proxier(t, Config{})
	for i := range 2 {
		if err := fresh.Cleanup(context.Background()); err != nil {
			t.Fatalf("cleanup %d: %v", i, err)
		}
	}
	if d := k.dump(t); d != "" {
		t.Errorf("table left after cleanup:\n%s", d)
	}
	if foreignRules(t, k.conn) != 1 {
		t.Error("Cleanup touched the foreign table")
	}
	// The old Proxier notices on its next sync, even a partial one.
	mustSync(t, p, newState(web()), changed(web().portName().ServiceName))
	if !strings.Contains(k.dump(t), "svc-") {
		t.Error("sync after cleanup did not rebuild the table")
	}
}

func TestSysctlBeLiberal(t *testing.T) {
	requireKernel(t)
	k := newKernelNS(t, "sy-nft-sysctl")
	cfg := Config{ConntrackTCPBeLiberal: true}
	if _, err := NewProxier(cfg, k.conn, nil); err == nil {
		t.Error("NewProxier accepted ConntrackTCPBeLiberal without a Sysctl")
	}
	p := k.proxier(t, cfg)
	mustSync(t, p, newState(web()), full)
	if v, err := sysctl.NewAt(k.ns.NsHandle()).Get(sysctlTCPBeLiberal); err != nil || v != "1" {
		t.Errorf("be_liberal = %q, %v; want 1", v, err)
	}

	// Unwritable: a warning, and the sync still succeeds.
	ro := sysctl.NewFake(map[string]string{sysctlTCPBeLiberal: "0"})
	ro.SetReadOnly(sysctlTCPBeLiberal)
	p2, err := NewProxier(cfg, k.conn, ro)
	if err != nil {
		t.Fatal(err)
	}
	if err := p2.Sync(context.Background(), newState(web()), full); err != nil {
		t.Errorf("sync with read-only sysctl: %v", err)
	}
}

func TestConfigValidation(t *testing.T) {
	bad := 32
	for _, cfg := range []Config{{MasqueradeBit: &bad}, {ClusterCIDRs: []netip.Prefix{{}}}, {NodePortAddresses: []netip.Prefix{{}}}} {
		if _, err := NewProxier(cfg, &countingConn{}, nil); err == nil {
			t.Errorf("NewProxier(%+v) accepted an invalid config", cfg)
		}
	}
	if _, err := NewProxier(Config{}, nil, nil); err == nil {
		t.Error("NewProxier accepted a nil Conn")
	}
}

// TestLargeEndpointMap: an endpoint map bigger than one netlink attribute
// can hold is sent in several messages and read back whole.
func TestLargeEndpointMap(t *testing.T) {
	requireKernel(t)
	k := newKernelNS(t, "sy-nft-large")
	p := k.proxier(t, Config{ClusterCIDRs: clusterCIDR})
	big := svc{ns: "default", name: "big", proto: dataplane.TCP, svcPort: 80, clusterIPs: []string{"10.96.0.100"}}
	for i := range 3000 {
		big.endpoints = append(big.endpoints, fmt.Sprintf("10.244.%d.%d:80", i/200, i%200+1))
	}
	st := newState(big)
	mustSync(t, p, st, full)
	slots := func() int {
		for _, line := range strings.Split(k.dump(t), "\n") {
			if strings.Contains(line, "dnat to numgen random mod 3000 map") {
				return strings.Count(line, " : 10.244.")
			}
		}
		return -1
	}
	if n := slots(); n != 3000 {
		t.Fatalf("endpoint map has %d slots, want 3000", n)
	}
	big.endpoints = big.endpoints[1:]
	putService(st, big)
	mustSync(t, p, st, changed(big.portName().ServiceName))
	if !strings.Contains(k.dump(t), "mod 2999 map") {
		t.Error("partial sync did not shrink the map")
	}
	k.cnt.take()
	mustSync(t, p, st, full)
	if msgs, _ := k.cnt.take(); msgs != 0 {
		t.Errorf("full sync after the partial one sent %d messages", msgs)
	}
}

// TestIncompatibleSet: a set of ours with another type is reported, not
// silently rewritten; Cleanup makes the next sync work.
func TestIncompatibleSet(t *testing.T) {
	requireKernel(t)
	k := newKernelNS(t, "sy-nft-compat")
	table := k.conn.AddTable(ipv4.tableRef())
	if err := k.conn.AddSet(&nftables.Set{Table: table, Name: mapServiceIPs, KeyType: nftables.TypeIPAddr}, nil); err != nil {
		t.Fatal(err)
	}
	if err := k.conn.Flush(); err != nil {
		t.Fatal(err)
	}
	p := k.proxier(t, Config{})
	err := p.Sync(context.Background(), newState(web()), full)
	if err == nil || !strings.Contains(err.Error(), "run cleanup") {
		t.Fatalf("sync over an incompatible set: %v", err)
	}
	if err := p.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	mustSync(t, p, newState(web()), changed())
	if !strings.Contains(k.dump(t), "10.96.0.10 . tcp . 80 : goto svc-") {
		t.Error("sync after cleanup did not program the Service")
	}
}

// TestPartialSyncMessagesPolicies: with traffic policies Local, session
// affinity and source ranges, a one-endpoint change still costs the same
// number of messages whatever the number of Services, and leaves the
// kernel as a full sync would.
func TestPartialSyncMessagesPolicies(t *testing.T) {
	requireKernel(t)
	counts := map[int][]int{}
	for _, n := range []int{20, 500} {
		k := newKernelNS(t, "sy-nft-ppol")
		p := k.proxier(t, Config{ClusterCIDRs: clusterCIDR})
		svcs := manyServices(n)
		target := svc{ns: "bench", name: "policies", port: "http", proto: dataplane.TCP, svcPort: 80, nodePort: 32000,
			clusterIPs: []string{"10.97.0.1"}, lbIPs: []string{"198.51.100.1"}, sourceRanges: []string{"192.0.2.0/24"},
			endpoints: []string{"10.244.0.1:80"}, remote: []string{"10.250.0.1:80"}, etpLocal: true, affinity: time.Minute}
		st := newState(append(svcs, target)...)
		mustSync(t, p, st, full)
		k.cnt.take()
		steps := []struct {
			name string
			edit func(s *svc)
		}{
			{"add local endpoint", func(s *svc) { s.endpoints = append(s.endpoints, "10.244.0.2:80") }},
			{"add remote endpoint", func(s *svc) { s.remote = append(s.remote, "10.250.0.2:80") }},
			{"no local endpoint", func(s *svc) { s.endpoints = nil }},
			{"local endpoint back", func(s *svc) { s.endpoints = []string{"10.244.0.1:80"} }},
			{"internal policy Local", func(s *svc) { s.itpLocal = true }},
			{"affinity timeout", func(s *svc) { s.affinity = time.Hour }},
			{"affinity off", func(s *svc) { s.affinity = 0 }},
			{"source ranges", func(s *svc) { s.sourceRanges = append(s.sourceRanges, "203.0.113.0/24") }},
			{"source ranges off", func(s *svc) { s.sourceRanges = nil }},
			{"external policy Cluster", func(s *svc) { s.etpLocal, s.itpLocal = false, false }},
		}
		for _, step := range steps {
			step.edit(&target)
			putService(st, target)
			mustSync(t, p, st, changed(target.portName().ServiceName))
			msgs, flushes := k.cnt.take()
			if flushes != 1 {
				t.Fatalf("%d Services, %s: %d transactions, want 1", n, step.name, flushes)
			}
			counts[n] = append(counts[n], msgs)
			mustSync(t, p, st, full)
			if msgs, _ := k.cnt.take(); msgs != 0 {
				t.Fatalf("%d Services, %s: full sync after the partial one sent %d messages", n, step.name, msgs)
			}
		}
	}
	t.Logf("messages per step: 20 Services %v, 500 Services %v", counts[20], counts[500])
	if fmt.Sprint(counts[20]) != fmt.Sprint(counts[500]) {
		t.Errorf("message counts depend on the number of Services: %v vs %v", counts[20], counts[500])
	}
}
