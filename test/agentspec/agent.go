package agentspec

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// LogBuffer collects one process's output; safe for concurrent use.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// Run is one start of the agent process.
type Run struct {
	N    int
	cmd  *exec.Cmd
	log  *LogBuffer
	done chan struct{}
	err  error // Wait's result, once done is closed
}

// Log is the run's output so far.
func (r *Run) Log() string { return r.log.String() }

// Exited reports whether the process has ended.
func (r *Run) Exited() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

var syncedRE = regexp.MustCompile(`\] "Synced" dataplane=`)

// Syncs counts the completed syncs of a run.
func (r *Run) Syncs() int { return len(syncedRE.FindAllStringIndex(r.log.String(), -1)) }

// Source is where the agent reads its Services, EndpointSlices and Pods:
// by default a manifests directory (standalone mode); with a real API
// server, an implementation that applies the same YAML documents through
// it (Env.Source), so every scenario runs against either.
type Source interface {
	// Args are the agent flags that point it at the source
	// ("--manifests DIR", "--kubeconfig FILE").
	Args() []string
	// Write replaces the objects written under name with the YAML
	// documents in content.
	Write(t *testing.T, name, content string)
	// Remove deletes the objects written under name.
	Remove(t *testing.T, name string)
}

// manifestsDir is the default Source: files in a --manifests directory.
type manifestsDir string

func (d manifestsDir) Args() []string { return []string{"--manifests", string(d)} }

// Write atomically replaces a manifest file (temporary dot file + rename,
// as editors and ConfigMap volumes do).
func (d manifestsDir) Write(t *testing.T, name, content string) {
	t.Helper()
	tmp := filepath.Join(string(d), "."+name+".tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(string(d), name)); err != nil {
		t.Fatal(err)
	}
}

func (d manifestsDir) Remove(t *testing.T, name string) {
	t.Helper()
	if err := os.Remove(filepath.Join(string(d), name)); err != nil {
		t.Fatal(err)
	}
}

// Agent drives the switchyard binary on the node.
type Agent struct {
	t   *testing.T
	env *Env
	// Source holds the objects the agent reads (Env.Source, or a
	// manifests directory); StateDir is --state-dir.
	Source   Source
	StateDir string
	// PinPath is --bpf-pin-path: by default a private directory on no
	// bpf file system, so --cleanup never touches the pins of a real
	// agent on the machine (BPF pins and cgroups are not per network
	// namespace). A socket-LB test points it into its own bpffs.
	PinPath string
	// ExtraArgs are appended to the agent's flags, for every start and
	// every --cleanup (e.g. --bpf-socket-lb); set them before Start.
	ExtraArgs []string
	runs      []*Run
	cleanups  []string // output of each --cleanup run
}

// NewAgent prepares the manifests and state directories; Start runs the
// agent. t.Cleanup stops any running agent, runs `switchyard --cleanup`,
// checks that nothing of the agent is left, and logs every process's
// output if the test failed. Call it after building the topology, so its
// cleanup runs before the topology's.
func (e *Env) NewAgent(t *testing.T) *Agent {
	t.Helper()
	a := &Agent{t: t, env: e, StateDir: t.TempDir(), PinPath: filepath.Join(t.TempDir(), "bpf")}
	if e.Source != nil {
		a.Source = e.Source(t)
	} else {
		a.Source = manifestsDir(t.TempDir())
	}
	// Registered first so it runs last, after the checks below, even if
	// one of them stops its cleanup function with t.Fatal.
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, r := range a.runs {
			t.Logf("agent run %d (exit: %v) log:\n%s", r.N, r.err, r.log.String())
		}
		for i, c := range a.cleanups {
			t.Logf("switchyard --cleanup #%d output:\n%s", i+1, c)
		}
	})
	t.Cleanup(func() {
		for _, r := range a.runs {
			if r.Exited() {
				continue
			}
			_ = r.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-r.done:
			case <-time.After(10 * time.Second):
				t.Errorf("agent run %d ignored SIGTERM for 10 s; killing it", r.N)
				_ = r.cmd.Process.Kill()
				<-r.done
			}
		}
		if out, err := a.RunCleanup(); err != nil {
			t.Errorf("switchyard --cleanup: %v\n%s", err, out)
		}
		e.DP.ExpectNothingLeft(t, a, "after the final --cleanup")
	})
	return a
}

func (a *Agent) args() []string {
	args := []string{
		"--hostname-override", a.env.NodeName,
		"--state-dir", a.StateDir,
		"--api-socket", filepath.Join(a.StateDir, "api.sock"),
		"--bpf-pin-path", a.PinPath,
		"-v=2",
	}
	if len(a.env.NodeIPs) > 0 {
		var ips []string
		for _, ip := range a.env.NodeIPs {
			ips = append(ips, ip.String())
		}
		args = append(args, "--node-ip", strings.Join(ips, ","))
	}
	args = append(args, a.env.DP.Args()...)
	return append(args, a.ExtraArgs...)
}

