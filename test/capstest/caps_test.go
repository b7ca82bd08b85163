package capstest

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/switchyard/switchyard/test/agentspec"
	"github.com/switchyard/switchyard/test/netnstest"
)

// patchCaps is the capability list deploy/unprivileged-patch.yaml adds
// (after dropping ALL), checked to be the whole securityContext.
func patchCaps(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile("../../deploy/unprivileged-patch.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var ds appsv1.DaemonSet
	if err := yaml.UnmarshalStrict(data, &ds); err != nil {
		t.Fatalf("deploy/unprivileged-patch.yaml: %v", err)
	}
	for _, c := range ds.Spec.Template.Spec.Containers {
		if c.Name != "switchyard" {
			continue
		}
		sc := c.SecurityContext
		if sc == nil || sc.Privileged == nil || *sc.Privileged || sc.Capabilities == nil ||
			!slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
			t.Fatalf("deploy/unprivileged-patch.yaml: want privileged: false and drop [ALL], got %+v", sc)
		}
		var caps []string
		for _, a := range sc.Capabilities.Add {
			caps = append(caps, string(a))
		}
		return caps
	}
	t.Fatal("deploy/unprivileged-patch.yaml: no container named switchyard")
	return nil
}

func with(caps []string, more ...string) []string { return append(slices.Clone(caps), more...) }

func without(caps []string, c string) []string {
	out := slices.DeleteFunc(slices.Clone(caps), func(x string) bool { return x == c })
	if len(out) == len(caps) {
		panic(c + " is not in the list")
	}
	return out
}

// newNode makes the node's network namespace with forwarding on (as a
// CNI leaves a node; set by the test, not by the restricted agent).
func newNode(t *testing.T) *netnstest.NS {
	t.Helper()
	node := netnstest.New(t, "sy-caps")
	if err := node.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644)
	}); err != nil {
		t.Fatalf("ip_forward in %s: %v", node.Name(), err)
	}
	return node
}

// runSpec is one restricted start of the agent.
type runSpec struct {
	node      *netnstest.NS
	caps      []string
	roProcSys bool
	svcs      []agentspec.Service
	extra     []string
	pinPath   string // --bpf-pin-path; default a directory on no bpffs
}

type agentRun struct {
	t    *testing.T
	cmd  *exec.Cmd
	log  *agentspec.LogBuffer
	done chan struct{}
	err  error
	args []string // the agent's flags, for --cleanup
	spec runSpec
}

// restricted returns a command running argv through the re-exec with
// caps and, if asked, a read-only /proc/sys.
func restricted(t *testing.T, caps []string, roProcSys bool, argv ...string) *exec.Cmd {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, argv...)
	ro := "0"
	if roProcSys {
		ro = "1"
	}
	cmd.Env = append(os.Environ(), envExec+"=1", envKeep+"="+strings.Join(caps, ","), envROProcSys+"="+ro)
	return cmd
}

