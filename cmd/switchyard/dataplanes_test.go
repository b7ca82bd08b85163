package main

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/klog/v2"
)

// A socket load balancer that cannot be set up is one error line saying
// it is disabled and why, and no part in the chain: the agent goes on.
func TestNewSocketLBUnavailable(t *testing.T) {
	var buf bytes.Buffer
	klog.LogToStderr(false)
	klog.SetOutput(&buf)
	defer func() {
		klog.SetOutput(os.Stderr)
		klog.LogToStderr(true)
	}()
	// A pin path on no bpf file system, outside /sys/fs/bpf: refused
	// before anything is loaded or attached.
	cfg := &config{bpfSocketLB: true, bpfCgroupPath: "/nonexistent", bpfPinPath: filepath.Join(t.TempDir(), "switchyard")}
	if lb := newSocketLB(cfg, "nftables"); lb != nil {
		lb.Close()
		t.Fatal("socket load balancer set up on a pin path outside any bpf file system")
	}
	klog.Flush()
	out := buf.String()
	// klog writes an error once per severity it covers: count distinct
	// lines.
	lines := map[string]bool{}
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "BPF socket load balancing disabled") {
			lines[l] = true
		}
	}
	if len(lines) != 1 || !strings.Contains(out, "Services keep working through the nftables dataplane") ||
		!strings.Contains(out, "not on a bpf file system") || !strings.HasPrefix(out, "E") {
		t.Errorf("want one error line saying socket load balancing is disabled and why, got:\n%s", out)
	}
}

// NodePorts translate on the agent namespace's addresses inside
// --nodeport-addresses, never on loopback.
func TestSocketLBNodeAddresses(t *testing.T) {
	all, err := socketLBNodeAddresses(nil)()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range all {
		if a.IsLoopback() {
			t.Errorf("loopback address %s among the NodePort addresses", a)
		}
	}
	none, err := socketLBNodeAddresses([]netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")})()
	if err != nil || len(none) != 0 {
		t.Errorf("inside 127.0.0.0/8: %v %v, want none (loopback is excluded)", none, err)
	}
	if len(all) > 0 {
		want := all[0]
		got, err := socketLBNodeAddresses([]netip.Prefix{netip.PrefixFrom(want, want.BitLen())})()
		if err != nil || len(got) != 1 || got[0] != want {
			t.Errorf("inside %s/%d: %v %v, want only it", want, want.BitLen(), got, err)
		}
	}
}
