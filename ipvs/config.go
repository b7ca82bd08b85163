package ipvs

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/switchyard/switchyard/dataplane"
)

const (
	// DefaultScheduler is IPVS round robin, kube-proxy's default.
	DefaultScheduler = "rr"
	// DefaultStateDir holds ipvs-state.json. It is on tmpfs on purpose: the
	// state describes kernel objects, which a reboot also forgets.
	DefaultStateDir = "/var/run/switchyard"
	// DefaultDrainTimeout bounds how long a removed TCP real server keeps
	// its open connections. kube-proxy waits for ever; 15 minutes is the
	// kernel's default IPVS timeout for an idle established TCP connection
	// (ipvsadm --set tcp 900), so by then only connections that are still
	// moving data are cut (expire_nodest_conn=1 drops them at their next
	// packet).
	DefaultDrainTimeout = 15 * time.Minute
	// DefaultDrainCheckInterval is how often pending drains are re-checked.
	// kube-proxy checks every minute; connection counts are exact and
	// cheap to read, so switchyard looks sooner.
	DefaultDrainCheckInterval = 5 * time.Second
)

// Config is the IPVS dataplane configuration.
type Config struct {
	// Scheduler is used for Services without a scheduler annotation;
	// DefaultScheduler when empty.
	Scheduler string
	// NodePortAddresses restricts NodePort virtual servers to node
	// addresses in these prefixes (--nodeport-addresses); empty means every
	// node address except loopback.
	NodePortAddresses []netip.Prefix
	// StrictARP sets arp_ignore=1 and arp_announce=2 (needed by L2 load
	// balancers such as MetalLB in IPVS mode).
	StrictARP bool
	// StateDir holds ipvs-state.json; DefaultStateDir when empty.
	StateDir string
	// DrainTimeout: DefaultDrainTimeout when zero.
	DrainTimeout time.Duration
	// DrainCheckInterval: DefaultDrainCheckInterval when zero.
	DrainCheckInterval time.Duration
	// Timeouts are set in the kernel where non-zero (kube-proxy's
	// ipvs.tcpTimeout, tcpFinTimeout, udpTimeout); zero fields keep the
	// kernel's.
	Timeouts Timeouts
}

// withDefaults fills zero fields and validates the result.
func (c Config) withDefaults() (Config, error) {
	if c.Scheduler == "" {
		c.Scheduler = DefaultScheduler
	}
	if !dataplane.ValidScheduler(c.Scheduler) {
		return c, fmt.Errorf("scheduler %q is not one of %v", c.Scheduler, dataplane.IPVSSchedulers)
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.DrainCheckInterval == 0 {
		c.DrainCheckInterval = DefaultDrainCheckInterval
	}
	if c.DrainTimeout < 0 || c.DrainCheckInterval < 0 {
		return c, fmt.Errorf("negative drain durations")
	}
	if t := c.Timeouts; t.TCP < 0 || t.TCPFin < 0 || t.UDP < 0 {
		return c, fmt.Errorf("negative IPVS timeouts %+v", t)
	}
	for i, p := range c.NodePortAddresses {
		if !p.IsValid() {
			return c, fmt.Errorf("invalid nodeport address prefix #%d", i)
		}
		c.NodePortAddresses[i] = p.Masked()
	}
	return c, nil
}
