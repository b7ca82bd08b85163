package capstest

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/switchyard/switchyard/test/agentspec"
)

// The re-exec protocol (see the package doc): the test binary runs itself
// as "<test binary> <program> <args...>" with these set.
const (
	envExec       = "CAPSTEST_EXEC"       // "1": drop capabilities and exec
	envKeep       = "CAPSTEST_KEEP"       // capabilities kept, "NET_ADMIN,SYS_ADMIN"
	envROProcSys  = "CAPSTEST_RO_PROCSYS" // "1": /proc/sys read-only first
	execFailed    = 127
	agentDeadline = 20 * time.Second
)

// agentBin is the agent TestMain built; skipReason says why the tests
// cannot run. Set once in TestMain, read-only after.
var agentBin, skipReason string

func TestMain(m *testing.M) {
	if os.Getenv(envExec) == "1" {
		os.Exit(capExec(os.Args[1:])) // returns only when exec failed
	}
	flag.Parse()
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "switchyard-capstest-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "capstest:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if skipReason, err = prepare(dir); err != nil {
		fmt.Fprintln(os.Stderr, "capstest:", err)
		return 1
	}
	return m.Run()
}

// prepare builds the agent into dir, or returns why the tests must skip.
func prepare(dir string) (skip string, err error) {
	switch {
	case testing.Short():
		return "capability tests against the real kernel skipped in -short mode", nil
	case os.Geteuid() != 0:
		return "needs root (network and mount namespaces, capability bounding set)", nil
	}
	// As the image builds it (deploy/Dockerfile): static, no cgo.
	agentBin, err = agentspec.BuildAgent(dir, []string{"CGO_ENABLED=0"}, "-trimpath")
	return "", err
}

func requireAgent(t *testing.T) {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
}

// capExec is the re-executed test binary: on one locked OS thread
// (capabilities and the mount namespace are per thread, and execve keeps
// the calling thread's), it makes /proc/sys read-only if asked, reduces
// the bounding set to CAPSTEST_KEEP and execs args. As root, the
// program's permitted and effective sets after exec are the bounding set:
// what a container runtime gives a container's root process.
func capExec(args []string) int {
	runtime.LockOSThread()
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "capstest exec:", err)
		return execFailed
	}
	if len(args) == 0 {
		return fail(errors.New("no program to run"))
	}
	keep, err := parseCaps(os.Getenv(envKeep))
	if err != nil {
		return fail(err)
	}
	if os.Getenv(envROProcSys) == "1" {
		if err := readOnlyProcSys(); err != nil {
			return fail(err)
		}
	}
	if err := reduceBoundingSet(keep); err != nil {
		return fail(err)
	}
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CAPSTEST_") {
			env = append(env, kv)
		}
	}
	return fail(unix.Exec(args[0], args, env))
}

// readOnlyProcSys gives the thread a private mount namespace in which
// /proc/sys is a read-only bind mount of itself, as runc does for an
// unprivileged container (its readonlyPaths).
func readOnlyProcSys() error {
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("unshare mount namespace: %w", err)
	}
	// Nothing done here may reach the machine's mount namespace.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	if err := unix.Mount("/proc/sys", "/proc/sys", "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind /proc/sys: %w", err)
	}
	flags := uintptr(unix.MS_BIND | unix.MS_REMOUNT | unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC)
	if err := unix.Mount("", "/proc/sys", "", flags, ""); err != nil {
		return fmt.Errorf("remount /proc/sys read-only: %w", err)
	}
	return nil
}

// reduceBoundingSet drops every capability not in keep from the calling
// thread's bounding set (CAP_SETPCAP, which dropping needs, last) and
// clears the ambient set.
func reduceBoundingSet(keep map[int]bool) error {
	last, err := lastCap()
	if err != nil {
		return err
	}
	drop := func(c int) error {
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
			return fmt.Errorf("drop capability %d from the bounding set: %w", c, err)
		}
		return nil
	}
	for c := 0; c <= last; c++ {
		if !keep[c] && c != unix.CAP_SETPCAP {
			if err := drop(c); err != nil {
				return err
			}
		}
	}
	if !keep[unix.CAP_SETPCAP] {
		if err := drop(unix.CAP_SETPCAP); err != nil {
			return err
		}
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return fmt.Errorf("clear ambient capabilities: %w", err)
	}
	return nil
}

func lastCap() (int, error) {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// capNumbers are the capabilities a Kubernetes securityContext may name
// that these tests use (names without CAP_, as in the manifests).
var capNumbers = map[string]int{
	"NET_ADMIN":    unix.CAP_NET_ADMIN,
	"NET_RAW":      unix.CAP_NET_RAW,
	"SYS_MODULE":   unix.CAP_SYS_MODULE,
	"SYS_ADMIN":    unix.CAP_SYS_ADMIN,
	"SYS_PTRACE":   unix.CAP_SYS_PTRACE,
	"SYS_RESOURCE": unix.CAP_SYS_RESOURCE,
	"BPF":          unix.CAP_BPF,
	"PERFMON":      unix.CAP_PERFMON,
	"SETPCAP":      unix.CAP_SETPCAP,
}

func parseCaps(list string) (map[int]bool, error) {
	keep := map[int]bool{}
	for _, name := range strings.Split(list, ",") {
		if name = strings.TrimSpace(name); name == "" {
			continue
		}
		n, ok := capNumbers[name]
		if !ok {
			return nil, fmt.Errorf("unknown capability %q", name)
		}
		keep[n] = true
	}
	return keep, nil
}

// capMask is the status-file mask of a capability list.
func capMask(t *testing.T, caps []string) uint64 {
	t.Helper()
	keep, err := parseCaps(strings.Join(caps, ","))
	if err != nil {
		t.Fatal(err)
	}
	var m uint64
	for c := range keep {
		m |= 1 << c
	}
	return m
}
