package ipvs

import (
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/sysctl"
)

// Sysctl reads and writes kernel parameters by their /proc/sys path, e.g.
// "net/ipv4/ip_forward". ProcSysctl and FakeSysctl wrap ErrNotFound for a
// missing key.
type Sysctl = sysctl.Interface

// ProcSysctl implements Sysctl on /proc/sys (see sysctl.Proc). Note that
// /proc/sys/net shows the network namespace of the process that opened it,
// whatever Links and Handle target.
type ProcSysctl struct {
	// Root is the sysctl directory, "/proc/sys" when empty.
	Root string
}

func (p ProcSysctl) Get(key string) (string, error) {
	v, err := sysctl.NewRoot(p.Root).Get(key)
	return v, mapSysctlErr(err)
}

func (p ProcSysctl) Set(key, value string) error {
	return mapSysctlErr(sysctl.NewRoot(p.Root).Set(key, value))
}

// mapSysctlErr makes a missing key (fs.ErrNotExist) also wrap ErrNotFound,
// like ipvs's other kernel clients.
func mapSysctlErr(err error) error {
	if err != nil && errors.Is(err, fs.ErrNotExist) && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("%w (%w)", err, ErrNotFound)
	}
	return err
}

const (
	sysctlForward                 = "net/ipv4/ip_forward"
	sysctlVSConntrack             = "net/ipv4/vs/conntrack"
	sysctlConnReuseMode           = "net/ipv4/vs/conn_reuse_mode"
	sysctlExpireNoDestConn        = "net/ipv4/vs/expire_nodest_conn"
	sysctlExpireQuiescentTemplate = "net/ipv4/vs/expire_quiescent_template"
	sysctlARPIgnore               = "net/ipv4/conf/all/arp_ignore"
	sysctlARPAnnounce             = "net/ipv4/conf/all/arp_announce"
	sysctlOSRelease               = "kernel/osrelease"
)

type sysctlSetting struct{ key, value, why string }

// wantedSysctls lists the kernel parameters IPVS mode needs, with why.
func wantedSysctls(s Sysctl, strictARP bool) []sysctlSetting {
	out := []sysctlSetting{
		{sysctlForward, "1", "service traffic from pods and other hosts is forwarded to backends"},
		{sysctlVSConntrack, "1", "IPVS connections must stay in conntrack so iptables/nftables SNAT (masquerade) applies to them"},
		{sysctlExpireNoDestConn, "1", "connections to a deleted real server are dropped at their next packet instead of hanging"},
		{sysctlExpireQuiescentTemplate, "1", "persistence (ClientIP affinity) templates to a weight-0 real server expire, so affinity does not pin clients to a draining backend"},
	}
	if v, ok := connReuseModeSetting(s); ok {
		out = append(out, v)
	}
	if strictARP {
		out = append(out,
			sysctlSetting{sysctlARPIgnore, "1", "strict ARP: answer ARP only for addresses of the receiving interface, never for service addresses on the dummy link"},
			sysctlSetting{sysctlARPAnnounce, "2", "strict ARP: never use a service address as ARP source"})
	}
	return out
}

// connReuseModeSetting follows kube-proxy. With conn_reuse_mode=1 (the
// default) IPVS reschedules a new connection whose source port matches an
// old one in TIME_WAIT; with conntrack=1 kernels before 5.9 did it by
// dropping the SYN so the stale conntrack entry could expire, and clients
// saw 1 s connect delays under load (kubernetes#81775). kube-proxy sets 0 on
// those kernels, accepting that a reused port may reach the old backend.
// Linux 5.9 (commit 35dfb013149f, as cited by kube-proxy,
// kubernetes#93297) fixed the delay, so there kube-proxy leaves the value
// alone and so does switchyard. Kernels before 4.1 do not have the key.
func connReuseModeSetting(s Sysctl) (sysctlSetting, bool) {
	release, err := s.Get(sysctlOSRelease)
	if err != nil {
		klog.InfoS("Cannot read kernel version; leaving sysctl as is", "sysctl", sysctlConnReuseMode, "err", err)
		return sysctlSetting{}, false
	}
	major, minor, ok := kernelVersion(release)
	switch {
	case !ok:
		klog.InfoS("Cannot parse kernel version; leaving sysctl as is", "sysctl", sysctlConnReuseMode, "release", release)
		return sysctlSetting{}, false
	case major < 4 || major == 4 && minor < 1:
		klog.ErrorS(nil, "Kernel too old to set sysctl (needs 4.1)", "sysctl", sysctlConnReuseMode, "release", release)
		return sysctlSetting{}, false
	case major > 5 || major == 5 && minor >= 9:
		klog.V(2).InfoS("Kernel has the IPVS connection reuse fix; leaving sysctl as is", "sysctl", sysctlConnReuseMode, "release", release)
		return sysctlSetting{}, false
	}
	return sysctlSetting{sysctlConnReuseMode, "0", "kernels before 5.9 delay reused connections by 1 s with conn_reuse_mode=1"}, true
}

// kernelVersion parses "6.1.0-56-amd64" into 6, 1.
func kernelVersion(release string) (major, minor int, ok bool) {
	parts := strings.SplitN(release, ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	major, err1 := strconv.Atoi(parts[0])
	minorStr := parts[1]
	if i := strings.IndexFunc(minorStr, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		minorStr = minorStr[:i]
	}
	minor, err2 := strconv.Atoi(minorStr)
	return major, minor, err1 == nil && err2 == nil
}

// ensureSysctls writes every wanted parameter that differs. Failures are
// logged, never returned: a node can run (degraded) without them, and
// refusing to program services would be worse.
func ensureSysctls(s Sysctl, strictARP bool) {
	for _, w := range wantedSysctls(s, strictARP) {
		cur, err := s.Get(w.key)
		if err == nil && cur == w.value {
			continue
		}
		if err := s.Set(w.key, w.value); err != nil {
			klog.ErrorS(err, "Could not set sysctl; IPVS may misbehave", "sysctl", w.key, "value", w.value, "why", w.why)
			continue
		}
		klog.V(2).InfoS("Set sysctl", "sysctl", w.key, "value", w.value, "previous", cur)
	}
}

// ensureTimeouts sets the configured IPVS timeouts that differ from the
// kernel's, in whole seconds (the kernel's unit). As with sysctls, a
// failure is logged, not returned: services work with the kernel's
// timeouts.
func ensureTimeouts(h Handle, want Timeouts) {
	if want == (Timeouts{}) {
		return
	}
	for _, d := range []*time.Duration{&want.TCP, &want.TCPFin, &want.UDP} {
		if *d > 0 {
			*d = max(d.Truncate(time.Second), time.Second)
		}
	}
	cur, err := h.Timeouts()
	if err != nil {
		klog.ErrorS(err, "Could not read IPVS timeouts; leaving them as they are", "want", want)
		return
	}
	differs := func(w, c time.Duration) bool { return w != 0 && w != c }
	if !differs(want.TCP, cur.TCP) && !differs(want.TCPFin, cur.TCPFin) && !differs(want.UDP, cur.UDP) {
		return
	}
	if err := h.SetTimeouts(want); err != nil {
		klog.ErrorS(err, "Could not set IPVS timeouts", "want", want, "current", cur)
		return
	}
	klog.InfoS("Set IPVS timeouts", "tcp", want.TCP, "tcpFin", want.TCPFin, "udp", want.UDP, "previous", cur)
}
