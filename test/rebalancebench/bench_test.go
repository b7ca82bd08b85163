package rebalancebench

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/agentapi"
	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/test/agentspec"
	"github.com/switchyard/switchyard/test/connfleet"
)

var (
	bench      = flag.Bool("rebalance.bench", false, "run TestRebalanceBench (make bench-rebalance); it needs root")
	clients    = flag.Int("rebalance.clients", 1000, "long-lived client connections per phase")
	offWindow  = flag.Duration("rebalance.off", 20*time.Second, "how long phase off watches after the scale-up")
	onWindow   = flag.Duration("rebalance.on", 30*time.Second, "how long phase on watches after the scale-up")
	maxResets  = flag.Float64("rebalance.max-resets", 200, "the opted-in Service's "+dataplane.AnnotationRebalanceMaxResets)
	minAge     = flag.Duration("rebalance.min-age", time.Second, "the opted-in Service's "+dataplane.AnnotationRebalanceMinAge)
	pngPath    = flag.String("rebalance.png", "../../docs/bench-rebalance.png", "where to write the plot (relative to this package's directory)")
	sampleEach = flag.Duration("rebalance.sample", 200*time.Millisecond, "how often the clients' connections per backend are sampled")
)

const (
	// tolerance is the opted-in Service's and the balance target's.
	tolerance = 0.10
	// requestInterval, attemptTimeout, maxAttempts: each client's pace,
	// the bound of one dial or exchange, the attempts of one request.
	requestInterval = 100 * time.Millisecond
	attemptTimeout  = 2 * time.Second
	maxAttempts     = 4
	// lead: the recording starts this long before the scale-up.
	lead = 2 * time.Second
)

// agentBin is the agent TestMain built; skipReason why the benchmark
// cannot run, when it cannot.
var agentBin, skipReason string

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(run(m))
}

