package ipvsvm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/ipvs"
	"github.com/switchyard/switchyard/test/netnstest"
	"github.com/switchyard/switchyard/test/vm"
)

// Helpers for the end-to-end tests in agent_test.go, which run the real
// agent binary (vm.AgentPath, put into the VM by `vmtest -agent`) as a child
// process in standalone mode and check the kernel and real traffic.

const (
	agentClusterCIDR = "10.244.0.0/16"
	agentNamespace   = "e2e"
	agentNodePort    = 30080
	// agentDeadline bounds every wait for the agent to converge. With
	// --sync-period 2s drift is repaired within ~2 s plus one sync; the rest
	// is slack for a TCG VM.
	agentDeadline = 20 * time.Second
)

// newAgentTopology is newTopology with the backends ("pods") inside
// --cluster-cidr: backend N is 10.244.N.2 behind the node's 10.244.N.1 on
// sy-bN, the client (10.99.0.2, behind the node's 10.99.0.1) is outside it.
func newAgentTopology(t *testing.T, n int) *topology {
	t.Helper()
	topo := &topology{Client: netnstest.New(t, "client"), ClientAddr: netip.MustParseAddr("10.99.0.2")}
	netnstest.Veth(t, nil, topo.Client, "sy-c0", "eth0",
		netip.PrefixFrom(nodeAddr, 24), netip.PrefixFrom(topo.ClientAddr, 24))
	netnstest.AddRoute(t, topo.Client, netip.MustParsePrefix("0.0.0.0/0"), nodeAddr)
	for i := range n {
		be := backend{ID: fmt.Sprintf("be%d", i), NS: netnstest.New(t, fmt.Sprintf("be%d", i))}
		be.Addr = netip.AddrFrom4([4]byte{10, 244, byte(i), 2})
		gw := nodeSideAddr(be)
		netnstest.Veth(t, nil, be.NS, fmt.Sprintf("sy-b%d", i), "eth0",
			netip.PrefixFrom(gw, 24), netip.PrefixFrom(be.Addr, 24))
		netnstest.AddRoute(t, be.NS, netip.MustParsePrefix("0.0.0.0/0"), gw)
		topo.Backends = append(topo.Backends, be)
	}
	return topo
}

// nodeSideAddr is the node's address on a backend's veth: the source a
// backend sees for masqueraded traffic (MASQUERADE picks the address of the
// outgoing interface).
func nodeSideAddr(be backend) netip.Addr {
	a := be.Addr.As4()
	a[3] = 1
	return netip.AddrFrom4(a)
}

func (topo *topology) backendByID(id string) (backend, bool) {
	for _, be := range topo.Backends {
		if be.ID == id {
			return be, true
		}
	}
	return backend{}, false
}

// echoReply is one echo server answer: who answered, and the source
// address it saw.
type echoReply struct {
	ID  string
	Src netip.Addr
}

// requestAll makes n TCP requests from ns (nil = root), one connection
// each, and returns the parsed replies.
func requestAll(t *testing.T, ns *netnstest.NS, addr string, n int) []echoReply {
	t.Helper()
	out := make([]echoReply, 0, n)
	for i := range n {
		reply, err := netnstest.Request(ns, "tcp", addr, fmt.Sprintf("req%d", i), 5*time.Second)
		if err != nil {
			t.Fatalf("request %d to %s from %s: %v", i, addr, ns.Name(), err)
		}
		out = append(out, parseReply(t, reply))
	}
	return out
}

func parseReply(t *testing.T, reply string) echoReply {
	t.Helper()
	id, remote, err := netnstest.ReplyID(reply)
	if err != nil {
		t.Fatal(err)
	}
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		t.Fatalf("reply %q: source %q: %v", reply, remote, err)
	}
	return echoReply{ID: id, Src: ap.Addr()}
}

func countIDs(rs []echoReply) map[string]int {
	m := map[string]int{}
	for _, r := range rs {
		m[r.ID]++
	}
	return m
}

