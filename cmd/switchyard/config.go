package main

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/ebpf"
)

// config is everything the flags say. Each dataplane gets its own Config
// built from it in dataplanes.go.
type config struct {
	hostnameOverride string
	kubeconfig       string
	master           string
	manifests        string
	proxyName        string

	minSyncPeriod time.Duration
	syncPeriod    time.Duration

	ipvsScheduler     string
	ipvsDrainTimeout  time.Duration
	ipvsStrictARP     bool
	nodePortAddresses []netip.Prefix
	stateDir          string
	dummyLink         string

	masqueradeBit         int
	masqueradeAll         bool
	clusterCIDRs          []netip.Prefix
	nodeIPs               []netip.Addr
	conntrackDropInvalid  bool
	conntrackTCPBeLiberal bool
	// conntrack table size and timeouts (kube-proxy's --conntrack-*);
	// zero leaves the kernel's value.
	conntrackMaxPerCore            int
	conntrackMin                   int
	conntrackTCPEstablishedTimeout time.Duration
	conntrackTCPCloseWaitTimeout   time.Duration
	conntrackUDPTimeout            time.Duration
	conntrackUDPStreamTimeout      time.Duration
	// IPVS connection timeouts (kube-proxy's --ipvs-*-timeout); zero
	// leaves the kernel's value.
	ipvsTCPTimeout    time.Duration
	ipvsTCPFinTimeout time.Duration
	ipvsUDPTimeout    time.Duration

	dataplane string
	// hostPorts: program the hostPorts of this node's Pods.
	hostPorts bool

	// healthzBindAddress serves /healthz and /livez ("" disables).
	healthzBindAddress string
	// metricsBindAddress serves /metrics ("" disables).
	metricsBindAddress string
	// metricsPerBackend exposes per-backend series, up to
	// metricsBackendCap backends.
	metricsPerBackend bool
	metricsBackendCap int
	// metricsRefreshInterval is how often the background refresher reads
	// the dataplane's counters (IPVS table) and conntrack for the metrics.
	metricsRefreshInterval time.Duration
	// metricsConntrack lists conntrack in the background refresher
	// (switchyard_conntrack_entries, nftables backend connections).
	metricsConntrack bool
	// apiSocket serves yardctl's API ("" disables).
	apiSocket string

	// bpfSocketLB runs the BPF socket load balancer (package ebpf) next
	// to the dataplane, its programs attached to bpfCgroupPath ("": the
	// cgroup v2 root) and its maps and links pinned under bpfPinPath.
	bpfSocketLB   bool
	bpfCgroupPath string
	bpfPinPath    string
	// bpfCountConnections attaches the sockops connection counter.
	bpfCountConnections bool
	// rebalance runs the connection rebalancer for Services that opt in
	// (annotation switchyard.io/rebalance), a round every
	// rebalanceInterval.
	rebalance         bool
	rebalanceInterval time.Duration

	// configFile is --config: a KubeProxyConfiguration and/or a
	// SwitchyardConfiguration (configfile.go); flags given on the command
	// line override it.
	configFile string

	cleanup bool
}

