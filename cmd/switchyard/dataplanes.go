package main

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/conntrack"
	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/ebpf"
	"github.com/switchyard/switchyard/iptables"
	"github.com/switchyard/switchyard/ipvs"
	"github.com/switchyard/switchyard/nftables"
	"github.com/switchyard/switchyard/sysctl"
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
	chain := dataplane.Chain{dp}
	// The socket load balancer right after the Service dataplane, which
	// still programs every Service: for traffic from other nodes, and for
	// any socket the BPF programs leave untranslated.
	if cfg.bpfSocketLB {
		if lb := newSocketLB(cfg, choice); lb != nil {
			chain = append(chain, lb)
		}
	}
	// hostPorts after the Service dataplane: a failure there must not keep
	// Services from being programmed. Their rules come first in the packet
	// path anyway (their own tables, priority -110).
	if cfg.hostPorts {
		hp, err := newHostPorts()
		if err != nil {
			return nil, err
		}
		chain = append(chain, hp)
	}
	return append(chain, conntrack.NewCleaner(ct, nil)), nil
}

// newSocketLB loads and attaches the BPF socket load balancer, reusing
// what an earlier agent pinned so translation does not stop across the
// restart. When the machine cannot run it (no cgroup v2, no BPF, a
// verifier that refuses the programs, no bpf file system) it logs one
// error line saying so and returns nil: the agent goes on without it and
// Services keep working through the packet dataplane.
func newSocketLB(cfg *config, packetDataplane string) *ebpf.SocketLB {
	lb, err := ebpf.New(ebpf.Config{
		CgroupPath:           cfg.bpfCgroupPath,
		PinPath:              cfg.bpfPinPath,
		NoConnectionCounting: !cfg.bpfCountConnections,
		NodeAddresses:        socketLBNodeAddresses(cfg.nodePortAddresses),
	})
	if err != nil {
		why := "it cannot be set up"
		if errors.Is(err, ebpf.ErrUnsupported) {
			why = "this kernel or machine cannot run it"
		}
		cgroup := cfg.bpfCgroupPath
		if cgroup == "" {
			cgroup = "(cgroup v2 root)"
		}
		klog.ErrorS(err, "BPF socket load balancing disabled: "+why+"; Services keep working through the "+packetDataplane+" dataplane",
			"cgroup", cgroup, "pinPath", cfg.bpfPinPath)
		return nil
	}
	klog.InfoS("BPF socket load balancing enabled", "cgroup", lb.CgroupPath(), "pinPath", cfg.bpfPinPath)
	return lb
}

// socketLBNodeAddresses returns the node addresses where the socket load
// balancer translates NodePorts: the local unicast addresses of the
// agent's network namespace inside --nodeport-addresses (all of them
// without it), as the packet dataplanes open NodePorts.
func socketLBNodeAddresses(within []netip.Prefix) func() ([]netip.Addr, error) {
	return func() ([]netip.Addr, error) {
		addrs, err := ebpf.InterfaceAddrs()
		if err != nil || len(within) == 0 {
			return addrs, err
		}
		var out []netip.Addr
		for _, ip := range addrs {
			if slices.ContainsFunc(within, func(n netip.Prefix) bool { return n.Contains(ip) }) {
				out = append(out, ip)
			}
		}
		return out, nil
	}
}

// closeSocketLB releases the socket load balancer's handles when the
// agent stops. Its links and maps stay pinned: the programs keep
// translating until the next agent takes them over (or --cleanup).
// Without a pin path nothing holds the links, and the programs detach.
func closeSocketLB(cfg *config, dp dataplane.Dataplane) {
	lb, ok := findPart[*ebpf.SocketLB](dp)
	if !ok {
		return
	}
	if err := lb.Close(); err != nil {
		klog.ErrorS(err, "Releasing the socket load balancer")
		return
	}
	if cfg.bpfPinPath == "" {
		klog.InfoS("Released the socket load balancer; nothing was pinned, so its programs are detached")
		return
	}
	klog.InfoS("Released the socket load balancer; its pinned programs keep translating", "pinPath", cfg.bpfPinPath)
}

// applyConntrackLimits sets the conntrack table size and timeouts the
// configuration asks for, as kube-proxy does at start-up. Failures (a
// read-only /sys in a container, nf_conntrack_max outside the initial
// network namespace) are logged: services work with the kernel's values.
func applyConntrackLimits(cfg *config) {
	l := conntrack.Limits{
		MaxPerCore:            cfg.conntrackMaxPerCore,
		Min:                   cfg.conntrackMin,
		TCPEstablishedTimeout: cfg.conntrackTCPEstablishedTimeout,
		TCPCloseWaitTimeout:   cfg.conntrackTCPCloseWaitTimeout,
		UDPTimeout:            cfg.conntrackUDPTimeout,
		UDPStreamTimeout:      cfg.conntrackUDPStreamTimeout,
	}
	if l == (conntrack.Limits{Min: l.Min}) {
		return
	}
	err := conntrack.ApplyLimits(klog.Background(), sysctl.NewRoot(procSys), sysctl.NewRoot(conntrack.ModuleParameters), runtime.NumCPU(), l)
	if err != nil {
		klog.ErrorS(err, "Could not apply every conntrack setting; the kernel's values stay for those")
	}
}

