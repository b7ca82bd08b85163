package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard/switchyard/cmd/yardctl/cli"
)

// TestMain doubles as yardctl run by the permission test as another user.
func TestMain(m *testing.M) {
	if args := os.Getenv("YARDCTL_TEST_ARGS"); args != "" {
		cmd := cli.NewCommand(cli.Env{})
		cmd.SetArgs(strings.Fields(args))
		if err := cmd.Execute(); err != nil {
			os.Stderr.WriteString("yardctl: " + err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// A user other than root cannot use the agent's socket: yardctl status as
// uid 65534 fails with EACCES and says the API is for root, even though
// the socket's directory is open to everyone.
func TestNonRootRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run yardctl as another user")
	}
	dir, err := os.MkdirTemp("", "yardctl-perm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "switchyard.sock")
	startAgentAt(t, sock)

	// The same command works as root.
	if out, err := yardctl(t, sock, nil, "status"); err != nil || !strings.Contains(out, "Agent:") {
		t.Fatalf("yardctl status as root: %v\n%s", err, out)
	}

	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "yardctl.test")
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin)
	cmd.Env = []string{"YARDCTL_TEST_ARGS=--socket " + sock + " status"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("yardctl status as uid 65534 succeeded:\n%s", out)
	}
	if !strings.Contains(string(out), "permission denied") || !strings.Contains(string(out), "the api is for root") {
		t.Errorf("yardctl status as uid 65534: %v\n%s\nwant a permission denied (EACCES) error", err, out)
	}
}

func startAgentAt(t *testing.T, sock string) {
	t.Helper()
	n := newIPVSNode(t)
	s, err := newServerAt(sock, &fakeSyncer{st: n.st, syncs: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
}
