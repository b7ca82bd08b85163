package vm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// DefaultHostBinaries are the userspace tools guest tests may shell out to
// (coreos/go-iptables runs iptables; ipset for debugging and parity checks).
// The iptables names go through /etc/alternatives as on the host, so the
// guest gets the host's default backend; the -legacy names are there too.
var DefaultHostBinaries = []string{
	"iptables", "iptables-save", "iptables-restore",
	"ip6tables", "ip6tables-save", "ip6tables-restore",
	"iptables-legacy", "iptables-legacy-save", "iptables-legacy-restore",
	"ip6tables-legacy", "ip6tables-legacy-save", "ip6tables-legacy-restore",
	"iptables-nft", "iptables-nft-save", "iptables-nft-restore",
	"ipset",
}

// xtablesDirs hold the iptables extension plugins, dlopen'ed at run time
// (so ldd on the binary does not list them).
var xtablesDirs = []string{"/usr/lib/x86_64-linux-gnu/xtables", "/usr/lib/xtables"}

// hostFiles are small data files the tools read when present.
var hostFiles = []string{"/etc/protocols", "/etc/services", "/etc/ethertypes"}

// AvailableHostBinaries filters names to those found in PATH (or /usr/sbin,
// /sbin, which a non-root PATH may lack), logging the missing ones.
func AvailableHostBinaries(names []string, logf func(string, ...any)) []string {
	var out []string
	for _, n := range names {
		if p, err := lookPath(n); err == nil {
			out = append(out, p)
		} else {
			logf("vm: host binary %s not found, not copied into the VM", n)
		}
	}
	return out
}

func lookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return filepath.Abs(p)
	}
	for _, d := range []string{"/usr/sbin", "/sbin"} {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not found in PATH", name)
}

// addHostBinaries copies binaries, their shared libraries (from ldd), the
// xtables plugin directory and a few /etc files into the archive at the
// paths they have on the host.
func (a *archive) addHostBinaries(ctx context.Context, bins []string) error {
	if len(bins) == 0 {
		return nil
	}
	var elfs []string
	for _, b := range bins {
		p, err := lookPath(b)
		if err != nil {
			return fmt.Errorf("host binary: %w", err)
		}
		if err := a.addHostPath(p); err != nil {
			return err
		}
		real, err := filepath.EvalSymlinks(p)
		if err != nil {
			return fmt.Errorf("host binary: %w", err)
		}
		elfs = append(elfs, real)
	}
	for _, d := range xtablesDirs {
		plugins, _ := filepath.Glob(filepath.Join(d, "*.so"))
		for _, p := range plugins {
			if err := a.addHostPath(p); err != nil {
				return err
			}
			elfs = append(elfs, p)
		}
	}
	libs, err := sharedLibs(ctx, elfs)
	if err != nil {
		return err
	}
	for _, l := range libs {
		if err := a.addHostPath(l); err != nil {
			return err
		}
	}
	for _, f := range hostFiles {
		if _, err := os.Stat(f); err == nil {
			if err := a.addHostPath(f); err != nil {
				return err
			}
		}
	}
	return nil
}

// sharedLibs runs ldd on all files at once and returns the absolute library
// paths it lists, including the dynamic loader.
func sharedLibs(ctx context.Context, files []string) ([]string, error) {
	cmd := exec.CommandContext(ctx, "ldd", files...)
	// ldd exits non-zero if any argument is static; the output is still valid.
	out, err := cmd.Output()
	if err != nil && len(out) == 0 {
		return nil, fmt.Errorf("ldd: %w", err)
	}
	seen := map[string]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasSuffix(line, ":") { // "file:" header with several arguments
			continue
		}
		field := line
		if _, after, ok := strings.Cut(line, "=>"); ok {
			field = strings.TrimSpace(after)
			if strings.HasPrefix(field, "not found") {
				return nil, fmt.Errorf("ldd: missing library: %s", line)
			}
		}
		if f := strings.Fields(field); len(f) > 0 && strings.HasPrefix(f[0], "/") {
			seen[f[0]] = true
		}
	}
	libs := make([]string, 0, len(seen))
	for l := range seen {
		libs = append(libs, l)
	}
	sort.Strings(libs)
	return libs, nil
}
