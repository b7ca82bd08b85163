package iptables

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestProbeIPv6(t *testing.T) {
	mk := func(t *testing.T, disable string) string {
		root := t.TempDir()
		if disable == "-" {
			return root // no net/ipv6 at all
		}
		dir := filepath.Join(root, "net/ipv6/conf/all")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if disable != "" {
			if err := os.WriteFile(filepath.Join(dir, "disable_ipv6"), []byte(disable), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return root
	}
	for _, tc := range []struct {
		name, disable    string
		inKernel, usable bool
		reasonContains   string
	}{
		{"enabled", "0\n", true, true, ""},
		{"disabled", "1\n", true, false, "disable_ipv6=1"},
		{"no IPv6 in the kernel", "-", false, false, "does not exist"},
		{"unreadable sysctl", "", true, false, "cannot read"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := ProbeIPv6(mk(t, tc.disable))
			if s.InKernel != tc.inKernel || s.Usable() != tc.usable || !strings.Contains(s.Reason, tc.reasonContains) || (tc.usable != (s.Reason == "")) {
				t.Errorf("ProbeIPv6 = %+v, want inKernel %v usable %v reason containing %q", s, tc.inKernel, tc.usable, tc.reasonContains)
			}
		})
	}
}
