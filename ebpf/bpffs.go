package ebpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

const bpffsRoot = "/sys/fs/bpf"

// ensureBPFFS makes sure dir can hold pins: it must lie on a bpf file
// system. The conventional /sys/fs/bpf is mounted when missing, as Cilium
// and Calico do (hosts without systemd's mount, containers with a plain
// /sys); any other location must already be one.
func ensureBPFFS(dir string) error {
	onBPF, err := onBPFFS(dir)
	if err != nil {
		return err
	}
	if onBPF {
		return nil
	}
	rel, err := filepath.Rel(bpffsRoot, dir)
	if err != nil || rel == ".." || filepath.IsAbs(rel) || len(rel) >= 2 && rel[:2] == ".." {
		return fmt.Errorf("pin path %s is not on a bpf file system (mount one: mount -t bpf bpf <dir>)", dir)
	}
	if err := os.MkdirAll(bpffsRoot, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", bpffsRoot, err)
	}
	if err := unix.Mount("bpf", bpffsRoot, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", bpffsRoot, err)
	}
	klog.InfoS("Mounted the bpf file system", "path", bpffsRoot)
	return nil
}

// onBPFFS reports whether dir, or its nearest existing ancestor, is on a
// bpf file system.
func onBPFFS(dir string) (bool, error) {
	for p := filepath.Clean(dir); ; p = filepath.Dir(p) {
		var st unix.Statfs_t
		err := unix.Statfs(p, &st)
		if err == nil {
			return st.Type == unix.BPF_FS_MAGIC, nil
		}
		if !errors.Is(err, unix.ENOENT) || p == "/" {
			return false, fmt.Errorf("statfs %s: %w", p, err)
		}
	}
}
