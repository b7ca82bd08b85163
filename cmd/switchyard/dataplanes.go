package main

import (
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/conntrack"
	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/iptables"
	"github.com/switchyard/switchyard/ipvs"
	"github.com/switchyard/switchyard/nftables"
)

// newDataplane builds the dataplane --dataplane asks for (auto: IPVS when
// the kernel has it, nftables otherwise) and logs the choice and why.
func newDataplane(cfg *config) (dataplane.Dataplane, error) {
	choice, reason := chooseDataplane(cfg.dataplane, kernelIPVSProbe{})
	klog.InfoS("Dataplane chosen", "dataplane", choice, "reason", reason)
	var dp dataplane.Dataplane
	var err error
	switch choice {
	case "ipvs":
		dp, err = newIPVSDataplane(cfg)
	default:
		dp, err = newNFTables(cfg)
	}
	if err != nil {
		return nil, err
	}
	// Stale UDP/SCTP conntrack entries are cleared after each successful
	// sync, once the new rules are in place.
	ct, err := conntrack.NewNetlink(netns.None())
	if err != nil {
		return nil, fmt.Errorf("conntrack: %w", err)
	}
	return dataplane.Chain{dp, conntrack.NewCleaner(ct, nil)}, nil
}

// newCleanupDataplane returns every dataplane that can be set up on this
// node, so --cleanup removes what any earlier run left, whichever dataplane
// it used. Parts that cannot be set up (no IPVS) own nothing to clean.
func newCleanupDataplane(cfg *config) (dataplane.Dataplane, error) {
	var parts dataplane.Chain
	if snat, err := newSNAT(cfg); err == nil {
		parts = append(parts, snat)
	} else {
		klog.InfoS("Skipping iptables cleanup", "reason", err)
	}
	// Only with IPVS in the kernel: opening a handle would otherwise load
	// ip_vs (moby/ipvs runs modprobe) and log errors, and without IPVS there
	// is no virtual server, dummy link or drain state of ours to remove.
	if !(kernelIPVSProbe{}).Present() {
		klog.InfoS("Skipping IPVS cleanup", "reason", "no IPVS in this kernel")
	} else if ipvsDP, err := newIPVS(cfg); err == nil {
		parts = append(parts, ipvsDP)
	} else {
		klog.InfoS("Skipping IPVS cleanup", "reason", err)
	}
	nft, err := newNFTables(cfg)
	if err != nil {
		return nil, err
	}
	return append(parts, nft), nil
}

func newNFTables(cfg *config) (*nftables.Proxier, error) {
	p, err := nftables.New(nftables.Config{
		MasqueradeBit:         &cfg.masqueradeBit,
		MasqueradeAll:         cfg.masqueradeAll,
		ClusterCIDRs:          cfg.clusterCIDRs,
		NodePortAddresses:     cfg.nodePortAddresses,
		ConntrackDropInvalid:  cfg.conntrackDropInvalid,
		ConntrackTCPBeLiberal: cfg.conntrackTCPBeLiberal,
	})
	if err != nil {
		return nil, fmt.Errorf("nftables dataplane: %w", err)
	}
	return p, nil
}

// newIPVSDataplane builds the IPVS dataplane: ipsets and iptables
// masquerade marking first (the sets must exist before traffic can match
// them), then IPVS virtual servers and the dummy link.
func newIPVSDataplane(cfg *config) (dataplane.Dataplane, error) {
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
