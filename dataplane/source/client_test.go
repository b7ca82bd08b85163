package source

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/rest"
)

const testKubeconfig = `apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: https://10.0.0.1:6443
    insecure-skip-tls-verify: true
users:
- name: u
  user:
    token: secret
contexts:
- name: ctx
  context: {cluster: c, user: u}
current-context: ctx
`

func TestRESTConfigFromFlags(t *testing.T) {
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(testKubeconfig), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, kubeconfig, master, wantHost string
	}{
		{"kubeconfig", kubeconfig, "", "https://10.0.0.1:6443"},
		{"master overrides kubeconfig", kubeconfig, "https://10.0.0.2:6443", "https://10.0.0.2:6443"},
		{"master only", "", "http://127.0.0.1:8080", "http://127.0.0.1:8080"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := restConfigFromFlags(tc.kubeconfig, tc.master)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Host != tc.wantHost {
				t.Errorf("Host %q, want %q", cfg.Host, tc.wantHost)
			}
			if cfg.ContentType != "application/vnd.kubernetes.protobuf" || !strings.HasPrefix(cfg.AcceptContentTypes, "application/vnd.kubernetes.protobuf,") {
				t.Errorf("content types %q / %q, want protobuf", cfg.ContentType, cfg.AcceptContentTypes)
			}
			if cfg.QPS != clientQPS || cfg.Burst != clientBurst {
				t.Errorf("QPS %v burst %d", cfg.QPS, cfg.Burst)
			}
			if !strings.Contains(cfg.UserAgent, "switchyard") {
				t.Errorf("UserAgent %q", cfg.UserAgent)
			}
		})
	}
	if c, err := ClientFromFlags(kubeconfig, ""); err != nil || c == nil {
		t.Errorf("ClientFromFlags: %v, %v", c, err)
	}
}

func TestRESTConfigFromFlagsErrors(t *testing.T) {
	// Not in a pod: the in-cluster fallback must fail with a clear message.
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
	_, err := ClientFromFlags("", "")
	if !errors.Is(err, rest.ErrNotInCluster) || !strings.Contains(err.Error(), "--kubeconfig") {
		t.Errorf("no flags outside a cluster: %v", err)
	}
	_, err = ClientFromFlags(filepath.Join(t.TempDir(), "missing"), "")
	if err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing kubeconfig: %v", err)
	}
}