// expectSources checks the source every backend saw against want(backend).
func expectSources(t *testing.T, what string, topo *topology, rs []echoReply, want func(be backend) netip.Addr) {
	t.Helper()
	for _, r := range rs {
		be, ok := topo.backendByID(r.ID)
		if !ok {
			t.Errorf("%s: reply from unknown backend %q", what, r.ID)
			continue
		}
		if w := want(be); r.Src != w {
			t.Errorf("%s: %s saw source %s, want %s", what, r.ID, r.Src, w)
		}
	}
}

// svcSpec is one single-port TCP Service and its EndpointSlice, as the
// manifests the agent reads.
type svcSpec struct {
	Name       string
	ClusterIP  netip.Addr
	Port       uint16
	TargetPort uint16 // 8080 when zero
	NodePort   uint16 // type NodePort when set
	Scheduler  string // switchyard.io/ipvs-scheduler annotation when set
	Backends   []backend
}

func (s svcSpec) yaml() string {
	target := s.TargetPort
	if target == 0 {
		target = 8080
	}
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: v1\nkind: Service\nmetadata:\n  name: %s\n  namespace: %s\n", s.Name, agentNamespace)
	if s.Scheduler != "" {
		fmt.Fprintf(&b, "  annotations:\n    switchyard.io/ipvs-scheduler: %q\n", s.Scheduler)
	}
	b.WriteString("spec:\n")
	if s.NodePort != 0 {
		b.WriteString("  type: NodePort\n")
	}
	fmt.Fprintf(&b, "  clusterIP: %s\n  ports:\n  - name: http\n    protocol: TCP\n    port: %d\n    targetPort: %d\n", s.ClusterIP, s.Port, target)
	if s.NodePort != 0 {
		fmt.Fprintf(&b, "    nodePort: %d\n", s.NodePort)
	}
	fmt.Fprintf(&b, "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: %s-1\n  namespace: %s\n", s.Name, agentNamespace)
	fmt.Fprintf(&b, "  labels:\n    kubernetes.io/service-name: %s\naddressType: IPv4\n", s.Name)
	fmt.Fprintf(&b, "ports:\n- name: http\n  protocol: TCP\n  port: %d\n", target)
	if len(s.Backends) == 0 {
		b.WriteString("endpoints: []\n")
	} else {
		b.WriteString("endpoints:\n")
		for _, be := range s.Backends {
			fmt.Fprintf(&b, "- addresses: [%q]\n  conditions:\n    ready: true\n", be.Addr)
		}
	}
	return b.String()
}

func (s svcSpec) key() ipvs.Key {
	return ipvs.Key{IP: s.ClusterIP, Protocol: dataplane.TCP, Port: s.Port}
}

func (s svcSpec) addr() string { return netip.AddrPortFrom(s.ClusterIP, s.Port).String() }

// logBuffer collects one agent process's output; safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// agentRun is one start of the agent process.
type agentRun struct {
	n    int
	cmd  *exec.Cmd
	log  *logBuffer
	done chan struct{}
	err  error // Wait's result, once done is closed
}

func (r *agentRun) exited() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// agent drives /bin/switchyard in standalone mode on the VM's root
// namespace (the node).
type agent struct {
	t         *testing.T
	manifests string
	stateDir  string
	runs      []*agentRun
	cleanups  []string // output of each --cleanup run
	// baselineVS are the virtual servers present before the agent first
	// started (other tests' leftovers would otherwise be blamed on it);
	// foreignVS are those the test made itself.
	baselineVS map[ipvs.Key]bool
	foreignVS  map[ipvs.Key]bool
}

