package cli

import (
	"errors"
	"fmt"
	"os"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/switchyard/switchyard/agentapi"
	"github.com/switchyard/switchyard/ipvs"
	"github.com/switchyard/switchyard/nftables"
)

// Kernel is what yardctl reads itself when the agent is down.
type Kernel interface {
	// IPVS reads the IPVS table; stateDir and dummyLink are the agent's
	// --state-dir and --ipvs-dummy-link (ownership).
	IPVS(stateDir, dummyLink string) (*agentapi.IPVSTable, error)
	// NFTables reads switchyard's nftables tables.
	NFTables() (*agentapi.NFTables, error)
	// Flows lists the conntrack table.
	Flows() ([]agentapi.Flow, error)
}

// NetnsKernel reads the kernel in one network namespace.
type NetnsKernel struct {
	// NS is the namespace; 0 (the zero value) or a closed handle
	// (netns.None()) means this process's.
	NS netns.NsHandle
	// ProcNetIPVS is checked before opening IPVS: moby/ipvs would load the
	// ip_vs module otherwise. "" for /proc/net/ip_vs (this process's
	// namespace; the file is per namespace).
	ProcNetIPVS string
}

// inNS reports whether NS names another namespace (fd 0 is never one).
func (k NetnsKernel) inNS() bool { return k.NS > 0 }

// IPVS implements Kernel.
func (k NetnsKernel) IPVS(stateDir, dummyLink string) (*agentapi.IPVSTable, error) {
	proc := k.ProcNetIPVS
	if proc == "" {
		proc = "/proc/net/ip_vs"
	}
	if _, err := os.Stat(proc); errors.Is(err, os.ErrNotExist) {
		return nil, errors.New("this kernel has no IPVS loaded (no " + proc + ")")
	}
	path := ""
	if k.inNS() {
		path = fmt.Sprintf("/proc/self/fd/%d", int(k.NS))
	}
	h, err := ipvs.NewHandle(path)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	var nl *netlink.Handle
	if k.inNS() {
		nl, err = netlink.NewHandleAt(k.NS, unix.NETLINK_ROUTE)
	} else {
		nl, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	}
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	defer nl.Close()
	return agentapi.KernelIPVS(h, ipvs.NewNetlinkLinks(nl, dummyLink), stateDir)
}

// NFTables implements Kernel.
func (k NetnsKernel) NFTables() (*agentapi.NFTables, error) {
	fd := 0
	if k.inNS() {
		fd = int(k.NS)
	}
	conn, err := nftables.NewConn(fd)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return agentapi.KernelNFTables(conn)
}

// Flows implements Kernel.
func (k NetnsKernel) Flows() ([]agentapi.Flow, error) {
	ns := netns.None()
	if k.inNS() {
		ns = k.NS
	}
	nf, err := agentapi.NewNetlinkFlows(ns)
	if err != nil {
		return nil, err
	}
	defer nf.Close()
	return nf.ListFlows()
}