// startAgent runs the agent in s.node with s.caps on standalone manifests
// of s.svcs. t.Cleanup stops it (SIGTERM, bounded) and runs an
// unrestricted `switchyard --cleanup` in the node, so nothing outlives
// the test even when the restricted run could not clean up.
func startAgent(t *testing.T, s runSpec) *agentRun {
	t.Helper()
	dir, state := t.TempDir(), t.TempDir()
	for _, svc := range s.svcs {
		if err := os.WriteFile(filepath.Join(dir, svc.Name+".yaml"), []byte(svc.YAML()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if s.pinPath == "" {
		s.pinPath = filepath.Join(t.TempDir(), "bpf")
	}
	args := append([]string{
		"--hostname-override", "node", "--dataplane", "nftables",
		"--state-dir", state, "--api-socket", filepath.Join(state, "api.sock"),
		"--bpf-pin-path", s.pinPath, "--cluster-cidr", agentspec.ClusterCIDR,
		"--min-sync-period", "100ms", "--sync-period", "2s", "-v=2",
	}, s.extra...)
	r := &agentRun{t: t, log: &agentspec.LogBuffer{}, done: make(chan struct{}), args: args, spec: s}
	r.cmd = restricted(t, s.caps, s.roProcSys, append([]string{agentBin, "--manifests", dir}, args...)...)
	r.cmd.Stdout, r.cmd.Stderr = r.log, r.log
	if err := s.node.Do(r.cmd.Start); err != nil {
		t.Fatalf("start agent: %v", err)
	}
	go func() {
		r.err = r.cmd.Wait()
		close(r.done)
	}()
	t.Cleanup(func() {
		r.stop()
		if out, err := r.runCleanup(nil, false); err != nil {
			t.Errorf("unrestricted switchyard --cleanup: %v\n%s", err, out)
		}
		if t.Failed() {
			t.Logf("agent (capabilities %v, read-only /proc/sys %v; exit: %v) log:\n%s", s.caps, s.roProcSys, r.err, r.log)
		}
	})
	r.waitLog(`"Starting switchyard"`)
	return r
}

// stop sends SIGTERM and waits (bounded); it returns the exit error.
func (r *agentRun) stop() error {
	select {
	case <-r.done:
		return r.err
	default:
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		r.t.Errorf("agent ignored SIGTERM for 10 s; killing it")
		_ = r.cmd.Process.Kill()
		<-r.done
	}
	return r.err
}

// runCleanup runs `switchyard --cleanup` with the run's flags in its node,
// with caps (nil: unrestricted, as root).
func (r *agentRun) runCleanup(caps []string, roProcSys bool) (string, error) {
	argv := append([]string{agentBin}, append(slices.Clone(r.args), "--cleanup")...)
	var cmd *exec.Cmd
	if caps == nil {
		cmd = exec.Command(argv[0], argv[1:]...)
	} else {
		cmd = restricted(r.t, caps, roProcSys, argv...)
	}
	return runBounded(r.spec.node, cmd)
}

func runBounded(node *netnstest.NS, cmd *exec.Cmd) (string, error) {
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := node.Do(cmd.Start); err != nil {
		return "", err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return out.String(), err
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		return out.String(), fmt.Errorf("%s did not finish within 30 s", cmd.Path)
	}
}

// waitLog waits (bounded) until the log matches re and returns the match.
func (r *agentRun) waitLog(re string) string {
	r.t.Helper()
	rx := regexp.MustCompile(re)
	for deadline := time.Now().Add(agentDeadline); ; time.Sleep(100 * time.Millisecond) {
		if m := rx.FindString(r.log.String()); m != "" {
			return m
		}
		select {
		case <-r.done:
			r.t.Fatalf("agent exited (%v) before logging %s", r.err, re)
		default:
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("agent did not log %s within %v", re, agentDeadline)
		}
	}
}

// checkCaps checks that the running agent holds exactly the listed
// capabilities: bounding, permitted and effective sets alike.
func (r *agentRun) checkCaps(caps []string) {
	r.t.Helper()
	want := capMask(r.t, caps)
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", r.cmd.Process.Pid))
	if err != nil {
		r.t.Fatal(err)
	}
	for _, set := range []string{"CapBnd", "CapPrm", "CapEff"} {
		m := regexp.MustCompile(`(?m)^` + set + `:\s*([0-9a-f]+)$`).FindSubmatch(status)
		if m == nil {
			r.t.Fatalf("no %s in /proc/<agent>/status", set)
		}
		got, err := strconv.ParseUint(string(m[1]), 16, 64)
		if err != nil {
			r.t.Fatal(err)
		}
		if got != want {
			r.t.Errorf("agent %s %#x, want %#x (%v)", set, got, want, caps)
		}
	}
}

// tables lists the nftables tables in node ("ip switchyard", ...).
func tables(t *testing.T, node *netnstest.NS) []string {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(int(node.NsHandle())))
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseLasting()
	ts, err := c.ListTables()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, tb := range ts {
		fam := map[nftables.TableFamily]string{nftables.TableFamilyIPv4: "ip", nftables.TableFamilyIPv6: "ip6", nftables.TableFamilyINet: "inet"}[tb.Family]
		out = append(out, fam+" "+tb.Name)
	}
	slices.Sort(out)
	return out
}

var web = agentspec.Service{Name: "web", ClusterIP: netip.MustParseAddr("10.96.0.80"), Port: 80}

// The capabilities of deploy/unprivileged-patch.yaml, nothing else, and a
// read-only /proc/sys: the nftables dataplane programs the node (every
// backend answers through the ClusterIP, reply payloads checked), the
// agent stops leaving it programmed, and `--cleanup` with the same
// capabilities removes it. The rebalancer runs too (its conntrack
// mechanism opens its sockets where the agent is: no namespace switch).
func TestPatchCapabilitiesProgramNFTables(t *testing.T) {
	requireAgent(t)
	caps := patchCaps(t)
	node := newNode(t)
	topo := (&agentspec.Env{Node: node}).NewTopology(t, 2)
	svc := web
	svc.Backends = topo.Backends
	r := startAgent(t, runSpec{node: node, caps: caps, roProcSys: true, svcs: []agentspec.Service{svc}})
	r.waitLog(`\] "Synced" dataplane=`)
	r.checkCaps(caps)

	got := map[string]int{}
	for i := 0; i < 60 && len(got) < len(topo.Backends); i++ {
		for _, rep := range agentspec.RequestAll(t, topo.Client, "tcp", svc.Addr(), 1) {
			if _, ok := topo.Backend(rep.ID); !ok {
				t.Fatalf("reply from %q, not a backend", rep.ID)
			}
			got[rep.ID]++
		}
	}
	if len(got) != len(topo.Backends) {
		t.Errorf("replies per backend %v, want every one of %d backends", got, len(topo.Backends))
	}
	log := r.log.String()
	if !regexp.MustCompile(`"Rebalancer ready for Services that opt in" [^\n]*mechanisms=\["conntrack"\]`).MatchString(log) {
		t.Errorf("with the patch's capabilities the rebalancer should run on conntrack")
	}
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "operation not permitted") {
			t.Errorf("permission error: %s", line)
		}
	}
	if err := r.stop(); err != nil {
		t.Fatalf("agent exit on SIGTERM: %v", err)
	}
	if ts := tables(t, node); !slices.Contains(ts, "ip switchyard") {
		t.Fatalf("after SIGTERM the dataplane should stay: tables %v", ts)
	}
	out, err := r.runCleanup(caps, true)
	if err != nil || !strings.Contains(out, `"Cleanup done"`) {
		t.Fatalf("switchyard --cleanup with %v: %v\n%s", caps, err, out)
	}
	if ts := tables(t, node); len(ts) != 0 {
		t.Errorf("tables left after --cleanup: %v", ts)
	}
}

