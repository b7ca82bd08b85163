package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/switchyard/switchyard/dataplane"
)

// recordingDataplane keeps the last State it was synced with.
type recordingDataplane struct {
	mu    sync.Mutex
	dumps []string
	full  []bool
}

func (r *recordingDataplane) Name() string { return "recording" }
func (r *recordingDataplane) Sync(_ context.Context, st *dataplane.State, c dataplane.Changes) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dumps = append(r.dumps, st.Dump())
	r.full = append(r.full, c.Full)
	return nil
}
func (r *recordingDataplane) Cleanup(context.Context) error { return nil }

func (r *recordingDataplane) last() (string, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.dumps) == 0 {
		return "", 0
	}
	return r.dumps[len(r.dumps)-1], len(r.dumps)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The agent in standalone mode reads the manifests directory, syncs the
// dataplane with the resulting model, and follows file changes.
func TestRunStandaloneFollowsManifests(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("web.yaml", `apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: demo
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
  - addresses: [10.244.1.2]
`)
	healthz, metricsAddr := freeLoopbackPort(t), freeLoopbackPort(t)
	cfg, err := parseFlags([]string{"--manifests", dir, "--hostname-override", "Node-A", "--min-sync-period", "0",
		"--healthz-bind-address", healthz, "--metrics-bind-address", metricsAddr, "--api-socket", filepath.Join(t.TempDir(), "api.sock")})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.hostnameOverride != "node-a" {
		t.Fatalf("node name %q", cfg.hostnameOverride)
	}
	dp := &recordingDataplane{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, dp) }()

	want := "demo/web:http/tcp port=80 clusterIPs=[10.96.0.10]\n  10.244.1.2:8080 ready\n"
	waitFor(t, "first sync", func() bool { d, _ := dp.last(); return d == want })
	if !dp.full[0] {
		t.Error("first sync not full")
	}

	// The health server answers, with the sync's time.
	waitFor(t, "/healthz after the first sync", func() bool {
		resp, err := http.Get("http://" + healthz + "/healthz")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var body struct {
			LastUpdated  string `json:"lastUpdated"`
			NodeEligible bool   `json:"nodeEligible"`
		}
		return resp.StatusCode == http.StatusOK && json.NewDecoder(resp.Body).Decode(&body) == nil &&
			body.NodeEligible && !strings.HasPrefix(body.LastUpdated, "0001-01-01")
	})

	// Metrics: the sync and the changes that led to it.
	waitFor(t, "/metrics after the first sync", func() bool {
		resp, err := http.Get("http://" + metricsAddr + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body := string(b)
		return strings.Contains(body, "kubeproxy_sync_full_proxy_rules_duration_seconds_count 1\n") &&
			strings.Contains(body, "kubeproxy_sync_proxy_rules_service_changes_total 1\n") &&
			strings.Contains(body, "kubeproxy_sync_proxy_rules_endpoint_changes_total 1\n") &&
			strings.Contains(body, `switchyard_dataplane_info{dataplane="recording"} 1`)
	})

	// Scale up by editing the file.
	write("web.yaml", strings.Replace(mustRead(t, filepath.Join(dir, "web.yaml")), "  - addresses: [10.244.1.2]\n", "  - addresses: [10.244.1.2]\n  - addresses: [10.244.1.3]\n", 1))
	want2 := want + "  10.244.1.3:8080 ready\n"
	waitFor(t, "scale-up sync", func() bool { d, _ := dp.last(); return d == want2 })

	// A broken file next to it changes nothing for web.
	write("broken.yaml", "kind: Service\nmetadata: {name: [oops\n")
	// Wait past the watcher's debounce window; this is not a speed check.
	time.Sleep(300 * time.Millisecond)
	if d, _ := dp.last(); d != want2 {
		t.Fatalf("broken file changed the state:\n%s", d)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil && err != context.Canceled {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not stop")
	}
}

// freeLoopbackPort returns 127.0.0.1:N with N free a moment ago.
func freeLoopbackPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestParseFlagsRejectsBadValues(t *testing.T) {
	for _, args := range [][]string{
		{"--ipvs-scheduler", "fastest"},
		{"--masquerade-bit", "32"},
		{"--cluster-cidr", "10.0.0.0/33"},
		{"--nodeport-addresses", "nope"},
		{"--sync-period", "0s"},
		{"--node-ip", "10.0.0.300"},
		{"--conntrack-udp-timeout", "-1s"},
		{"--ipvs-tcp-timeout", "-5m"},
		{"--conntrack-max-per-core", "-1"},
		{"--bpf-pin-path", "bpf/switchyard"},
		{"--bpf-cgroup-path", "unified"},
	} {
		if _, err := parseFlags(append(args, "--hostname-override", "n")); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}

// The socket load balancer is off unless asked for; it attaches to the
// discovered cgroup v2 root and pins under /sys/fs/bpf/switchyard.
func TestParseFlagsBPFDefaults(t *testing.T) {
	c, err := parseFlags([]string{"--hostname-override", "n"})
	if err != nil {
		t.Fatal(err)
	}
	if c.bpfSocketLB || c.bpfCgroupPath != "" || c.bpfPinPath != "/sys/fs/bpf/switchyard" {
		t.Errorf("defaults: socket LB %v, cgroup %q, pin path %q; want off, \"\", /sys/fs/bpf/switchyard", c.bpfSocketLB, c.bpfCgroupPath, c.bpfPinPath)
	}
	c, err = parseFlags([]string{"--hostname-override", "n", "--bpf-socket-lb", "--bpf-cgroup-path", "/sys/fs/cgroup/unified/x", "--bpf-pin-path", "/run/bpf/sy"})
	if err != nil {
		t.Fatal(err)
	}
	if !c.bpfSocketLB || c.bpfCgroupPath != "/sys/fs/cgroup/unified/x" || c.bpfPinPath != "/run/bpf/sy" {
		t.Errorf("flags: socket LB %v, cgroup %q, pin path %q", c.bpfSocketLB, c.bpfCgroupPath, c.bpfPinPath)
	}
}
