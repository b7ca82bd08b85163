package main

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// ipvsProbe tells whether the kernel has IPVS. Tests replace it.
type ipvsProbe interface {
	// Present reports whether IPVS is loaded (its /proc entry exists).
	Present() bool
	// Load tries to load the module and returns what went wrong.
	Load() error
}

type kernelIPVSProbe struct{}

func (kernelIPVSProbe) Present() bool {
	_, err := os.Stat("/proc/net/ip_vs")
	return err == nil
}

func (kernelIPVSProbe) Load() error {
	path, err := exec.LookPath("modprobe")
	if err != nil {
		return fmt.Errorf("no modprobe to load ip_vs: %w", err)
	}
	if out, err := exec.Command(path, "ip_vs").CombinedOutput(); err != nil {
		// modprobe's message is multi-line; keep the log line one line.
		msg := strings.Join(strings.Fields(string(out)), " ")
		return fmt.Errorf("modprobe ip_vs: %v: %s", err, msg)
	}
	return nil
}

// chooseDataplane resolves --dataplane. auto picks IPVS when the kernel has
// it (already loaded or loadable) and nftables otherwise; the reason is
// returned for the start-up log line.
func chooseDataplane(requested string, probe ipvsProbe) (string, string) {
	if requested != "auto" {
		return requested, "requested with --dataplane"
	}
	if probe.Present() {
		return "ipvs", "the kernel has IPVS loaded"
	}
	err := probe.Load()
	if err == nil && probe.Present() {
		return "ipvs", "loaded the ip_vs module"
	}
	if err == nil {
		err = fmt.Errorf("module loaded but /proc/net/ip_vs is missing")
	}
	return "nftables", fmt.Sprintf("no IPVS in this kernel (%v)", err)
}
