// Package kubeproxy runs upstream kube-proxy (built by package binaries)
// inside a test's network namespace against a test control plane: the
// reference implementation the agent is compared with.
package kubeproxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard/switchyard/test/cluster/controlplane"
	"github.com/switchyard/switchyard/test/cluster/netns"
)

// Proxy is a running kube-proxy.
type Proxy struct {
	NS      *netns.NS
	LogPath string
	cmd     *exec.Cmd
	done    chan struct{}
}

// Options for Start.
type Options struct {
	// Mode is --proxy-mode. Default "nftables".
	Mode string
	// Hostname is --hostname-override: the Node whose InternalIPs
	// kube-proxy takes as its own (create it first, see
	// ControlPlane.CreateNode).
	Hostname string
	// Token authenticates kube-proxy. Empty: the admin token.
	Token string
	// Args are appended to kube-proxy's flags.
	Args []string
}

// Start runs kube-proxy in ns, reaching cp through a forwarder on
// 127.0.0.1:6443 inside ns. Its health and metrics servers listen on
// 127.0.0.1:10256 and 127.0.0.1:10249 inside ns. t.Cleanup stops it
// (SIGTERM, SIGKILL after 5s) and, when the test failed, logs its log's
// tail.
func Start(t testing.TB, cp *controlplane.ControlPlane, ns *netns.NS, opts Options) *Proxy {
	t.Helper()
	if opts.Mode == "" {
		opts.Mode = "nftables"
	}
	if opts.Token == "" {
		opts.Token = cp.AdminToken
	}
	dir := t.TempDir()
	server := "https://" + ns.Forward(t, "127.0.0.1:6443", strings.TrimPrefix(cp.URL, "https://"))
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := cp.WriteKubeconfig(kubeconfig, server, opts.Token); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "kube-proxy.log")
	log, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	args := []string{
		"--proxy-mode", opts.Mode,
		"--kubeconfig", kubeconfig,
		"--hostname-override", opts.Hostname,
		"--healthz-bind-address", "127.0.0.1:10256",
		"--metrics-bind-address", "127.0.0.1:10249",
		// nf_conntrack_max is global: leave the machine's alone.
		"--conntrack-max-per-core", "0",
	}
	cmd := exec.Command(cp.Binaries.Proxy, append(args, opts.Args...)...)
	cmd.Stdout = log
	cmd.Stderr = log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := ns.Start(cmd); err != nil {
		log.Close()
		t.Fatalf("start kube-proxy: %v", err)
	}
	p := &Proxy{NS: ns, LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		log.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("kube-proxy log tail:\n%s", p.LogTail(40))
		}
	})
	return p
}

func (p *Proxy) stop() {
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(5 * time.Second):
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
	}
}

// Exited reports whether kube-proxy has ended.
func (p *Proxy) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Get fetches path (e.g. "/healthz" on 127.0.0.1:10256) from inside the
// namespace.
func (p *Proxy) Get(ctx context.Context, hostport, path string) (int, string, error) {
	c := &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return p.NS.Dial(network, addr, 5*time.Second)
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

// Ruleset is `nft list ruleset` in the namespace.
func (p *Proxy) Ruleset() (string, error) {
	out, err := p.NS.Output("nft", "list", "ruleset")
	if err != nil {
		return "", fmt.Errorf("nft list ruleset in %s: %w: %s", p.NS.Name, err, out)
	}
	return string(out), nil
}

// LogTail is the last n lines of kube-proxy's log.
func (p *Proxy) LogTail(n int) string {
	b, err := os.ReadFile(p.LogPath)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
