package main

import (
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/iptables"
	"github.com/switchyard/switchyard/ipvs"
)

// newDataplane builds the IPVS dataplane: ipsets and iptables masquerade
// marking first (the sets must exist before traffic can match them), then
// IPVS virtual servers and the dummy link.
func newDataplane(cfg *config) (dataplane.Dataplane, error) {
	snat, err := newSNAT(cfg)
	if err != nil {
		return nil, err
	}
	ipvsDP, err := newIPVS(cfg)
	if err != nil {
		return nil, err
	}
	return dataplane.Chain{snat, ipvsDP}, nil
}

func newIPVS(cfg *config) (*ipvs.Proxier, error) {
	handle, err := ipvs.NewHandle("")
	if err != nil {
		return nil, fmt.Errorf("ipvs dataplane: %w (is the ip_vs kernel module available?)", err)
	}
	// NETLINK_ROUTE only: a default handle also opens XFRM, which fails on
	// kernels without xfrm_user.
	nl, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("ipvs dataplane: netlink: %w", err)
	}
	return ipvs.NewProxier(ipvs.Config{
		Scheduler:         cfg.ipvsScheduler,
		NodePortAddresses: cfg.nodePortAddresses,
		StrictARP:         cfg.ipvsStrictARP,
		StateDir:          cfg.stateDir,
		DrainTimeout:      cfg.ipvsDrainTimeout,
	}, handle, ipvs.NewNetlinkLinks(nl, cfg.dummyLink), ipvs.ProcSysctl{})
}

func newSNAT(cfg *config) (*iptables.Proxier, error) {
	sets, err := iptables.NewNetlinkIPSet()
	if err != nil {
		return nil, fmt.Errorf("snat: %w", err)
	}
	tables, err := iptables.NewTables()
	if err != nil {
		return nil, fmt.Errorf("snat: %w", err)
	}
	return iptables.NewProxier(iptables.Config{
		MasqueradeBit:         &cfg.masqueradeBit,
		MasqueradeAll:         cfg.masqueradeAll,
		ClusterCIDRs:          cfg.clusterCIDRs,
		ConntrackDropInvalid:  cfg.conntrackDropInvalid,
		ConntrackTCPBeLiberal: cfg.conntrackTCPBeLiberal,
	}, sets, tables, iptables.NewProcSysctl())
}