func run(m *testing.M) int {
	switch {
	case !*bench:
		skipReason = "the rebalancer benchmark runs with -rebalance.bench (make bench-rebalance)"
	case os.Geteuid() != 0:
		skipReason = "needs root (network namespaces, nftables)"
	}
	if skipReason != "" {
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "switchyard-rebalancebench-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "rebalancebench:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	agentBin = filepath.Join(dir, "switchyard")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", agentBin, "github.com/switchyard/switchyard/cmd/switchyard")
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "rebalancebench: go build ./cmd/switchyard: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// TestRebalanceBench runs the phases off and on (doc.go) on one agent
// and topology, prints the table and writes the plot. It fails when a
// phase could not be run (the agent exited, a Service was not programmed
// in time, connections could not be established) or a client got a
// wrong answer; the figures themselves are reported, not asserted.
func TestRebalanceBench(t *testing.T) {
	if skipReason != "" {
		t.Skip(skipReason)
	}
	env := newEnv(t)
	topo := env.NewTopology(t, 4)
	a := env.NewAgent(t)
	a.Start()
	a.WaitLog(`"Rebalancer ready for Services that opt in".*conntrack`)
	api := agentapi.NewClient(filepath.Join(a.StateDir, "api.sock"))
	pid := agentPID(t, env, a)

	var phases []*Phase
	for _, ph := range []struct {
		name   string
		ip     string
		window time.Duration
		ann    map[string]string
	}{
		{"off", "10.96.0.100", *offWindow, nil},
		{"on", "10.96.0.101", *onWindow, agentspec.RebalanceAnnotations(tolerance, *maxResets, *minAge, false)},
	} {
		// "rebalance-": a Service named off or on would be a YAML bool.
		svc := agentspec.Service{Name: "rebalance-" + ph.name, ClusterIP: netip.MustParseAddr(ph.ip), Port: 80, Backends: topo.Backends[:2]}
		p := runPhase(t, env, a, api, pid, topo, ph.name, svc, ph.ann, ph.window)
		t.Logf("phase %s: %d samples, settled: %v", p.Name, len(p.Samples), fmt.Sprint(p.Settled()))
		phases = append(phases, p)
	}
	var out bytes.Buffer
	WriteTable(&out, phases)
	fmt.Fprintf(&out, "command: make bench-rebalance (go test ./test/rebalancebench -rebalance.bench -rebalance.clients %d -rebalance.off %v -rebalance.on %v -rebalance.max-resets %v -rebalance.min-age %v)\n",
		*clients, *offWindow, *onWindow, *maxResets, *minAge)
	if err := WritePlot(*pngPath, phases); err != nil {
		t.Errorf("plot: %v", err)
	} else {
		abs, _ := filepath.Abs(*pngPath)
		fmt.Fprintf(&out, "plot: %s\n", abs)
	}
	// Straight to stdout: the table is the benchmark's output.
	fmt.Print("\n" + out.String())
	for _, p := range phases {
		if p.Bad > 0 {
			t.Errorf("phase %s: %d wrong answers (a backend the Service does not have, or the wrong source)", p.Name, p.Bad)
		}
	}
}

// runPhase: svc (on 2 backends, annotated with ann) is written, the
// clients connect evenly, the recording starts, svc scales to every
// backend of topo, and after window the phase ends: clients stopped,
// Service removed.
func runPhase(t *testing.T, env *agentspec.Env, a *agentspec.Agent, api *agentapi.Client, pid int,
	topo *agentspec.Topology, name string, svc agentspec.Service, ann map[string]string, window time.Duration) *Phase {
	t.Helper()
	two, all := svc.Backends, topo.Backends
	ids := agentspec.BackendIDs(all)
	port := agentspec.PortName(svc)
	a.WriteAnnotated(svc, ann)
	waitModel(t, a, api, 1, len(two))

	// The client is outside --cluster-cidr: masqueraded to the node's
	// address on the backend's link.
	f := agentspec.NewFleet(t, connfleet.Config{
		Name: svc.Name, Interval: requestInterval, AttemptTimeout: attemptTimeout, MaxAttempts: maxAttempts,
		// The phase's requests and then some: establishing 1000
		// connections takes seconds.
		MaxRequests: int((window + lead + time.Minute) / requestInterval),
	}, topo, svc, agentspec.MasqueradedSource)
	start := time.Now()
	agentspec.Establish(t, f, *clients, two)
	t.Logf("phase %s: %d connections in %v", name, *clients, time.Since(start).Round(time.Millisecond))
	if ann != nil {
		// The rebalancer has measured them even before the scale-up.
		waitMetric(t, env, a, fmt.Sprintf(`switchyard_rebalance_rounds_total{outcome="balanced",service="%s"}`, port), 1)
	}
	rec := f.Record(*sampleEach, int((window+lead+time.Minute) / *sampleEach))
	time.Sleep(lead)

	before := f.Snapshot()
	resets0 := agentResets(t, env, port)
	cpu0 := cpuTime(t, pid)
	agentspec.Allow(t, f, all)
	svc.Backends = all
	scaled := time.Now()
	a.WriteAnnotated(svc, ann)
	waitModel(t, a, api, 1, len(all))
	for time.Since(scaled) < window {
		if a.Current().Exited() {
			t.Fatalf("phase %s: the agent exited: %s", name, a.Current().Log())
		}
		time.Sleep(min(500*time.Millisecond, window-time.Since(scaled)))
	}
	cpu1 := cpuTime(t, pid)
	watched := time.Since(scaled)
	samples := rec.Stop()
	resets1 := agentResets(t, env, port)
	after := f.Snapshot()
	f.Stop()
	a.Remove(svc.Name + ".yaml")
	waitModel(t, a, api, 0, 0)

	return &Phase{
		Name: name, Clients: *clients, Backends: ids, From: len(two), To: len(all), Tolerance: tolerance,
		ScaledAt: scaled, Window: watched, Samples: samples, Before: before.Counts,
		ClientResets: after.Lost - before.Lost, AgentResets: resets1 - resets0, Errs: after.Errs,
		Failed: after.Failed, Bad: after.Bad, Answered: after.Answered, CPU: cpu1 - cpu0,
	}
}

// waitModel waits until a sync of the agent succeeded with ports Service
// ports and endpoints endpoints in its model: the kernel has them.
func waitModel(t *testing.T, a *agentspec.Agent, api *agentapi.Client, ports, endpoints int) {
	t.Helper()
	a.Eventually(fmt.Sprintf("a sync with %d Service ports, %d endpoints", ports, endpoints), agentspec.Deadline, func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st, err := api.Status(ctx)
		if err != nil {
			return false, err.Error()
		}
		return st.ServicePorts == ports && st.Endpoints == endpoints && st.LastError == "", fmt.Sprintf("%+v", *st)
	})
}

// metricSum sums the samples of name whose labels include service=port.
func metricSum(text, name, port string) float64 {
	rx := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `\{[^}]*service="` + regexp.QuoteMeta(port) + `"[^}]*\} (\S+)$`)
	sum := 0.0
	for _, m := range rx.FindAllStringSubmatch(text, -1) {
		if v, err := strconv.ParseFloat(m[1], 64); err == nil {
			sum += v
		}
	}
	return sum
}