func parseFlags(args []string) (*config, error) {
	c := &config{}
	fs := pflag.NewFlagSet("switchyard", pflag.ContinueOnError)
	fs.StringVar(&c.hostnameOverride, "hostname-override", "", "this node's name (default: the hostname)")
	fs.StringVar(&c.kubeconfig, "kubeconfig", "", "kubeconfig file; empty means in-cluster configuration")
	fs.StringVar(&c.master, "master", "", "API server address (overrides the kubeconfig's)")
	fs.StringVar(&c.manifests, "manifests", "", "standalone mode: read Services and EndpointSlices from YAML/JSON files in this directory instead of an API server")
	fs.StringVar(&c.proxyName, "proxy-name", "switchyard", "Services labelled service.kubernetes.io/service-proxy-name with this value are handled; other values are skipped")
	fs.DurationVar(&c.minSyncPeriod, "min-sync-period", time.Second, "minimum time between two dataplane syncs; changes arriving sooner are coalesced")
	fs.DurationVar(&c.syncPeriod, "sync-period", 30*time.Second, "maximum time between two syncs: a full resync that repairs drift")
	fs.StringVar(&c.ipvsScheduler, "ipvs-scheduler", "rr", "default IPVS scheduler: one of "+strings.Join(dataplane.IPVSSchedulers, ", ")+" (per Service: annotation "+dataplane.AnnotationIPVSScheduler+")")
	fs.DurationVar(&c.ipvsDrainTimeout, "ipvs-drain-timeout", 15*time.Minute, "how long a removed IPVS real server keeps draining its connections (weight 0) before it is deleted anyway")
	fs.BoolVar(&c.ipvsStrictARP, "ipvs-strict-arp", false, "set arp_ignore=1 and arp_announce=2 so service IPs on the dummy link are not answered by ARP (MetalLB L2)")
	var nodePortAddrs, clusterCIDRs, nodeIPs []string
	fs.StringSliceVar(&nodeIPs, "node-ip", nil, "this node's primary addresses (default: the Node object's InternalIPs; set it in standalone mode)")
	fs.StringSliceVar(&nodePortAddrs, "nodeport-addresses", nil, "CIDRs of the node addresses NodePorts are opened on (default: all local unicast addresses)")
	fs.StringVar(&c.stateDir, "state-dir", "/var/run/switchyard", "directory for state that must survive agent restarts (IPVS ownership, drain start times)")
	fs.StringVar(&c.dummyLink, "ipvs-dummy-link", "switchyard0", "name of the dummy link holding service IPs")
	fs.IntVar(&c.masqueradeBit, "masquerade-bit", 14, "bit of the packet mark that requests SNAT (0-31)")
	fs.BoolVar(&c.masqueradeAll, "masquerade-all", false, "SNAT all traffic to cluster IPs")
	fs.StringSliceVar(&clusterCIDRs, "cluster-cidr", nil, "pod CIDRs; cluster-IP traffic from outside them is SNATed")
	fs.BoolVar(&c.conntrackDropInvalid, "conntrack-drop-invalid", false, "drop forwarded packets conntrack marks INVALID")
	fs.BoolVar(&c.conntrackTCPBeLiberal, "conntrack-tcp-be-liberal", false, "set nf_conntrack_tcp_be_liberal=1 so out-of-window TCP packets are not marked INVALID")
	fs.IntVar(&c.conntrackMaxPerCore, "conntrack-max-per-core", 0, "conntrack entries per CPU: nf_conntrack_max becomes this × CPUs (at least --conntrack-min); 0 leaves nf_conntrack_max as it is")
	fs.IntVar(&c.conntrackMin, "conntrack-min", 131072, "lower bound of nf_conntrack_max when --conntrack-max-per-core is set")
	fs.DurationVar(&c.conntrackTCPEstablishedTimeout, "conntrack-tcp-timeout-established", 0, "idle timeout of established TCP conntrack entries; 0 leaves the kernel's")
	fs.DurationVar(&c.conntrackTCPCloseWaitTimeout, "conntrack-tcp-timeout-close-wait", 0, "timeout of TCP conntrack entries in CLOSE_WAIT; 0 leaves the kernel's")
	fs.DurationVar(&c.conntrackUDPTimeout, "conntrack-udp-timeout", 0, "idle timeout of unreplied UDP conntrack entries; 0 leaves the kernel's")
	fs.DurationVar(&c.conntrackUDPStreamTimeout, "conntrack-udp-timeout-stream", 0, "idle timeout of UDP conntrack entries seen in both directions; 0 leaves the kernel's")
	fs.DurationVar(&c.ipvsTCPTimeout, "ipvs-tcp-timeout", 0, "IPVS idle timeout of established TCP connections; 0 leaves the kernel's (900s)")
	fs.DurationVar(&c.ipvsTCPFinTimeout, "ipvs-tcpfin-timeout", 0, "IPVS timeout of TCP connections after a FIN; 0 leaves the kernel's (120s)")
	fs.DurationVar(&c.ipvsUDPTimeout, "ipvs-udp-timeout", 0, "IPVS timeout of UDP flows; 0 leaves the kernel's (300s)")
	fs.BoolVar(&c.hostPorts, "hostport", true, "program the hostPorts of this node's Pods (DNAT before Service rules); disable when a CNI portmap plugin does it")
	fs.StringVar(&c.dataplane, "dataplane", "auto", "kernel dataplane: auto (IPVS when the kernel has it, else nftables), ipvs or nftables")
	fs.StringVar(&c.healthzBindAddress, "healthz-bind-address", "0.0.0.0:10256", "IP:port serving /healthz and /livez (kube-proxy's semantics); empty disables")
	fs.StringVar(&c.metricsBindAddress, "metrics-bind-address", "127.0.0.1:10249", "IP:port serving Prometheus metrics at /metrics; empty disables")
	fs.BoolVar(&c.metricsPerBackend, "metrics-per-backend", true, "expose per-backend connection metrics (up to --metrics-backend-cap backends; beyond, per-Service sums only)")
	fs.IntVar(&c.metricsBackendCap, "metrics-backend-cap", 20000, "most backends exposed one by one when --metrics-per-backend is set")
	fs.DurationVar(&c.metricsRefreshInterval, "metrics-refresh-interval", 15*time.Second, "how often dataplane counters (IPVS bytes and packets) and conntrack are read in the background for /metrics; scrapes read the cached values")
	fs.BoolVar(&c.metricsConntrack, "metrics-conntrack", true, "list conntrack every --metrics-refresh-interval for switchyard_conntrack_entries and the nftables dataplane's backend connections (costly on busy nodes)")
	fs.StringVar(&c.apiSocket, "api-socket", "/run/switchyard/switchyard.sock", "unix socket serving yardctl's read-mostly API (mode 0600, root only; no TCP listener); empty disables")
	// Off by default until test/socklbbench (make bench-ebpf) shows the
	// socket load balancer pays on real nodes: it attaches to every
	// process on the node (see README, "Socket load balancing").
	fs.BoolVar(&c.bpfSocketLB, "bpf-socket-lb", false, "BPF socket load balancing: connections from this node's pods and processes to Services go straight to a backend (cgroup connect/sendmsg hooks), counted per backend; the dataplane still serves everything else. Off when the kernel cannot run it (logged)")
	fs.StringVar(&c.bpfCgroupPath, "bpf-cgroup-path", "", "cgroup v2 directory the socket load balancer attaches to; every process in it or below is affected (default: the cgroup v2 root found in /proc/self/mountinfo)")
	fs.BoolVar(&c.rebalance, "rebalance", true, "run the connection rebalancer for Services annotated "+dataplane.AnnotationRebalance+"=true (others are never touched): it sheds the fewest long-lived connections so they even out across backends after a scale-up")
	fs.DurationVar(&c.rebalanceInterval, "rebalance-interval", time.Second, "how often the rebalancer measures connections and sheds (within each Service's rate limit)")
	fs.BoolVar(&c.bpfCountConnections, "bpf-count-connections", true, "with --bpf-socket-lb: count established TCP connections per backend with a sockops program (metrics, yardctl, the rebalancer); off saves about 1% of connect rate (make bench-ebpf)")
	fs.StringVar(&c.bpfPinPath, "bpf-pin-path", ebpf.DefaultPinPath, "bpf file system directory the socket load balancer pins its maps and links in, so a restarted agent takes over without interrupting translation (/sys/fs/bpf is mounted when missing); --cleanup unpins it")
	fs.StringVar(&c.configFile, "config", "", "configuration file: a kube-proxy KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1) and/or a SwitchyardConfiguration (switchyard.io/v1alpha1); flags given on the command line override it")
	fs.BoolVar(&c.cleanup, "cleanup", false, "remove every kernel object switchyard owns, then exit")

	// klog's flags (-v, --logtostderr, ...) join ours.
	goflags := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(goflags)
	fs.AddGoFlagSet(goflags)

	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	switch c.dataplane {
	case "auto", "ipvs", "nftables":
	default:
		return nil, fmt.Errorf("--dataplane %q: must be auto, ipvs or nftables", c.dataplane)
	}
	if !dataplane.ValidScheduler(c.ipvsScheduler) {
		return nil, fmt.Errorf("--ipvs-scheduler %q: must be one of %v", c.ipvsScheduler, dataplane.IPVSSchedulers)
	}
	if c.masqueradeBit < 0 || c.masqueradeBit > 31 {
		return nil, fmt.Errorf("--masquerade-bit %d: must be 0..31", c.masqueradeBit)
	}
	for name, d := range map[string]time.Duration{
		"conntrack-tcp-timeout-established": c.conntrackTCPEstablishedTimeout, "conntrack-tcp-timeout-close-wait": c.conntrackTCPCloseWaitTimeout,
		"conntrack-udp-timeout": c.conntrackUDPTimeout, "conntrack-udp-timeout-stream": c.conntrackUDPStreamTimeout,
		"ipvs-tcp-timeout": c.ipvsTCPTimeout, "ipvs-tcpfin-timeout": c.ipvsTCPFinTimeout, "ipvs-udp-timeout": c.ipvsUDPTimeout,
	} {
		if d < 0 {
			return nil, fmt.Errorf("--%s %v: must not be negative", name, d)
		}
	}
	if c.conntrackMaxPerCore < 0 || c.conntrackMin < 0 {
		return nil, fmt.Errorf("--conntrack-max-per-core and --conntrack-min must not be negative")
	}
	if c.metricsRefreshInterval < time.Second {
		return nil, fmt.Errorf("--metrics-refresh-interval must be at least 1s")
	}
	if c.minSyncPeriod < 0 || c.syncPeriod <= 0 {
		return nil, fmt.Errorf("--min-sync-period must be >= 0 and --sync-period > 0")
	}
	var err error
	if c.nodePortAddresses, err = parsePrefixes("--nodeport-addresses", nodePortAddrs); err != nil {
		return nil, err
	}
	for _, s := range nodeIPs {
		ip, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("--node-ip: %w", err)
		}
		c.nodeIPs = append(c.nodeIPs, ip.Unmap())
	}
	if c.clusterCIDRs, err = parsePrefixes("--cluster-cidr", clusterCIDRs); err != nil {
		return nil, err
	}
	for name, v := range map[string]*string{"--healthz-bind-address": &c.healthzBindAddress, "--metrics-bind-address": &c.metricsBindAddress} {
		if *v != "" {
			if err := validateHostPort(*v); err != nil {
				return nil, fmt.Errorf("%s %q: %v", name, *v, err)
			}
		}
	}
	if c.configFile != "" {
		if err := applyConfigFile(fs, c, c.configFile); err != nil {
			return nil, err
		}
	}
	for name, v := range map[string]string{"--bpf-cgroup-path": c.bpfCgroupPath, "--bpf-pin-path": c.bpfPinPath} {
		if v != "" && !filepath.IsAbs(v) {
			return nil, fmt.Errorf("%s %q: must be an absolute path", name, v)
		}
	}
	if c.hostnameOverride == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("node name: %w (set --hostname-override)", err)
		}
		c.hostnameOverride = h
	}
	c.hostnameOverride = strings.ToLower(strings.TrimSpace(c.hostnameOverride))
	return c, nil
}

func parsePrefixes(flagName string, in []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range in {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", flagName, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}