// newAgent prepares the manifests and state directories; start runs the
// agent. t.Cleanup stops any running agent, runs `switchyard --cleanup`,
// checks that no switchyard object is left, and logs every process's output
// if the test failed. Call it after building the topology, so its cleanup
// runs before the topology's.
func newAgent(t *testing.T) *agent {
	t.Helper()
	if _, err := os.Stat(vm.AgentPath); err != nil {
		t.Skipf("agent binary not in the VM (vmtest -agent=): %v", err)
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		t.Skip("iptables not in the VM (vmtest -no-host-bins)")
	}
	a := &agent{t: t, manifests: t.TempDir(), stateDir: t.TempDir(), foreignVS: map[ipvs.Key]bool{}}
	a.baselineVS = map[ipvs.Key]bool{}
	for _, vs := range listVS(t) {
		a.baselineVS[vs.Key] = true
	}
	// Registered first so it runs last, after the checks below, even if
	// one of them stops its cleanup function with t.Fatal.
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, r := range a.runs {
			t.Logf("agent run %d (exit: %v) log:\n%s", r.n, r.err, r.log.String())
		}
		for i, c := range a.cleanups {
			t.Logf("switchyard --cleanup #%d output:\n%s", i+1, c)
		}
	})
	t.Cleanup(func() {
		for _, r := range a.runs {
			if r.exited() {
				continue
			}
			_ = r.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-r.done:
			case <-time.After(10 * time.Second):
				t.Errorf("agent run %d ignored SIGTERM for 10 s; killing it", r.n)
				_ = r.cmd.Process.Kill()
				<-r.done
			}
		}
		if out, err := a.runCleanup(); err != nil {
			t.Errorf("switchyard --cleanup: %v\n%s", err, out)
		}
		a.expectNoSwitchyardObjects("after the final --cleanup")
	})
	return a
}

func (a *agent) args() []string {
	return []string{
		"--hostname-override", "vm",
		"--state-dir", a.stateDir,
		"-v=2",
	}
}

// start runs the agent; it returns at once (see waitSynced).
func (a *agent) start() *agentRun {
	a.t.Helper()
	if r := a.current(); r != nil && !r.exited() {
		a.t.Fatalf("agent run %d still running", r.n)
	}
	args := append(a.args(),
		"--manifests", a.manifests,
		"--cluster-cidr", agentClusterCIDR,
		"--min-sync-period", "100ms",
		"--sync-period", "2s",
	)
	r := &agentRun{n: len(a.runs) + 1, log: &logBuffer{}, done: make(chan struct{})}
	r.cmd = exec.Command(vm.AgentPath, args...)
	r.cmd.Stdout, r.cmd.Stderr = r.log, r.log
	if err := r.cmd.Start(); err != nil {
		a.t.Fatalf("start agent: %v", err)
	}
	a.runs = append(a.runs, r)
	go func() {
		r.err = r.cmd.Wait()
		close(r.done)
	}()
	// Everything here is about the IPVS dataplane (the VM's kernel has
	// IPVS, so the agent's default must pick it).
	if line := a.waitLog(`"Starting switchyard".*`); !strings.Contains(line, `dataplane="iptables+ipvs"`) {
		a.t.Fatalf("agent started with another dataplane: %s", line)
	}
	return r
}

func (a *agent) current() *agentRun {
	if len(a.runs) == 0 {
		return nil
	}
	return a.runs[len(a.runs)-1]
}

// stop sends sig to the running agent and waits (bounded) for it to exit.
func (a *agent) stop(sig syscall.Signal) error {
	a.t.Helper()
	r := a.current()
	if r == nil || r.exited() {
		a.t.Fatal("no agent running")
	}
	if err := r.cmd.Process.Signal(sig); err != nil {
		a.t.Fatalf("signal agent: %v", err)
	}
	select {
	case <-r.done:
		return r.err
	case <-time.After(15 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.done
		a.t.Fatalf("agent did not exit within 15 s of %v", sig)
		return nil
	}
}

// runCleanup runs `switchyard --cleanup` as a separate process.
func (a *agent) runCleanup() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, vm.AgentPath, append(a.args(), "--cleanup")...).CombinedOutput()
	a.cleanups = append(a.cleanups, string(out))
	return string(out), err
}