// agentResets is switchyard_rebalance_resets_total of a Service port,
// every mechanism.
func agentResets(t *testing.T, env *agentspec.Env, port string) float64 {
	t.Helper()
	return metricSum(env.MustMetrics(t), "switchyard_rebalance_resets_total", port)
}

// waitMetric waits until the series (exact) reaches at least want.
func waitMetric(t *testing.T, env *agentspec.Env, a *agentspec.Agent, series string, want float64) {
	t.Helper()
	a.Eventually(fmt.Sprintf("%s >= %v", series, want), agentspec.Deadline, func() (bool, string) {
		text, err := env.Metrics()
		if err != nil {
			return false, err.Error()
		}
		v, ok := agentspec.Sample(text, series)
		return ok && v >= want, fmt.Sprintf("%s %v (present %v)", series, v, ok)
	})
}

// agentPID finds the agent's process: the binary the Env runs with this
// agent's --state-dir on its command line.
func agentPID(t *testing.T, env *agentspec.Env, a *agentspec.Agent) int {
	t.Helper()
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var found []int
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if args[0] == env.AgentPath && slices.Contains(args, a.StateDir) && !slices.Contains(args, "--cleanup") {
			found = append(found, pid)
		}
	}
	if len(found) != 1 {
		t.Fatalf("agent processes with --state-dir %s: %v, want one", a.StateDir, found)
	}
	return found[0]
}

// userHZ is the unit of /proc/<pid>/stat's times (USER_HZ, 100 on every
// Linux architecture Go supports but alpha).
const userHZ = 100

// cpuTime is a process's utime+stime plus those of its waited-for
// children, from /proc/<pid>/stat.
func cpuTime(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatalf("agent CPU: %v", err)
	}
	// The fields after the command name (which may hold spaces) in
	// parentheses: state is field 3, utime..cstime fields 14..17.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		t.Fatalf("agent CPU: malformed /proc/%d/stat %q", pid, b)
	}
	sc := bufio.NewScanner(bytes.NewReader(b[i+1:]))
	sc.Split(bufio.ScanWords)
	var fields []string
	for sc.Scan() {
		fields = append(fields, sc.Text())
	}
	if len(fields) < 15 {
		t.Fatalf("agent CPU: /proc/%d/stat has %d fields after the name", pid, len(fields))
	}
	ticks := int64(0)
	for _, f := range fields[11:15] { // fields 14..17 of the whole line
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			t.Fatalf("agent CPU: /proc/%d/stat: %v", pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / userHZ
}
