// Package dataplane holds switchyard's model of what the node should look
// like: normalized Services, their ports and endpoints, built by pure
// functions from Kubernetes API objects. Kernel backends (ipvs, nftables,
// iptables, ebpf) receive this model through the Dataplane interface and
// never see API objects.
package dataplane

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Protocol is a Service port protocol as the kernel backends know it.
type Protocol string

const (
	TCP  Protocol = "TCP"
	UDP  Protocol = "UDP"
	SCTP Protocol = "SCTP"
)

// IP protocol numbers (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP).
const (
	IPProtoTCP  = 6
	IPProtoUDP  = 17
	IPProtoSCTP = 132
)

// Number is p's IP protocol number, false for a protocol the model does
// not have.
func (p Protocol) Number() (uint8, bool) {
	switch p {
	case TCP:
		return IPProtoTCP, true
	case UDP:
		return IPProtoUDP, true
	case SCTP:
		return IPProtoSCTP, true
	}
	return 0, false
}

// ProtocolFromNumber is Number's inverse.
func ProtocolFromNumber(n uint8) (Protocol, bool) {
	switch n {
	case IPProtoTCP:
		return TCP, true
	case IPProtoUDP:
		return UDP, true
	case IPProtoSCTP:
		return SCTP, true
	}
	return "", false
}

// ServiceName identifies a Service.
type ServiceName struct {
	Namespace string
	Name      string
}

func (n ServiceName) String() string { return n.Namespace + "/" + n.Name }

// ServicePortName identifies one port of a Service, the way kube-proxy does:
// the Service, the port's name (may be empty for single-port Services) and
// its protocol. EndpointSlice ports are matched to Service ports by this key.
type ServicePortName struct {
	ServiceName
	Port     string
	Protocol Protocol
}

func (n ServicePortName) String() string {
	if n.Port == "" {
		return fmt.Sprintf("%s:%s", n.ServiceName, strings.ToLower(string(n.Protocol)))
	}
	return fmt.Sprintf("%s:%s/%s", n.ServiceName, n.Port, strings.ToLower(string(n.Protocol)))
}

// Less orders ServicePortNames for deterministic output.
func (n ServicePortName) Compare(o ServicePortName) int {
	if c := strings.Compare(n.Namespace, o.Namespace); c != 0 {
		return c
	}
	if c := strings.Compare(n.Name, o.Name); c != 0 {
		return c
	}
	if c := strings.Compare(n.Port, o.Port); c != 0 {
		return c
	}
	return strings.Compare(string(n.Protocol), string(o.Protocol))
}

// ServicePort is one port of a Service with everything a dataplane needs to
// program its frontends. All address slices are sorted and de-duplicated.
type ServicePort struct {
	Name ServicePortName

	// Port is the Service port on ClusterIPs, ExternalIPs and LB IPs.
	Port uint16
	// NodePort is 0 when the Service has none.
	NodePort uint16

	ClusterIPs      []netip.Addr
	ExternalIPs     []netip.Addr
	LoadBalancerIPs []netip.Addr

	// Scheduler is the IPVS scheduler requested for this Service by
	// annotation, already validated; empty means the dataplane default.
	Scheduler string

	// SessionAffinityTimeout > 0 means sessionAffinity: ClientIP.
	SessionAffinityTimeout time.Duration

	ExternalPolicyLocal bool // externalTrafficPolicy: Local
	InternalPolicyLocal bool // internalTrafficPolicy: Local
	HealthCheckNodePort uint16

	LoadBalancerSourceRanges []netip.Prefix

	// Rebalance holds the conntrack rebalancer opt-in; nil when the Service
	// did not opt in.
	Rebalance *RebalanceSpec

	// MaxConnectionsPerBackend > 0 caps the connections this node opens to
	// each backend (switchyard.io/max-connections-per-backend); 0 means no
	// limit.
	MaxConnectionsPerBackend int
}

// RebalanceSpec is the per-Service rebalancer configuration.
type RebalanceSpec struct {
	Tolerance     float64
	MaxResetsPerS float64
	MinAge        time.Duration
	DryRun        bool
}

// Frontends lists every address:port the Service port is reachable on,
// excluding NodePorts (which depend on the node's addresses).
func (sp *ServicePort) Frontends() []netip.AddrPort {
	var out []netip.AddrPort
	for _, group := range [][]netip.Addr{sp.ClusterIPs, sp.ExternalIPs, sp.LoadBalancerIPs} {
		for _, ip := range group {
			out = append(out, netip.AddrPortFrom(ip, sp.Port))
		}
	}
	return out
}

