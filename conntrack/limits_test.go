package conntrack

import (
	"errors"
	"io/fs"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/sysctl"
	"github.com/switchyard/switchyard/test/netnstest"
)

func TestLimitsMax(t *testing.T) {
	tests := []struct {
		l    Limits
		cpus int
		want int
	}{
		{Limits{}, 4, 0},
		{Limits{Min: 131072}, 4, 0}, // no per-core value: leave it
		{Limits{MaxPerCore: 32768, Min: 131072}, 2, 131072},
		{Limits{MaxPerCore: 32768, Min: 131072}, 8, 262144},
		{Limits{MaxPerCore: 32768}, 2, 65536},
	}
	for _, tc := range tests {
		if got := tc.l.Max(tc.cpus); got != tc.want {
			t.Errorf("%+v on %d CPUs: Max = %d, want %d", tc.l, tc.cpus, got, tc.want)
		}
	}
}

func kernelDefaults() map[string]string {
	return map[string]string{
		sysctlMax:                   "65536",
		sysctlTCPEstablishedTimeout: "432000",
		sysctlTCPCloseWaitTimeout:   "60",
		sysctlUDPTimeout:            "30",
		sysctlUDPStreamTimeout:      "120",
	}
}

func TestApplyLimits(t *testing.T) {
	kp := Limits{MaxPerCore: 32768, Min: 131072, TCPEstablishedTimeout: 24 * time.Hour,
		TCPCloseWaitTimeout: time.Hour, UDPTimeout: 30 * time.Second, UDPStreamTimeout: 500 * time.Millisecond}
	tests := []struct {
		name     string
		l        Limits
		hashsize string
		readOnly []string // in procSys; "hashsize" for the module
		want     []string // writes attempted, both interfaces, in order
		wantErr  []string // substrings of the error, one per failure
	}{{
		name:     "nothing set: nothing written",
		hashsize: "16384",
	}, {
		name:     "kube-proxy defaults on 8 CPUs: max, buckets, timeouts that differ",
		l:        kp,
		hashsize: "16384",
		want: []string{
			sysctlMax + "=262144", "hashsize=65536",
			sysctlTCPEstablishedTimeout + "=86400", sysctlTCPCloseWaitTimeout + "=3600",
			// udp 30 s is the kernel's already; 0.5 s rounds up to 1 s.
			sysctlUDPStreamTimeout + "=1",
		},
	}, {
		name:     "hash table already big enough is not shrunk",
		l:        Limits{MaxPerCore: 32768},
		hashsize: "1048576",
		want:     []string{sysctlMax + "=262144"},
	}, {
		name:     "read-only nf_conntrack_max (not the initial namespace): others still set",
		l:        kp,
		hashsize: "16384",
		readOnly: []string{sysctlMax},
		want: []string{
			sysctlMax + "=262144",
			sysctlTCPEstablishedTimeout + "=86400", sysctlTCPCloseWaitTimeout + "=3600", sysctlUDPStreamTimeout + "=1",
		},
		wantErr: []string{"set net/netfilter/nf_conntrack_max=262144"},
	}, {
		name:     "read-only /sys: the error names hashsize",
		l:        Limits{MaxPerCore: 32768},
		hashsize: "16384",
		readOnly: []string{"hashsize"},
		want:     []string{sysctlMax + "=262144", "hashsize=65536"},
		wantErr:  []string{"set nf_conntrack hashsize=65536 (was 16384)"},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			proc := sysctl.NewFake(kernelDefaults())
			module := sysctl.NewFake(map[string]string{"hashsize": tc.hashsize})
			for _, n := range tc.readOnly {
				if n == "hashsize" {
					module.SetReadOnly(n)
				} else {
					proc.SetReadOnly(n)
				}
			}
			err := ApplyLimits(klog.Background(), proc, module, 8, tc.l)
			got := append(proc.Sets(), module.Sets()...)
			// Interleave as ApplyLimits does: max, hashsize, then timeouts.
			slices.SortStableFunc(got, func(a, b string) int { return writeOrder(a) - writeOrder(b) })
			if !slices.Equal(got, tc.want) {
				t.Errorf("writes %q, want %q", got, tc.want)
			}
			if len(tc.wantErr) == 0 && err != nil {
				t.Errorf("error %v", err)
			}
			for _, w := range tc.wantErr {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("error %v, want it to contain %q", err, w)
				}
			}
			// A second run with the same limits writes nothing that
			// succeeded before.
			if err == nil {
				before := len(proc.Sets()) + len(module.Sets())
				if err := ApplyLimits(klog.Background(), proc, module, 8, tc.l); err != nil {
					t.Fatal(err)
				}
				if after := len(proc.Sets()) + len(module.Sets()); after != before {
					t.Errorf("second run wrote %d more values", after-before)
				}
			}
		})
	}
}

func writeOrder(w string) int {
	switch {
	case strings.HasPrefix(w, sysctlMax+"="):
		return 0
	case strings.HasPrefix(w, "hashsize="):
		return 1
	}
	return 2
}

// TestApplyLimitsKernel sets the timeouts for real in a fresh network
// namespace (they are per namespace) and reads them back. Outside the
// initial namespace the kernel keeps nf_conntrack_max read-only, and
// hashsize is refused: both must come back as errors naming the
// parameter, with the timeouts set regardless.
func TestApplyLimitsKernel(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace")
	}
	ns := netnstest.New(t, "ct-limits")
	proc := sysctl.NewAt(ns.NsHandle())
	if _, err := proc.Get(sysctlUDPTimeout); errors.Is(err, fs.ErrNotExist) {
		// The parameters appear once conntrack is loaded; any netns test
		// of this package loads it, but not necessarily first.
		t.Skipf("nf_conntrack not loaded: %v", err)
	}
	l := Limits{TCPEstablishedTimeout: 2 * time.Hour, TCPCloseWaitTimeout: 90 * time.Second,
		UDPTimeout: 45 * time.Second, UDPStreamTimeout: 150 * time.Second}
	if err := ApplyLimits(klog.Background(), proc, sysctl.NewRoot(ModuleParameters), 2, l); err != nil {
		t.Fatalf("timeouts in a namespace: %v", err)
	}
	for name, want := range map[string]string{
		sysctlTCPEstablishedTimeout: "7200", sysctlTCPCloseWaitTimeout: "90",
		sysctlUDPTimeout: "45", sysctlUDPStreamTimeout: "150",
	} {
		if got, err := proc.Get(name); err != nil || got != want {
			t.Errorf("%s = %q (%v), want %q", name, got, err, want)
		}
	}

	// Raising the table size from a namespace: refused, and said so. The
	// value asked for is far above any default so a write would show.
	before, err := proc.Get(sysctlMax)
	if err != nil {
		t.Fatal(err)
	}
	err = ApplyLimits(klog.Background(), proc, sysctl.NewRoot(ModuleParameters), 2, Limits{MaxPerCore: 1 << 24})
	if err == nil || !strings.Contains(err.Error(), sysctlMax) {
		t.Errorf("nf_conntrack_max from a namespace: error %v, want one naming %s", err, sysctlMax)
	}
	if after, _ := proc.Get(sysctlMax); after != before {
		t.Errorf("nf_conntrack_max changed from %s to %s", before, after)
	}
}
