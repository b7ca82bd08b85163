// Package nftnetns runs the agent's behavioural spec (test/agentspec)
// against the nftables dataplane on the host: TestMain builds the agent
// once, and every scenario runs `switchyard --dataplane nftables` in a node
// network namespace created for it (unique name per run), never in the
// host's own namespace. Needs root; skips otherwise, without `go` and in
// -short mode.
package nftnetns

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/test/netnstest"

	"github.com/switchyard/switchyard/test/agentspec"
)

// agentBin is the agent TestMain built; skipReason says why the tests
// cannot run, when they cannot. Set once in TestMain, read-only after.
var agentBin, skipReason string

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "switchyard-nftnetns-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "nftnetns:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if skipReason, err = prepare(dir); err != nil {
		// A build failure is a failure, not a reason to skip.
		fmt.Fprintln(os.Stderr, "nftnetns:", err)
		return 1
	}
	return m.Run()
}

// prepare builds the agent into dir, or returns why the tests must skip.
func prepare(dir string) (skip string, err error) {
	switch {
	case testing.Short():
		return "agent tests against the real kernel skipped in -short mode", nil
	case os.Geteuid() != 0:
		return "needs root (network namespaces, nftables)", nil
	}
	agentBin, err = agentspec.BuildAgent(dir, nil)
	return "", err
}

// probeNFTables checks, once, that the agent constructs the nftables
// dataplane for --dataplane nftables: `--cleanup` in a scratch namespace
// must end with "Cleanup done" for a chain of dataplanes that includes
// nftables. One clear failure instead of one per scenario.
func probeNFTables(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ns := netnstest.New(t, "sy-probe")
	var out bytes.Buffer
	// A private --bpf-pin-path: BPF pins are not per network namespace,
	// and --cleanup must not touch those of a real agent on the machine.
	cmd := exec.CommandContext(ctx, agentBin, "--dataplane", "nftables", "--cleanup", "--hostname-override", "probe",
		"--state-dir", t.TempDir(), "--bpf-pin-path", filepath.Join(t.TempDir(), "bpf"))
	cmd.Stdout, cmd.Stderr = &out, &out
	err := ns.Do(cmd.Start)
	if err == nil {
		err = cmd.Wait()
	}
	// --cleanup cleans every dataplane it can set up: nftables among them.
	if err != nil || !regexp.MustCompile(`"Cleanup done" dataplane="([^"]*\+)?nftables[+"]`).MatchString(out.String()) {
		t.Fatalf("the agent does not construct the nftables dataplane for --dataplane nftables "+
			"(cmd/switchyard newDataplane, newCleanupDataplane); `switchyard --dataplane nftables --cleanup` in a fresh namespace: %v\n%s",
			err, strings.TrimSpace(out.String()))
	}
}

// requireAgent skips the test when TestMain could not prepare the agent.
func requireAgent(t *testing.T) {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
}
