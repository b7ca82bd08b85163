package iptables

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// IPv6Status is what ProbeIPv6 found out about the node's IPv6.
type IPv6Status struct {
	// InKernel: /proc/sys/net/ipv6 exists, so the kernel has IPv6 (not
	// built without it, not booted with ipv6.disable=1). ip6tables and
	// inet6 ipsets work then, whatever disable_ipv6 says.
	InKernel bool
	// Disabled: net.ipv6.conf.all.disable_ipv6 is not 0 (or unreadable):
	// no interface has an IPv6 address, so there is no IPv6 traffic to
	// masquerade.
	Disabled bool
	// Reason says why IPv6 is not usable ("" when it is).
	Reason string
}

// Usable reports whether the node has IPv6 traffic worth an IPv6 Proxier.
func (s IPv6Status) Usable() bool { return s.InKernel && !s.Disabled }

// ProbeIPv6 looks at procSys (normally "/proc/sys") to decide whether the
// node runs IPv6, the way a dual-stack agent decides whether to add the
// IPv6 Proxier: kube-proxy likewise drops to single-stack when a family is
// unusable on the node.
func ProbeIPv6(procSys string) IPv6Status {
	if _, err := os.Stat(filepath.Join(procSys, "net/ipv6")); err != nil {
		reason := "cannot read " + filepath.Join(procSys, "net/ipv6") + ": " + err.Error()
		if errors.Is(err, fs.ErrNotExist) {
			reason = "no IPv6 in this kernel (" + filepath.Join(procSys, "net/ipv6") + " does not exist: built without IPv6 or booted with ipv6.disable=1)"
		}
		return IPv6Status{Reason: reason, Disabled: true}
	}
	path := filepath.Join(procSys, "net/ipv6/conf/all/disable_ipv6")
	b, err := os.ReadFile(path)
	if err != nil {
		return IPv6Status{InKernel: true, Disabled: true, Reason: "cannot read " + path + ": " + err.Error()}
	}
	if v := strings.TrimSpace(string(b)); v != "0" {
		return IPv6Status{InKernel: true, Disabled: true, Reason: "IPv6 disabled (net.ipv6.conf.all.disable_ipv6=" + v + ")"}
	}
	return IPv6Status{InKernel: true}
}