// write atomically replaces a manifest file (temporary dot file + rename,
// as editors and ConfigMap volumes do).
func (a *agent) write(name, content string) {
	a.t.Helper()
	tmp := filepath.Join(a.manifests, "."+name+".tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		a.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(a.manifests, name)); err != nil {
		a.t.Fatal(err)
	}
}

func (a *agent) writeService(s svcSpec) { a.t.Helper(); a.write(s.Name+".yaml", s.yaml()) }

// eventually polls cond every 100ms until it reports true, failing the test
// with cond's last explanation after timeout, or at once if the agent
// exits.
func (a *agent) eventually(what string, timeout time.Duration, cond func() (bool, string)) {
	a.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if r := a.current(); r != nil && r.exited() {
			a.t.Fatalf("waiting for %s: agent run %d exited: %v", what, r.n, r.err)
		}
		if time.Now().After(deadline) {
			a.t.Fatalf("%s: not within %v: %s", what, timeout, detail)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var syncedRE = regexp.MustCompile(`\] "Synced" dataplane=`)

// syncs counts the completed syncs of a run.
func (r *agentRun) syncs() int { return len(syncedRE.FindAllStringIndex(r.log.String(), -1)) }

// waitSyncs waits until the current run has completed more than after
// syncs (every sync of a run after its first is partial or periodic).
func (a *agent) waitSyncs(after int) {
	a.t.Helper()
	r := a.current()
	a.eventually(fmt.Sprintf("agent run %d sync #%d", r.n, after+1), agentDeadline, func() (bool, string) {
		n := r.syncs()
		return n > after, fmt.Sprintf("%d syncs", n)
	})
}

// waitLog waits until the current run's log matches re.
func (a *agent) waitLog(re string) string {
	a.t.Helper()
	rx := regexp.MustCompile(re)
	r := a.current()
	var m string
	a.eventually("log line matching "+re, agentDeadline, func() (bool, string) {
		m = rx.FindString(r.log.String())
		return m != "", "no such line"
	})
	return m
}

// waitVS waits until the virtual server k has exactly the real servers want
// (address -> weight).
func (a *agent) waitVS(k ipvs.Key, want map[netip.AddrPort]int) {
	a.t.Helper()
	a.eventually(fmt.Sprintf("virtual server %s with real servers %v", k, want), agentDeadline, func() (bool, string) {
		got, err := realServerWeights(k)
		if err != nil {
			return false, err.Error()
		}
		return mapsEqual(got, want), fmt.Sprintf("have %v", got)
	})
}

func mapsEqual[K comparable, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func weights(port uint16, w int, bes ...backend) map[netip.AddrPort]int {
	m := map[netip.AddrPort]int{}
	for _, be := range bes {
		m[netip.AddrPortFrom(be.Addr, port)] = w
	}
	return m
}

// withHandle runs f with a fresh IPVS handle (the agent's own runs in
// another process; a handle per call keeps tests independent).
func withHandle(f func(h *ipvs.KernelHandle) error) error {
	h, err := ipvs.NewHandle("")
	if err != nil {
		return err
	}
	defer h.Close()
	return f(h)
}

func realServerWeights(k ipvs.Key) (map[netip.AddrPort]int, error) {
	out := map[netip.AddrPort]int{}
	err := withHandle(func(h *ipvs.KernelHandle) error {
		rss, err := h.ListRealServers(k)
		for _, rs := range rss {
			out[rs.Addr] = rs.Weight
		}
		return err
	})
	return out, err
}

func realServers(t *testing.T, k ipvs.Key) map[netip.AddrPort]ipvs.RealServer {
	t.Helper()
	out := map[netip.AddrPort]ipvs.RealServer{}
	if err := withHandle(func(h *ipvs.KernelHandle) error {
		rss, err := h.ListRealServers(k)
		for _, rs := range rss {
			out[rs.Addr] = rs
		}
		return err
	}); err != nil {
		t.Fatalf("real servers of %s: %v", k, err)
	}
	return out
}

func listVS(t *testing.T) []ipvs.VirtualServer {
	t.Helper()
	var vss []ipvs.VirtualServer
	if err := withHandle(func(h *ipvs.KernelHandle) (err error) {
		vss, err = h.ListVirtualServers()
		return err
	}); err != nil {
		t.Fatalf("list virtual servers: %v", err)
	}
	return vss
}

func scheduler(k ipvs.Key) (string, error) {
	var vs ipvs.VirtualServer
	err := withHandle(func(h *ipvs.KernelHandle) (err error) {
		vs, err = h.GetVirtualServer(k)
		return err
	})
	return vs.Scheduler, err
}

// command runs a userspace tool (iptables, ipset) in the root namespace,
// bounded in time.
func command(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

func mustCommand(t *testing.T, args ...string) string {
	t.Helper()
	out, err := command(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

var counterRE = regexp.MustCompile(`\[\d+:\d+\]`)

// iptablesSave is `iptables-save` without comments and counters.
func iptablesSave(t *testing.T) string {
	t.Helper()
	var lines []string
	for _, l := range strings.Split(mustCommand(t, "iptables-save"), "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		lines = append(lines, counterRE.ReplaceAllString(l, "[-]"))
	}
	return strings.Join(lines, "\n")
}

// ipsetSave is `ipset save` with lines sorted (members are listed in hash
// order).
func ipsetSave(t *testing.T) string {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(mustCommand(t, "ipset", "save")), "\n")
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// dummyAddrs lists the addresses on the agent's dummy link; ok is false
// when the link does not exist.
func dummyAddrs(t *testing.T) (addrs []string, ok bool) {
	t.Helper()
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	link, err := h.LinkByName(ipvs.DefaultLinkName)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, false
		}
		t.Fatalf("find %s: %v", ipvs.DefaultLinkName, err)
	}
	as, err := h.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatalf("addresses of %s: %v", ipvs.DefaultLinkName, err)
	}
	for _, x := range as {
		addrs = append(addrs, x.IPNet.String())
	}
	slices.Sort(addrs)
	return addrs, true
}

// nodeSnapshot renders everything the agent programs (and foreign objects
// next to it) without counters: IPVS virtual and real servers with their
// configuration, the dummy link's addresses, iptables-save and ipset save.
func nodeSnapshot(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	vss := listVS(t)
	slices.SortFunc(vss, func(x, y ipvs.VirtualServer) int { return x.Key.Compare(y.Key) })
	for _, vs := range vss {
		fmt.Fprintf(&b, "vs %s %s flags=%#x timeout=%d\n", vs.Key, vs.Scheduler, uint32(vs.Flags), vs.Timeout)
		rss := realServers(t, vs.Key)
		for _, addr := range slices.SortedFunc(maps.Keys(rss), netip.AddrPort.Compare) {
			rs := rss[addr]
			fmt.Fprintf(&b, "  rs %s %s weight=%d\n", addr, rs.Forward, rs.Weight)
		}
	}
	addrs, ok := dummyAddrs(t)
	fmt.Fprintf(&b, "link %s present=%v addrs=%v\n", ipvs.DefaultLinkName, ok, addrs)
	b.WriteString("--- iptables-save\n" + iptablesSave(t) + "\n")
	b.WriteString("--- ipset save\n" + ipsetSave(t) + "\n")
	return b.String()
}

// expectSameSnapshot reports the lines that differ between two snapshots.
func expectSameSnapshot(t *testing.T, what, before, after string) {
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

// expectNoSwitchyardObjects checks what --cleanup promises: no dummy link,
// no virtual server the test did not find or make itself, no SWITCHYARD
// chain, hook rule (commented "switchyard ...") or set, no state file.
func (a *agent) expectNoSwitchyardObjects(when string) {
	t := a.t
	t.Helper()
	if addrs, ok := dummyAddrs(t); ok {
		t.Errorf("%s: link %s still exists (addresses %v)", when, ipvs.DefaultLinkName, addrs)
	}
	for _, vs := range listVS(t) {
		if !a.baselineVS[vs.Key] && !a.foreignVS[vs.Key] {
			t.Errorf("%s: virtual server %s left", when, vs.Key)
		}
	}
	for _, l := range strings.Split(iptablesSave(t), "\n") {
		if strings.Contains(strings.ToLower(l), "switchyard") {
			t.Errorf("%s: iptables still has %q", when, l)
		}
	}
	for _, name := range strings.Fields(mustCommand(t, "ipset", "list", "-n")) {
		if strings.HasPrefix(name, "SWITCHYARD") {
			t.Errorf("%s: ipset %s left", when, name)
		}
	}
	if _, err := os.Stat(filepath.Join(a.stateDir, ipvs.StateFileName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s: state file left: %v", when, err)
	}
}

// remove deletes a manifest file.
func (a *agent) remove(name string) {
	a.t.Helper()
	if err := os.Remove(filepath.Join(a.manifests, name)); err != nil {
		a.t.Fatal(err)
	}
}

func formatWeights(m map[netip.AddrPort]int) string {
	var parts []string
	for _, k := range slices.SortedFunc(maps.Keys(m), netip.AddrPort.Compare) {
		parts = append(parts, fmt.Sprintf("%s=%d", k, m[k]))
	}
	return "{" + strings.Join(parts, " ") + "}"
}

// deleteAddr removes ip/32 from a link in the root namespace with netlink.
func deleteAddr(t *testing.T, link string, ip netip.Addr) {
	t.Helper()
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(link)
	if err == nil {
		err = h.AddrDel(l, &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(32, 32)}})
	}
	if err != nil {
		t.Fatalf("delete %s from %s: %v", ip, link, err)
	}
}

// chainRules lists a chain's rules as `iptables -S` prints them.
func chainRules(t *testing.T, table, chain string) []string {
	t.Helper()
	var rules []string
	for _, l := range strings.Split(mustCommand(t, "iptables", "-t", table, "-S", chain), "\n") {
		if strings.HasPrefix(l, "-A "+chain+" ") {
			rules = append(rules, l)
		}
	}
	return rules
}

// ruleNumber returns the 1-based position of the first rule of chain
// containing substr, as a string for `iptables -D CHAIN N`.
func ruleNumber(t *testing.T, table, chain, substr string) string {
	t.Helper()
	rules := chainRules(t, table, chain)
	for i, r := range rules {
		if strings.Contains(r, substr) {
			return strconv.Itoa(i + 1)
		}
	}
	t.Fatalf("no rule with %q in %s %s:\n%s", substr, table, chain, strings.Join(rules, "\n"))
	return ""
}

// foreignObjects are kernel objects another program on the node owns.
type foreignObjects struct {
	vss []ipvs.Key
}

var foreignIPTables = [][]string{
	{"-t", "nat", "-N", "FOREIGN"},
	{"-t", "nat", "-A", "FOREIGN", "-s", "192.0.2.1/32", "-m", "comment", "--comment", "foreign-rule", "-j", "RETURN"},
	{"-t", "nat", "-A", "POSTROUTING", "-m", "comment", "--comment", "foreign-hook", "-j", "FOREIGN"},
	{"-t", "filter", "-N", "FOREIGN"},
	{"-t", "filter", "-A", "FOREIGN", "-s", "192.0.2.1/32", "-m", "comment", "--comment", "foreign-rule", "-j", "RETURN"},
	{"-t", "filter", "-A", "FORWARD", "-m", "comment", "--comment", "foreign-hook", "-j", "FOREIGN"},
}

// addForeignObjects makes, as another program would: IPVS virtual servers
// on 172.16.0.1:80 (an address switchyard never has) and on the node's
// 10.99.0.1:30081 (a NodePort key), each with one real server of weight 7
// on be; a chain FOREIGN in nat and filter with a rule and jumps to it from
// POSTROUTING and FORWARD; an ipset foreign-set with one member. t.Cleanup
// removes them. Call it after newAgent (a is told which virtual servers are
// not the agent's).
func addForeignObjects(t *testing.T, a *agent, be backend) *foreignObjects {
	t.Helper()
	f := &foreignObjects{vss: []ipvs.Key{
		{IP: netip.MustParseAddr("172.16.0.1"), Protocol: dataplane.TCP, Port: 80},
		{IP: nodeAddr, Protocol: dataplane.TCP, Port: 30081},
	}}
	t.Cleanup(func() {
		for _, k := range f.vss {
			if err := withHandle(func(h *ipvs.KernelHandle) error { return h.DeleteVirtualServer(k) }); err != nil && !ipvs.IsNotFound(err) {
				t.Errorf("delete foreign virtual server %s: %v", k, err)
			}
		}
		for _, args := range [][]string{
			{"iptables", "-t", "nat", "-D", "POSTROUTING", "-m", "comment", "--comment", "foreign-hook", "-j", "FOREIGN"},
			{"iptables", "-t", "filter", "-D", "FORWARD", "-m", "comment", "--comment", "foreign-hook", "-j", "FOREIGN"},
			{"iptables", "-t", "nat", "-F", "FOREIGN"}, {"iptables", "-t", "nat", "-X", "FOREIGN"},
			{"iptables", "-t", "filter", "-F", "FOREIGN"}, {"iptables", "-t", "filter", "-X", "FOREIGN"},
			{"ipset", "destroy", "foreign-set"},
		} {
			if _, err := command(args...); err != nil {
				t.Errorf("remove foreign object: %v", err)
			}
		}
	})
	for _, k := range f.vss {
		a.foreignVS[k] = true
		if err := withHandle(func(h *ipvs.KernelHandle) error {
			if err := h.AddVirtualServer(ipvs.VirtualServer{Key: k, Scheduler: "wlc"}); err != nil {
				return err
			}
			return h.AddRealServer(k, ipvs.RealServer{Addr: netip.AddrPortFrom(be.Addr, 8080), Weight: 7, Forward: ipvs.ForwardMasq})
		}); err != nil {
			t.Fatalf("foreign virtual server %s: %v", k, err)
		}
	}
	for _, args := range foreignIPTables {
		mustCommand(t, append([]string{"iptables"}, args...)...)
	}
	mustCommand(t, "ipset", "create", "foreign-set", "hash:ip")
	mustCommand(t, "ipset", "add", "foreign-set", "192.0.2.7")
	return f
}

// snapshot renders the foreign objects.
func (f *foreignObjects) snapshot(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, k := range f.vss {
		s, err := scheduler(k)
		fmt.Fprintf(&b, "vs %s %s %v\n", k, s, err)
		if err == nil {
			rss := realServers(t, k)
			for _, addr := range slices.SortedFunc(maps.Keys(rss), netip.AddrPort.Compare) {
				fmt.Fprintf(&b, "  rs %s %s weight=%d\n", addr, rss[addr].Forward, rss[addr].Weight)
			}
		}
	}
	for _, tc := range [][2]string{{"nat", "FOREIGN"}, {"filter", "FOREIGN"}, {"nat", "POSTROUTING"}, {"filter", "FORWARD"}} {
		out, err := command("iptables", "-t", tc[0], "-S", tc[1])
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "FOREIGN") || err != nil {
				fmt.Fprintf(&b, "%s: %s\n", tc[0], l)
			}
		}
	}
	out, err := command("ipset", "save", "foreign-set")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	slices.Sort(lines)
	fmt.Fprintf(&b, "ipset (%v):\n%s\n", err, strings.Join(lines, "\n"))
	return b.String()
}
