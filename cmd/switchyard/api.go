package main

import (
	"runtime/debug"

	"github.com/vishvananda/netns"
	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/agentapi"
	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/ebpf"
)

// serveAPI serves yardctl's API (package agentapi) on the unix socket
// (--api-socket; "" disables it) for the sync loop syncer and the kernel
// dataplane dp (what newDataplane returned: the API finds the IPVS or
// nftables proxier inside its chain). The returned function stops serving
// and removes the socket; defer it. An error means nothing is served: the
// agent should log it and go on, since Services work without the API.
//
// rounds reports the rebalancer's rounds (nil: it does not run).
func serveAPI(socket, nodeName string, syncer *dataplane.Syncer, dp dataplane.Dataplane, rounds agentapi.RebalanceStatuses) (stop func(), err error) {
	if socket == "" {
		return func() {}, nil
	}
	cfg := agentapi.Config{
		Socket:    socket,
		Version:   agentVersion(),
		NodeName:  nodeName,
		SyncChain: dp.Name(),
		Syncer:    syncer,
		Inspector: agentapi.FindInspector(dp),
		Rebalance: rounds,
	}
	if lb, ok := findPart[*ebpf.SocketLB](dp); ok {
		cfg.SocketLB = lb
	}
	flows, ferr := agentapi.NewNetlinkFlows(netns.None())
	if ferr != nil {
		klog.ErrorS(ferr, "The agent API will not show conntrack entries")
	} else {
		cfg.Conntrack = flows
	}
	s, err := agentapi.NewServer(cfg)
	if err != nil {
		if flows != nil {
			flows.Close()
		}
		return nil, err
	}
	inspected := "none"
	if cfg.Inspector != nil {
		inspected = cfg.Inspector.Kind()
	}
	klog.InfoS("Serving the agent API for yardctl", "socket", socket, "inspectedDataplane", inspected, "socketLB", cfg.SocketLB != nil)
	return func() {
		if err := s.Close(); err != nil {
			klog.ErrorS(err, "Closing the agent API")
		}
		if flows != nil {
			flows.Close()
		}
	}, nil
}

// agentVersion is the module version, or the VCS revision of a development
// build, or "(devel)".
func agentVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "(devel)"
	}
	v := bi.Main.Version
	if v != "" && v != "(devel)" {
		return v
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && s.Value != "" {
			return "(devel) " + s.Value
		}
	}
	return "(devel)"
}
