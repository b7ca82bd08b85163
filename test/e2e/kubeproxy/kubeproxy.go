// Package kubeproxy runs upstream kube-proxy (built by test/cluster's
// binaries) inside a test's node namespace against a test control plane:
// the reference implementation switchyard is compared with.
package kubeproxy

import (
	"context"
	"fmt"
	"net/url"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/switchyard/switchyard/test/cluster/controlplane"
	"github.com/switchyard/switchyard/test/e2e/nodeproc"
	"github.com/switchyard/switchyard/test/netnstest"
)

// Health and metrics addresses kube-proxy listens on inside its namespace.
const (
	HealthzAddr = "127.0.0.1:10256"
	MetricsAddr = "127.0.0.1:10249"
)

// apiInNode is where kube-proxy finds the API server inside its
// namespace: a relay to the control plane's loopback port (the serving
// certificate is valid for 127.0.0.1).
const apiInNode = "127.0.0.1:6443"

// Proxy is a running kube-proxy.
type Proxy struct {
	*nodeproc.Proc
	NS *netnstest.NS
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

// Start runs kube-proxy in ns, reaching cp through netnstest.Forward on
// 127.0.0.1:6443 inside ns, with its health and metrics servers on
// HealthzAddr and MetricsAddr inside ns. t.Cleanup stops it (see
// nodeproc.Start).
func Start(t testing.TB, cp *controlplane.ControlPlane, ns *netnstest.NS, opts Options) *Proxy {
	t.Helper()
	if opts.Mode == "" {
		opts.Mode = "nftables"
	}
	if opts.Token == "" {
		opts.Token = cp.AdminToken
	}
	u, err := url.Parse(cp.URL)
	if err != nil {
		t.Fatal(err)
	}
	netnstest.Forward(t, ns, apiInNode, u.Host)
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := cp.WriteKubeconfig(kubeconfig, "https://"+apiInNode, opts.Token); err != nil {
		t.Fatal(err)
	}
	args := []string{
		"--proxy-mode", opts.Mode,
		"--kubeconfig", kubeconfig,
		"--hostname-override", opts.Hostname,
		"--healthz-bind-address", HealthzAddr,
		"--metrics-bind-address", MetricsAddr,
		// nf_conntrack_max is global: leave the machine's alone.
		"--conntrack-max-per-core", "0",
	}
	cmd := exec.Command(cp.Binaries.Proxy, append(args, opts.Args...)...)
	return &Proxy{Proc: nodeproc.Start(t, ns, "kube-proxy", filepath.Join(dir, "kube-proxy.log"), cmd), NS: ns}
}

// WaitHealthy waits until /healthz answers 200 (kube-proxy's first sync of
// every family is done), failing t after timeout or when it exits.
func (p *Proxy) WaitHealthy(t testing.TB, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if p.Exited() {
			t.Fatalf("kube-proxy exited:\n%s", p.LogTail(30))
		}
		code, body, err := nodeproc.Get(context.Background(), p.NS, HealthzAddr, "/healthz", 2*time.Second)
		if err == nil && code == 200 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("kube-proxy not healthy after %v: %d %s %v", timeout, code, body, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Ruleset is `nft list ruleset` in the namespace.
func (p *Proxy) Ruleset() (string, error) {
	var out []byte
	err := p.NS.Do(func() (err error) {
		out, err = exec.Command("nft", "list", "ruleset").CombinedOutput()
		return err
	})
	if err != nil {
		return "", fmt.Errorf("nft list ruleset in %s: %w: %s", p.NS.Name(), err, out)
	}
	return string(out), nil
}