// Start runs the agent in the node's namespace and waits until it logged
// its start, with the dataplane the Env expects; it does not wait for a
// sync (see WaitSyncs).
func (a *Agent) Start() *Run {
	a.t.Helper()
	if r := a.Current(); r != nil && !r.Exited() {
		a.t.Fatalf("agent run %d still running", r.N)
	}
	args := append(append(a.args(), a.Source.Args()...),
		"--cluster-cidr", ClusterCIDR,
		"--min-sync-period", "100ms",
		"--sync-period", "2s",
		"--metrics-refresh-interval", "1s",
	)
	r := &Run{N: len(a.runs) + 1, log: &LogBuffer{}, done: make(chan struct{})}
	r.cmd = exec.Command(a.env.AgentPath, args...)
	r.cmd.Stdout, r.cmd.Stderr = r.log, r.log
	if err := a.env.Start(r.cmd); err != nil {
		a.t.Fatalf("start agent: %v", err)
	}
	a.runs = append(a.runs, r)
	go func() {
		r.err = r.cmd.Wait()
		close(r.done)
	}()
	line := a.WaitLog(`"Starting switchyard".*`)
	m := dataplaneRE.FindStringSubmatch(line)
	if m == nil {
		a.t.Fatalf("no dataplane in the start line: %s", line)
	}
	parts, want := strings.Split(m[1], "+"), a.env.DP.StartParts()
	for _, p := range want {
		if !slices.Contains(parts, p) {
			a.t.Fatalf("agent started without the %s dataplane: %s", p, line)
		}
	}
	for _, other := range kernelDataplanes {
		if !slices.Contains(want, other) && slices.Contains(parts, other) {
			a.t.Fatalf("agent started with the %s dataplane, want %v: %s", other, want, line)
		}
	}
	return r
}

var dataplaneRE = regexp.MustCompile(` dataplane="([^"]*)"`)

// kernelDataplanes are the alternatives a node runs one of.
var kernelDataplanes = []string{"ipvs", "nftables"}

// Current is the latest run, nil before the first Start.
func (a *Agent) Current() *Run {
	if len(a.runs) == 0 {
		return nil
	}
	return a.runs[len(a.runs)-1]
}

// Stop sends sig to the running agent and waits (bounded) for it to exit.
func (a *Agent) Stop(sig syscall.Signal) error {
	a.t.Helper()
	r := a.Current()
	if r == nil || r.Exited() {
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

// RunCleanup runs `switchyard --cleanup` as a separate process in the
// node's namespace.
func (a *Agent) RunCleanup() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, a.env.AgentPath, append(a.args(), "--cleanup")...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := a.env.Start(cmd)
	if err == nil {
		err = cmd.Wait()
	}
	a.cleanups = append(a.cleanups, out.String())
	return out.String(), err
}

// Write replaces the objects written under name (a manifest file, by
// default) with the YAML documents in content.
func (a *Agent) Write(name, content string) {
	a.t.Helper()
	a.Source.Write(a.t, name, content)
}

// WriteService writes s to <name>.yaml.
func (a *Agent) WriteService(svcs ...Service) {
	a.t.Helper()
	for _, s := range svcs {
		a.Write(s.Name+".yaml", s.YAML())
	}
}

// Remove deletes the objects written under name.
func (a *Agent) Remove(name string) {
	a.t.Helper()
	a.Source.Remove(a.t, name)
}

// Eventually polls cond every 100ms until it reports true, failing the test
// with cond's last explanation after timeout, or at once if the agent
// exits.
func (a *Agent) Eventually(what string, timeout time.Duration, cond func() (bool, string)) {
	a.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if r := a.Current(); r != nil && r.Exited() {
			a.t.Fatalf("waiting for %s: agent run %d exited: %v", what, r.N, r.err)
		}
		if time.Now().After(deadline) {
			a.t.Fatalf("%s: not within %v: %s", what, timeout, detail)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// WaitSyncs waits until the current run has completed more than after
// syncs (every sync of a run after its first is partial or periodic).
func (a *Agent) WaitSyncs(after int) {
	a.t.Helper()
	r := a.Current()
	a.Eventually(fmt.Sprintf("agent run %d sync #%d", r.N, after+1), Deadline, func() (bool, string) {
		n := r.Syncs()
		return n > after, fmt.Sprintf("%d syncs", n)
	})
}

// WaitLog waits until the current run's log matches re and returns the
// match.
func (a *Agent) WaitLog(re string) string {
	a.t.Helper()
	rx := regexp.MustCompile(re)
	r := a.Current()
	var m string
	a.Eventually("log line matching "+re, Deadline, func() (bool, string) {
		m = rx.FindString(r.log.String())
		return m != "", "no such line"
	})
	return m
}

// NodeName is the agent's --hostname-override: endpoints whose nodeName it
// is are local.
func (a *Agent) NodeName() string { return a.env.NodeName }