// One capability fewer, NET_ADMIN: nothing is programmed, every sync fails
// with a clear error, and the ClusterIP does not answer.
func TestWithoutNetAdminNothingIsProgrammed(t *testing.T) {
	requireAgent(t)
	caps := without(patchCaps(t), "NET_ADMIN")
	node := newNode(t)
	topo := (&agentspec.Env{Node: node}).NewTopology(t, 1)
	svc := web
	svc.Backends = topo.Backends
	r := startAgent(t, runSpec{node: node, caps: caps, roProcSys: true, svcs: []agentspec.Service{svc}})
	line := r.waitLog(`"Sync failed; will retry" err=".*operation not permitted[^\n]*`)
	t.Logf("without NET_ADMIN: %s", line)
	r.checkCaps(caps)
	if ts := tables(t, node); len(ts) != 0 {
		t.Errorf("tables without NET_ADMIN: %v", ts)
	}
	agentspec.ExpectNoAnswer(t, "ClusterIP without NET_ADMIN", topo.Client, "tcp", svc.Addr())
}

// NET_RAW is for iptables-legacy (the IPVS dataplane's masquerading runs
// the node's iptables; libiptc opens a raw socket). The nf_tables backend
// needs only NET_ADMIN.
func TestNetRawForIPTablesLegacy(t *testing.T) {
	requireAgent(t)
	legacy, err := exec.LookPath("iptables-legacy")
	if err != nil {
		t.Skip("no iptables-legacy here")
	}
	caps := patchCaps(t)
	node := newNode(t)
	for _, tc := range []struct {
		caps []string
		ok   bool
	}{{caps, true}, {without(caps, "NET_RAW"), false}} {
		out, err := runBounded(node, restricted(t, tc.caps, true, legacy, "-w", "5", "-t", "nat", "-S"))
		switch {
		case tc.ok && (err != nil || !strings.Contains(out, "-P PREROUTING ACCEPT")):
			t.Errorf("iptables-legacy with %v: %v\n%s", tc.caps, err, out)
		case !tc.ok && (err == nil || !strings.Contains(out, "Permission denied")):
			t.Errorf("iptables-legacy with %v should be refused: %v\n%s", tc.caps, err, out)
		case !tc.ok:
			t.Logf("without NET_RAW: %s", strings.TrimSpace(out))
		}
	}
}

