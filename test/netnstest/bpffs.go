package netnstest

import (
	"testing"

	"golang.org/x/sys/unix"
)

// NewBPFFS mounts a private bpf file system on a fresh temporary directory
// for pinning BPF maps and links; t.Cleanup unmounts it (pins vanish with
// it, and links pinned only there are detached once nothing holds them).
func NewBPFFS(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Skipf("netnstest: mount bpffs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("netnstest: unmount bpffs %s: %v", dir, err)
		}
	})
	return dir
}
