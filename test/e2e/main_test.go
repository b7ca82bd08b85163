// Package e2e runs switchyard against a real control plane: etcd and
// kube-apiserver built from Go modules (test/cluster), the agent in a
// network namespace acting as the node, connected through a forwarder
// with the DaemonSet's own RBAC (deploy/rbac.yaml, a ServiceAccount
// token), and the agent spec's scenarios (test/agentspec) writing their
// Services, EndpointSlices and Pods through the API server instead of a
// manifests directory.
//
// This is its own module: it needs both the main module (the agent spec)
// and test/cluster (which builds Kubernetes), and the main module must
// never depend on Kubernetes' build.
package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/switchyard/switchyard/test/cluster/binaries"

	"github.com/switchyard/switchyard/test/agentspec"
)

var (
	// agentBin is the agent TestMain built; bins the control plane's.
	agentBin string
	bins     binaries.Paths
	// skipReason says why the tests cannot run here.
	skipReason string
)

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "switchyard-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if skipReason, err = prepare(dir); err != nil {
		// A build failure is a failure, not a reason to skip.
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	return m.Run()
}

// prepare builds the agent (from the main module, as `make build` does)
// and the control plane's binaries (cached), or says why to skip.
func prepare(dir string) (skip string, err error) {
	switch {
	case testing.Short():
		return "end-to-end tests skipped in -short mode", nil
	case os.Geteuid() != 0:
		return "needs root (network namespaces, nftables)", nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	if agentBin, err = agentspec.BuildAgent(dir, nil); err != nil {
		return "", err
	}
	if bins, err = binaries.BuildWith(ctx, binaries.Options{Log: os.Stderr}); err != nil {
		return "", fmt.Errorf("control plane binaries: %w", err)
	}
	return "", nil
}

func requireE2E(t *testing.T) {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
}
