package ebpf

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
)

// CgroupRoot returns the mount point of the cgroup v2 hierarchy from
// /proc/self/mountinfo: /sys/fs/cgroup on unified hosts,
// /sys/fs/cgroup/unified on hybrid ones (as on these machines).
func CgroupRoot() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("find cgroup v2 mount: %w", err)
	}
	defer f.Close()
	return cgroupRootFrom(bufio.NewScanner(f))
}

// cgroupRootFrom parses mountinfo lines: "... mountpoint ... - fstype ...".
func cgroupRootFrom(sc *bufio.Scanner) (string, error) {
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		for i, f := range fields {
			if f == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" && len(fields) > 4 {
				return fields[4], nil
			}
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("find cgroup v2 mount: %w", err)
	}
	return "", fmt.Errorf("find cgroup v2 mount: %w", errNoCgroup2)
}

var errNoCgroup2 = errors.New("no cgroup2 file system mounted")

// cgroupID is the kernel's id of the cgroup at path: its inode number.
func cgroupID(path string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", path, err)
	}
	return st.Ino, nil
}
