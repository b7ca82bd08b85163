package conntrack

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/sysctl"
)

// Limits are kube-proxy's conntrack settings (KubeProxyConfiguration's
// conntrack section, the --conntrack-* flags). A zero field leaves the
// kernel's value alone.
type Limits struct {
	// MaxPerCore and Min size the table: nf_conntrack_max becomes
	// MaxPerCore × CPUs, at least Min. MaxPerCore 0 leaves it (and Min
	// is then unused), as in kube-proxy.
	MaxPerCore int
	Min        int

	TCPEstablishedTimeout time.Duration
	TCPCloseWaitTimeout   time.Duration
	UDPTimeout            time.Duration
	UDPStreamTimeout      time.Duration
}

// Max is the nf_conntrack_max the limits ask for on a node with numCPU
// CPUs; 0 when they leave it alone.
func (l Limits) Max(numCPU int) int {
	if l.MaxPerCore <= 0 {
		return 0
	}
	return max(l.MaxPerCore*numCPU, l.Min)
}

// The kernel parameters written, relative to /proc/sys. The timeouts are
// per network namespace; nf_conntrack_max can only be raised from the
// initial one (elsewhere it is read-only).
const (
	sysctlMax                   = "net/netfilter/nf_conntrack_max"
	sysctlTCPEstablishedTimeout = "net/netfilter/nf_conntrack_tcp_timeout_established"
	sysctlTCPCloseWaitTimeout   = "net/netfilter/nf_conntrack_tcp_timeout_close_wait"
	sysctlUDPTimeout            = "net/netfilter/nf_conntrack_udp_timeout"
	sysctlUDPStreamTimeout      = "net/netfilter/nf_conntrack_udp_timeout_stream"
)

// ModuleParameters is where the nf_conntrack module shows its parameters;
// hashsize there is the number of hash buckets.
const ModuleParameters = "/sys/module/nf_conntrack/parameters"

// ApplyLimits writes the parameters l sets into procSys (a /proc/sys) and,
// when nf_conntrack_max grows past four entries per bucket, the bucket
// count into module (ModuleParameters), as kube-proxy does. Only values
// that differ from the kernel's are written, so a restart writes nothing.
// Every parameter is tried; the error joins the failures (a read-only
// /sys in a container, nf_conntrack_max outside the initial network
// namespace), each naming its parameter. numCPU is the node's CPU count.
func ApplyLimits(logger klog.Logger, procSys, module sysctl.Interface, numCPU int, l Limits) error {
	var errs []error
	if m := l.Max(numCPU); m > 0 {
		if err := setInt(logger, procSys, sysctlMax, m); err != nil {
			errs = append(errs, err)
		} else if err := ensureHashSize(logger, module, m/4); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range []struct {
		name string
		d    time.Duration
	}{
		{sysctlTCPEstablishedTimeout, l.TCPEstablishedTimeout},
		{sysctlTCPCloseWaitTimeout, l.TCPCloseWaitTimeout},
		{sysctlUDPTimeout, l.UDPTimeout},
		{sysctlUDPStreamTimeout, l.UDPStreamTimeout},
	} {
		if p.d <= 0 {
			continue
		}
		// The kernel counts in whole seconds; a positive duration under
		// one second still sets 1 rather than nothing.
		secs := max(int(p.d/time.Second), 1)
		if err := setInt(logger, procSys, p.name, secs); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// setInt writes value to name unless it already has it.
func setInt(logger klog.Logger, s sysctl.Interface, name string, value int) error {
	want := strconv.Itoa(value)
	if cur, err := s.Get(name); err == nil && cur == want {
		return nil
	}
	if err := s.Set(name, want); err != nil {
		return fmt.Errorf("set %s=%s: %w", name, want, err)
	}
	logger.Info("Set conntrack parameter", "sysctl", name, "value", want)
	return nil
}

// ensureHashSize raises the module's hashsize to at least buckets; it
// never shrinks it.
func ensureHashSize(logger klog.Logger, module sysctl.Interface, buckets int) error {
	cur, err := module.Get("hashsize")
	if err != nil {
		return fmt.Errorf("read nf_conntrack hashsize: %w", err)
	}
	n, err := strconv.Atoi(cur)
	if err != nil {
		return fmt.Errorf("read nf_conntrack hashsize: %q: %w", cur, err)
	}
	if n >= buckets {
		return nil
	}
	if err := module.Set("hashsize", strconv.Itoa(buckets)); err != nil {
		return fmt.Errorf("set nf_conntrack hashsize=%d (was %d): %w", buckets, n, err)
	}
	logger.Info("Set conntrack parameter", "parameter", "hashsize", "value", buckets, "was", n)
	return nil
}
