package main

import "encoding/json"

// The configuration file schema. KubeProxyConfiguration mirrors kube-proxy's
// kubeproxy.config.k8s.io/v1alpha1 (staging/src/k8s.io/kube-proxy/config/
// v1alpha1/types.go) field for field, with the same JSON names, so an
// existing kube-proxy ConfigMap can be handed to switchyard as it is. It is
// declared here rather than imported: k8s.io/kube-proxy drags in
// component-base for a handful of structs.
//
// Scalars that upstream defaults when unset are pointers or named strings
// here, so "not in the file" and "zero" can be told apart; decoding is
// strict (unknown or duplicate fields are errors), so every upstream field
// must be listed even when switchyard ignores it.

const (
	kubeProxyAPIVersion  = "kubeproxy.config.k8s.io/v1alpha1"
	kubeProxyKind        = "KubeProxyConfiguration"
	switchyardAPIVersion = "switchyard.io/v1alpha1"
	switchyardKind       = "SwitchyardConfiguration"
)

// durationString is a Kubernetes-style duration ("30s", "1m", "2h22m").
// It stays a string until validation so that a bad value is reported with
// its field path.
type durationString string

type kubeProxyConfiguration struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`

	FeatureGates                map[string]bool          `json:"featureGates,omitempty"`
	ClientConnection            kpClientConnectionConfig `json:"clientConnection"`
	Logging                     kpLoggingConfiguration   `json:"logging,omitempty"`
	HostnameOverride            string                   `json:"hostnameOverride"`
	BindAddress                 string                   `json:"bindAddress"`
	HealthzBindAddress          string                   `json:"healthzBindAddress"`
	MetricsBindAddress          string                   `json:"metricsBindAddress"`
	BindAddressHardFail         bool                     `json:"bindAddressHardFail"`
	EnableProfiling             bool                     `json:"enableProfiling"`
	ShowHiddenMetricsForVersion string                   `json:"showHiddenMetricsForVersion"`

	Mode      string                   `json:"mode"`
	IPTables  kpIPTablesConfiguration  `json:"iptables"`
	IPVS      kpIPVSConfiguration      `json:"ipvs"`
	NFTables  kpNFTablesConfiguration  `json:"nftables"`
	Winkernel kpWinkernelConfiguration `json:"winkernel"`

	DetectLocalMode string                     `json:"detectLocalMode"`
	DetectLocal     kpDetectLocalConfiguration `json:"detectLocal"`
	ClusterCIDR     string                     `json:"clusterCIDR"`

	NodePortAddresses []string `json:"nodePortAddresses"`

	OOMScoreAdj      *int32                   `json:"oomScoreAdj"`
	Conntrack        kpConntrackConfiguration `json:"conntrack"`
	ConfigSyncPeriod durationString           `json:"configSyncPeriod"`
	PortRange        string                   `json:"portRange"`

	WindowsRunAsService bool `json:"windowsRunAsService,omitempty"`

	// Top-level syncPeriod/minSyncPeriod are kube-proxy's internal
	// (unversioned) config; v1alpha1 has them per mode. Accepted so that
	// files written against the internal shape load too.
	SyncPeriod    durationString `json:"syncPeriod,omitempty"`
	MinSyncPeriod durationString `json:"minSyncPeriod,omitempty"`
}

// kpClientConnectionConfig is component-base's ClientConnectionConfiguration.
type kpClientConnectionConfig struct {
	Kubeconfig         string  `json:"kubeconfig"`
	AcceptContentTypes string  `json:"acceptContentTypes"`
	ContentType        string  `json:"contentType"`
	QPS                float32 `json:"qps"`
	Burst              int32   `json:"burst"`
}

// kpLoggingConfiguration is component-base's logs/api/v1
// LoggingConfiguration. flushFrequency is a duration string or an integer
// of nanoseconds upstream; options are alpha; both are only ever ignored
// here, so they are kept raw.
type kpLoggingConfiguration struct {
	Format         string           `json:"format,omitempty"`
	FlushFrequency json.RawMessage  `json:"flushFrequency,omitempty"`
	Verbosity      *uint32          `json:"verbosity,omitempty"`
	VModule        []kpVModuleItem  `json:"vmodule,omitempty"`
	Options        *kpFormatOptions `json:"options,omitempty"`
}

type kpVModuleItem struct {
	FilePattern string `json:"filePattern"`
	Verbosity   uint32 `json:"verbosity"`
}

type kpFormatOptions struct {
	Text *kpOutputRoutingOptions `json:"text,omitempty"`
	JSON *kpOutputRoutingOptions `json:"json,omitempty"`
}

type kpOutputRoutingOptions struct {
	SplitStream    bool            `json:"splitStream,omitempty"`
	InfoBufferSize json.RawMessage `json:"infoBufferSize,omitempty"`
}

type kpIPTablesConfiguration struct {
	MasqueradeBit      *int32         `json:"masqueradeBit"`
	MasqueradeAll      bool           `json:"masqueradeAll"`
	LocalhostNodePorts *bool          `json:"localhostNodePorts"`
	SNATNodeInternalIP *bool          `json:"snatNodeInternalIP"`
	SyncPeriod         durationString `json:"syncPeriod"`
	MinSyncPeriod      durationString `json:"minSyncPeriod"`
}

type kpIPVSConfiguration struct {
	SyncPeriod    durationString `json:"syncPeriod"`
	MinSyncPeriod durationString `json:"minSyncPeriod"`
	Scheduler     string         `json:"scheduler"`
	ExcludeCIDRs  []string       `json:"excludeCIDRs"`
	StrictARP     bool           `json:"strictARP"`
	TCPTimeout    durationString `json:"tcpTimeout"`
	TCPFinTimeout durationString `json:"tcpFinTimeout"`
	UDPTimeout    durationString `json:"udpTimeout"`
}

type kpNFTablesConfiguration struct {
	MasqueradeBit *int32         `json:"masqueradeBit"`
	MasqueradeAll bool           `json:"masqueradeAll"`
	SyncPeriod    durationString `json:"syncPeriod"`
	MinSyncPeriod durationString `json:"minSyncPeriod"`
}

type kpConntrackConfiguration struct {
	MaxPerCore            *int32         `json:"maxPerCore"`
	Min                   *int32         `json:"min"`
	TCPEstablishedTimeout durationString `json:"tcpEstablishedTimeout"`
	TCPCloseWaitTimeout   durationString `json:"tcpCloseWaitTimeout"`
	TCPBeLiberal          bool           `json:"tcpBeLiberal"`
	UDPTimeout            durationString `json:"udpTimeout"`
	UDPStreamTimeout      durationString `json:"udpStreamTimeout"`
}

type kpWinkernelConfiguration struct {
	NetworkName           string `json:"networkName"`
	SourceVip             string `json:"sourceVip"`
	EnableDSR             bool   `json:"enableDSR"`
	RootHnsEndpointName   string `json:"rootHnsEndpointName"`
	ForwardHealthCheckVip bool   `json:"forwardHealthCheckVip"`
}

type kpDetectLocalConfiguration struct {
	BridgeInterface     string `json:"bridgeInterface"`
	InterfaceNamePrefix string `json:"interfaceNamePrefix"`
}

// switchyardConfiguration (switchyard.io/v1alpha1) holds the settings
// kube-proxy has no field for. Where it overlaps KubeProxyConfiguration
// (dataplane vs mode, nodePortAddresses) it wins.
type switchyardConfiguration struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`

	// Dataplane is auto, ipvs or nftables (--dataplane).
	Dataplane string `json:"dataplane"`
	// Manifests switches to standalone mode (--manifests).
	Manifests string `json:"manifests"`
	// Master overrides the kubeconfig's API server address (--master).
	Master string `json:"master"`
	// ProxyName is the service-proxy-name label value handled (--proxy-name).
	ProxyName string `json:"proxyName"`
	// StateDir survives agent restarts (--state-dir).
	StateDir string `json:"stateDir"`
	// NodePortAddresses: CIDRs (--nodeport-addresses).
	NodePortAddresses []string `json:"nodePortAddresses"`
	// HostPort programs the hostPorts of this node's Pods (--hostport).
	HostPort *bool `json:"hostPort"`

	IPVS      syIPVSConfiguration      `json:"ipvs"`
	Conntrack syConntrackConfiguration `json:"conntrack"`
	BPF       syBPFConfiguration       `json:"bpf"`
}

type syIPVSConfiguration struct {
	// DrainTimeout (--ipvs-drain-timeout).
	DrainTimeout durationString `json:"drainTimeout"`
	// DummyLink (--ipvs-dummy-link).
	DummyLink string `json:"dummyLink"`
}

type syConntrackConfiguration struct {
	// DropInvalid (--conntrack-drop-invalid).
	DropInvalid *bool `json:"dropInvalid"`
}

type syBPFConfiguration struct {
	// SocketLB turns on BPF socket load balancing (--bpf-socket-lb).
	SocketLB *bool `json:"socketLB"`
	// CgroupPath is the cgroup v2 directory its programs attach to
	// (--bpf-cgroup-path; empty: the cgroup v2 root).
	CgroupPath string `json:"cgroupPath"`
	// PinPath is the bpffs directory of its pinned maps and links
	// (--bpf-pin-path).
	PinPath string `json:"pinPath"`
	// CountConnections attaches the sockops connection counter
	// (--bpf-count-connections).
	CountConnections *bool `json:"countConnections"`
}
