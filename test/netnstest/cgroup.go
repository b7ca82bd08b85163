package netnstest

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Cgroup is a child cgroup v2 directory a test attaches BPF programs to,
// so they see only the test's own sockets, never the machine's.
type Cgroup struct {
	Path string
}

// NewCgroup creates <cgroup2 root>/<prefix>-<pid>-<random>. t.Cleanup moves
// any process still in it back to the root and removes it.
func NewCgroup(t testing.TB, prefix string) *Cgroup {
	t.Helper()
	root, err := cgroup2Root()
	if err != nil {
		t.Skipf("netnstest: %v", err)
	}
	rnd := make([]byte, 3)
	_, _ = rand.Read(rnd)
	path := filepath.Join(root, fmt.Sprintf("%s-%d-%s", prefix, os.Getpid(), hex.EncodeToString(rnd)))
	if err := os.Mkdir(path, 0o755); err != nil {
		t.Fatalf("netnstest: create cgroup: %v", err)
	}
	cg := &Cgroup{Path: path}
	t.Cleanup(func() {
		if err := cg.remove(root); err != nil {
			t.Errorf("netnstest: %v", err)
		}
	})
	return cg
}

// Enter moves the calling process (every thread: cgroup v2 moves whole
// processes) into the cgroup, so sockets it creates from now on belong to
// it; t.Cleanup moves it back to where it was. Tests that Enter must not
// run in parallel with tests that must not be translated.
func (cg *Cgroup) Enter(t testing.TB) {
	t.Helper()
	prev, err := ownCgroup()
	if err != nil {
		t.Fatalf("netnstest: %v", err)
	}
	if err := cg.Add(os.Getpid()); err != nil {
		t.Fatalf("netnstest: %v", err)
	}
	t.Cleanup(func() {
		if err := os.WriteFile(filepath.Join(prev, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
			t.Errorf("netnstest: leave cgroup: %v", err)
		}
	})
}

// Add moves process pid into the cgroup.
func (cg *Cgroup) Add(pid int) error {
	if err := os.WriteFile(filepath.Join(cg.Path, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		return fmt.Errorf("move %d into %s: %w", pid, cg.Path, err)
	}
	return nil
}

func (cg *Cgroup) remove(root string) error {
	// Processes left behind (a failed test) go back to the root first:
	// rmdir refuses a populated cgroup.
	data, _ := os.ReadFile(filepath.Join(cg.Path, "cgroup.procs"))
	for _, pid := range strings.Fields(string(data)) {
		_ = os.WriteFile(filepath.Join(root, "cgroup.procs"), []byte(pid), 0)
	}
	var err error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if err = os.Remove(cg.Path); err == nil || os.IsNotExist(err) {
			return nil
		}
	}
	return fmt.Errorf("remove cgroup %s: %w", cg.Path, err)
}

// ownCgroup is the cgroup v2 directory of the calling process.
func ownCgroup() (string, error) {
	root, err := cgroup2Root()
	if err != nil {
		return "", err
	}
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rel, ok := strings.CutPrefix(line, "0::"); ok {
			return filepath.Join(root, rel), nil
		}
	}
	return root, nil
}

// cgroup2Root finds the cgroup v2 mount in /proc/self/mountinfo.
func cgroup2Root() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		for i, fld := range fields {
			if fld == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" && len(fields) > 4 {
				return fields[4], nil
			}
		}
	}
	return "", fmt.Errorf("no cgroup2 mount")
}