// Equal reports whether two ServicePorts program the kernel identically.
func (sp *ServicePort) Equal(o *ServicePort) bool {
	if sp == nil || o == nil {
		return sp == o
	}
	return sp.Name == o.Name && sp.Port == o.Port && sp.NodePort == o.NodePort &&
		slices.Equal(sp.ClusterIPs, o.ClusterIPs) &&
		slices.Equal(sp.ExternalIPs, o.ExternalIPs) &&
		slices.Equal(sp.LoadBalancerIPs, o.LoadBalancerIPs) &&
		sp.Scheduler == o.Scheduler &&
		sp.SessionAffinityTimeout == o.SessionAffinityTimeout &&
		sp.ExternalPolicyLocal == o.ExternalPolicyLocal &&
		sp.InternalPolicyLocal == o.InternalPolicyLocal &&
		sp.HealthCheckNodePort == o.HealthCheckNodePort &&
		slices.Equal(sp.LoadBalancerSourceRanges, o.LoadBalancerSourceRanges) &&
		equalRebalance(sp.Rebalance, o.Rebalance) &&
		sp.MaxConnectionsPerBackend == o.MaxConnectionsPerBackend
}

func equalRebalance(a, b *RebalanceSpec) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// Endpoint is one backend address of a Service port, merged across the
// Service's EndpointSlices.
type Endpoint struct {
	Addr netip.AddrPort

	// Conditions as in discovery/v1; a nil condition in the API is
	// normalized the way kube-proxy does (ready => serving, !terminating).
	Ready       bool
	Serving     bool
	Terminating bool

	NodeName  string
	Zone      string
	ZoneHints []string // sorted; set by the EndpointSlice controller for topology-aware routing
	NodeHints []string // sorted; PreferSameNode
}

// Equal reports whether two endpoints are identical.
func (e Endpoint) Equal(o Endpoint) bool {
	return e.Addr == o.Addr && e.Ready == o.Ready && e.Serving == o.Serving &&
		e.Terminating == o.Terminating && e.NodeName == o.NodeName && e.Zone == o.Zone &&
		slices.Equal(e.ZoneHints, o.ZoneHints) && slices.Equal(e.NodeHints, o.NodeHints)
}

// CompareEndpoints orders endpoints by address then port.
func CompareEndpoints(a, b Endpoint) int {
	if c := a.Addr.Addr().Compare(b.Addr.Addr()); c != 0 {
		return c
	}
	return int(a.Addr.Port()) - int(b.Addr.Port())
}

// State is the whole desired state of the node, as the dataplanes see it.
// It is owned by the change tracker: dataplanes must treat it as read-only
// and must not keep references past Sync.
type State struct {
	Services  map[ServicePortName]*ServicePort
	Endpoints map[ServicePortName][]Endpoint // sorted by CompareEndpoints

	// NodeName is this node's name; NodeZone its topology zone (may be "").
	NodeName string
	NodeZone string
	// NodeIPs are this node's primary addresses (from the Node object, or
	// --node-ip), sorted; may be empty in standalone mode.
	NodeIPs []netip.Addr

	// Weights steer new connections of opted-in Service ports (the
	// rebalancer sets them from live connection counts): an endpoint's
	// share among those CategorizeEndpoints chose; endpoints absent or at
	// 0 get none. Absent for a port, or none of its chosen endpoints with
	// a positive weight: equal shares. See WeightEndpoints.
	Weights map[ServicePortName]map[netip.AddrPort]int
}

// NewState returns an empty State.
func NewState() *State {
	return &State{
		Services:  map[ServicePortName]*ServicePort{},
		Endpoints: map[ServicePortName][]Endpoint{},
		Weights:   map[ServicePortName]map[netip.AddrPort]int{},
	}
}

// SortedServicePorts returns the Service port names in deterministic order.
func (s *State) SortedServicePorts() []ServicePortName {
	names := make([]ServicePortName, 0, len(s.Services))
	for n := range s.Services {
		names = append(names, n)
	}
	slices.SortFunc(names, ServicePortName.Compare)
	return names
}

// Changes says what changed since the previous successful Sync. Full means
// the dataplane must compare everything against the kernel (first sync,
// periodic resync, or after a failed sync); otherwise only the listed
// Services changed and everything else is known to be as last applied.
type Changes struct {
	Full     bool
	Services map[ServiceName]struct{}
}

// Has reports whether the Service is part of the change (always true for a
// full sync).
func (c Changes) Has(n ServiceName) bool {
	if c.Full {
		return true
	}
	_, ok := c.Services[n]
	return ok
}