// The rebalancer's conntrack mechanism needs no more than the patch's
// capabilities: its netlink sockets open in the agent's own namespace,
// without a namespace switch (which would need SYS_ADMIN even to enter
// the namespace the agent runs in). Closing the socket load balancer's
// sockets does switch into pods' namespaces: that mechanism needs
// SYS_ADMIN (see TestSocketLBNeedsBPFAndPerfmon for the socket LB).
func TestRebalancerConntrackWithoutSysAdmin(t *testing.T) {
	requireAgent(t)
	caps := patchCaps(t)
	r := startAgent(t, runSpec{node: newNode(t), caps: caps, roProcSys: true})
	t.Logf("%s", r.waitLog(`"Rebalancer ready for Services that opt in" [^\n]*mechanisms=\["conntrack"\]`))
	r.checkCaps(caps)
	if strings.Contains(r.log.String(), "No connection rebalancer") {
		t.Errorf("the rebalancer is off with %v:\n%s", caps, r.log.String())
	}
}

// --bpf-socket-lb needs BPF and PERFMON (the verifier refuses the programs
// without PERFMON) beside NET_ADMIN; the cgroup is a child the test makes
// and the pins go to a private bpf file system, mounted beforehand as the
// host's /sys/fs/bpf is (without SYS_ADMIN the agent cannot mount one).
func TestSocketLBNeedsBPFAndPerfmon(t *testing.T) {
	requireAgent(t)
	caps := patchCaps(t)
	for _, tc := range []struct {
		caps []string
		want string
	}{
		{with(caps, "BPF"), `"BPF socket load balancing disabled: [^\n]*`},
		{with(caps, "BPF", "PERFMON"), `"BPF socket load balancing enabled"`},
	} {
		t.Run(strings.Join(tc.caps, "+"), func(t *testing.T) {
			node := newNode(t)
			bpffs := netnstest.NewBPFFS(t)
			cg := netnstest.NewCgroup(t, "sy-caps")
			r := startAgent(t, runSpec{node: node, caps: tc.caps, roProcSys: true, pinPath: filepath.Join(bpffs, "switchyard"),
				extra: []string{"--bpf-socket-lb", "--bpf-cgroup-path", cg.Path}})
			t.Logf("%s", r.waitLog(tc.want))
			r.checkCaps(tc.caps)
		})
	}
}

// Capabilities are not what stops sysctl writes in a container: its
// read-only /proc/sys is. With the same capabilities, the nftables
// dataplane's one sysctl (conntrack.tcpBeLiberal) is written with a
// writable /proc/sys and only logged as impossible with a read-only one.
// This is why deploy/daemonset.yaml stays privileged: the IPVS dataplane
// needs its sysctls (net.ipv4.vs.conntrack=1 above all).
func TestReadOnlyProcSysStopsSysctls(t *testing.T) {
	requireAgent(t)
	caps := patchCaps(t)
	const key = "net/netfilter/nf_conntrack_tcp_be_liberal"
	for _, ro := range []bool{true, false} {
		t.Run(fmt.Sprintf("readonly=%v", ro), func(t *testing.T) {
			node := newNode(t)
			r := startAgent(t, runSpec{node: node, caps: caps, roProcSys: ro, extra: []string{"--conntrack-tcp-be-liberal"}})
			if ro {
				t.Logf("%s", r.waitLog(`"Warning: cannot set sysctl, continuing without it"[^\n]*`))
			} else {
				r.waitLog(`"Set sysctl" dataplane="nftables" sysctl="` + key + `" value="1"`)
			}
			r.waitLog(`\] "Synced" dataplane=`)
			var v []byte
			if err := node.Do(func() (err error) { v, err = os.ReadFile("/proc/sys/" + key); return err }); err != nil {
				t.Fatal(err)
			}
			want := map[bool]string{true: "0", false: "1"}[ro]
			if got := strings.TrimSpace(string(v)); got != want {
				t.Errorf("%s = %s, want %s", key, got, want)
			}
		})
	}
}
