// Package nodeproc runs a proxy process (switchyard or upstream
// kube-proxy) inside a test's node namespace: its own process group, its
// output in a log file, stopped in t.Cleanup; and HTTP requests to the
// health and metrics servers it listens on inside that namespace.
package nodeproc

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard/switchyard/test/netnstest"
)

// Proc is a running process.
type Proc struct {
	LogPath string
	// Started is when it was started.
	Started time.Time
	cmd     *exec.Cmd
	done    chan struct{}
}

// Start starts cmd inside ns with its stdout and stderr in logPath, in a
// process group of its own (SIGKILLed if the test process dies first).
// t.Cleanup stops it (SIGTERM, SIGKILL after 5 s) and, when the test
// failed, logs the tail of its log under name.
func Start(t testing.TB, ns *netnstest.NS, name, logPath string, cmd *exec.Cmd) *Proc {
	t.Helper()
	log, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p := &Proc{LogPath: logPath, cmd: cmd, done: make(chan struct{}), Started: time.Now()}
	if err := ns.Do(cmd.Start); err != nil {
		log.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { _ = cmd.Wait(); log.Close(); close(p.done) }()
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("%s log tail:\n%s", name, p.LogTail(40))
		}
	})
	return p
}

// Pid is the process's (and its group's) id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Stop sends SIGTERM to the process group and, after 5 s, SIGKILL;
// bounded: it returns within some 10 s.
func (p *Proc) Stop() {
	_ = syscall.Kill(-p.Pid(), syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(5 * time.Second):
	}
	_ = syscall.Kill(-p.Pid(), syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
	}
}

// Done is closed once the process has ended.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// LogTail is the last n lines of its log.
func (p *Proc) LogTail(n int) string {
	b, err := os.ReadFile(p.LogPath)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// Get fetches http://hostport/path (a health or metrics server) from
// inside ns. The transport dials on goroutines of its own, so the dial
// enters the namespace explicitly.
func Get(ctx context.Context, ns *netnstest.NS, hostport, path string, timeout time.Duration) (int, string, error) {
	c := &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{DialContext: func(_ context.Context, network, addr string) (net.Conn, error) {
			return netnstest.Dial(ns, network, addr, timeout)
		}},
	}
	defer c.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+hostport+path, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(body), err
}