// newCleanupDataplane returns every dataplane that can be set up on this
// node, so --cleanup removes what any earlier run left, whichever dataplane
// it used. Parts that cannot be set up (no IPVS) own nothing to clean.
func newCleanupDataplane(cfg *config) (dataplane.Dataplane, error) {
	var parts dataplane.Chain
	if snat, err := newSNAT(cfg, iptables.FamilyINet); err == nil {
		parts = append(parts, snat)
	} else {
		klog.InfoS("Skipping iptables cleanup", "reason", err)
	}
	// IPv6 objects of an earlier run may be there even when IPv6 is
	// disabled now (ip6tables and inet6 ipsets work regardless of
	// disable_ipv6): only a kernel without IPv6 has none.
	if v6 := iptables.ProbeIPv6(procSys); !v6.InKernel {
		klog.InfoS("Skipping ip6tables cleanup", "reason", v6.Reason)
	} else if snat6, err := newSNAT(cfg, iptables.FamilyINet6); err == nil {
		parts = append(parts, snat6)
	} else {
		klog.InfoS("Skipping ip6tables cleanup", "reason", err)
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
	parts = append(parts, nft)
	// The socket load balancer's pinned programs and maps go whatever
	// --bpf-socket-lb says now: detached and unpinned.
	if cfg.bpfPinPath != "" {
		parts = append(parts, ebpf.NewForCleanup(ebpf.Config{PinPath: cfg.bpfPinPath}))
	}
	// hostPort tables of an earlier run go whatever --hostport says now.
	if hp, err := newHostPorts(); err == nil {
		parts = append(parts, hp)
	} else {
		klog.InfoS("Skipping hostPort cleanup", "reason", err)
	}
	return parts, nil
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

// procSys is where the node's sysctls are read.
const procSys = "/proc/sys"

// newIPVSDataplane builds the IPVS dataplane: ipsets and iptables
// masquerade marking first (the sets must exist before traffic can match
// them), per family as kube-proxy's IPVS mode (IPv4 always; IPv6 when the
// node has it and ip6tables works), then IPVS virtual servers, which serve
// both families, and the dummy link.
func newIPVSDataplane(cfg *config) (dataplane.Dataplane, error) {
	snat, err := newSNAT(cfg, iptables.FamilyINet)
	if err != nil {
		return nil, err
	}
	chain := dataplane.Chain{snat}
	if v6 := iptables.ProbeIPv6(procSys); !v6.Usable() {
		klog.InfoS("No IPv6 on this node, masquerading IPv4 service traffic only", "reason", v6.Reason)
	} else if snat6, err := newSNAT(cfg, iptables.FamilyINet6); err != nil {
		// As kube-proxy without ip6tables support: single-stack.
		klog.InfoS("Cannot program ip6tables, masquerading IPv4 service traffic only", "err", err)
	} else {
		chain = append(chain, snat6)
	}
	ipvsDP, err := newIPVS(cfg)
	if err != nil {
		return nil, err
	}
	return append(chain, ipvsDP), nil
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
		Timeouts:          ipvs.Timeouts{TCP: cfg.ipvsTCPTimeout, TCPFin: cfg.ipvsTCPFinTimeout, UDP: cfg.ipvsUDPTimeout},
	}, handle, ipvs.NewNetlinkLinks(nl, cfg.dummyLink), ipvs.ProcSysctl{})
}

// newSNAT builds the ipset and iptables (ip6tables for FamilyINet6) part of
// the IPVS dataplane for one family, with that family's cluster CIDRs.
func newSNAT(cfg *config, fam iptables.Family) (*iptables.Proxier, error) {
	what := "snat"
	if fam == iptables.FamilyINet6 {
		what = "snat ipv6"
	}
	sets, err := iptables.NewNetlinkIPSet()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	tables, err := iptables.NewTables(iptables.WithFamily(fam))
	if err != nil {
		sets.Close()
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	var cidrs []netip.Prefix
	for _, p := range cfg.clusterCIDRs {
		if p.Addr().Unmap().Is4() == (fam == iptables.FamilyINet) {
			cidrs = append(cidrs, p)
		}
	}
	// The rebalancer's conntrack mark (see newRebalancer): the reset rules
	// turn it into TCP resets before IPVS sees the packet.
	resetBit := iptables.DefaultResetMarkBit
	p, err := iptables.NewProxier(iptables.Config{
		Family:                fam,
		MasqueradeBit:         &cfg.masqueradeBit,
		ResetMarkBit:          &resetBit,
		MasqueradeAll:         cfg.masqueradeAll,
		ClusterCIDRs:          cidrs,
		ConntrackDropInvalid:  cfg.conntrackDropInvalid,
		ConntrackTCPBeLiberal: cfg.conntrackTCPBeLiberal,
	}, sets, tables, iptables.NewProcSysctl())
	if err != nil {
		sets.Close()
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return p, nil
}
