// Package capstest shows which Linux capabilities the agent needs, for
// deploy/unprivileged-patch.yaml and docs/migration.md ("Privileged or
// capabilities"). Its tests build the agent, then run it the way a
// container runtime runs an unprivileged container's process: as root
// with the capability bounding set (and so the permitted and effective
// sets after exec) reduced to a list, and with /proc/sys mounted
// read-only in a private mount namespace. Every run is in a network
// namespace the test creates (test/netnstest), with its own state
// directory, BPF pin path and cgroup; nothing touches the machine's own
// network namespace, bpf file system or cgroup root.
//
// The re-exec: the test binary starts itself with CAPSTEST_EXEC set; its
// TestMain then, on one locked OS thread, makes /proc/sys read-only (when
// asked), drops every capability not in CAPSTEST_KEEP from the bounding
// set and execs the agent. Needs root; skips otherwise, without a Go
// toolchain and in -short mode.
package capstest
