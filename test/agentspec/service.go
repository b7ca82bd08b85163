package agentspec

import (
	"fmt"
	"net/netip"
	"strings"
)

// Service is one single-port Service and its EndpointSlice, as the
// manifests the agent reads.
type Service struct {
	Name      string
	ClusterIP netip.Addr
	Port      uint16
	// Protocol is "TCP" (when empty) or "UDP".
	Protocol string
	// NodePort makes the Service type NodePort when set.
	NodePort uint16
	// LoadBalancerIP makes the Service type LoadBalancer with this ingress
	// IP in its status when valid.
	LoadBalancerIP netip.Addr
	ExternalIPs    []netip.Addr
	// Scheduler sets the switchyard.io/ipvs-scheduler annotation.
	Scheduler string
	// ExternalLocal and InternalLocal set externalTrafficPolicy and
	// internalTrafficPolicy to Local: the external frontends (load-balancer
	// IP, external IPs, NodePort), resp. the ClusterIP, serve only the
	// backends on the agent's node (Backend.Node).
	ExternalLocal bool
	InternalLocal bool
	// HealthCheckNodePort is spec.healthCheckNodePort (a LoadBalancer
	// Service with ExternalLocal).
	HealthCheckNodePort uint16
	// AffinityClientIP sets sessionAffinity: ClientIP.
	AffinityClientIP bool
	// LoadBalancerSourceRanges is spec.loadBalancerSourceRanges: only
	// sources inside them reach the load-balancer IP (see AllowFromNode
	// for the one exception); the ClusterIP, external IPs and NodePort are
	// not filtered.
	LoadBalancerSourceRanges []netip.Prefix
	// Backends are the ready endpoints (port TargetPort).
	Backends []Backend
	// Draining are backends no longer in the EndpointSlice that still have
	// connections: with FeatureGracefulDrain they stay at weight 0.
	Draining []Backend
}

// Proto is the protocol in upper case.
func (s Service) Proto() string {
	if s.Protocol == "" {
		return "TCP"
	}
	return strings.ToUpper(s.Protocol)
}

// Net is the protocol for net.Dial ("tcp", "udp").
func (s Service) Net() string { return strings.ToLower(s.Proto()) }

// Addr is ClusterIP:Port.
func (s Service) Addr() string { return netip.AddrPortFrom(s.ClusterIP, s.Port).String() }

// NodePortAddr is NodeAddr:NodePort.
func (s Service) NodePortAddr() string { return netip.AddrPortFrom(NodeAddr, s.NodePort).String() }

// Frontend is one address, protocol and port a Service is reached on.
type Frontend struct {
	Addr     netip.Addr
	Protocol string // "TCP", "UDP"
	Port     uint16
	// NodePort: Addr is NodeAddr, but the port is open on every node
	// address.
	NodePort bool
}

func (f Frontend) String() string {
	s := netip.AddrPortFrom(f.Addr, f.Port).String() + "/" + f.Protocol
	if f.NodePort {
		s += " (node port)"
	}
	return s
}

// Frontends lists the ClusterIP, load-balancer IP, external IPs and the
// NodePort (on NodeAddr) of s.
func (s Service) Frontends() []Frontend {
	fs := []Frontend{{Addr: s.ClusterIP, Protocol: s.Proto(), Port: s.Port}}
	if s.LoadBalancerIP.IsValid() {
		fs = append(fs, Frontend{Addr: s.LoadBalancerIP, Protocol: s.Proto(), Port: s.Port})
	}
	for _, ip := range s.ExternalIPs {
		fs = append(fs, Frontend{Addr: ip, Protocol: s.Proto(), Port: s.Port})
	}
	if s.NodePort != 0 {
		fs = append(fs, Frontend{Addr: NodeAddr, Protocol: s.Proto(), Port: s.NodePort, NodePort: true})
	}
	return fs
}

// Local tells whether fe, a frontend of s, serves only backends on the
// node (a Local traffic policy applies to it).
func (s Service) Local(fe Frontend) bool {
	if !s.External(fe) {
		return s.InternalLocal
	}
	return s.ExternalLocal
}

// External tells whether fe, a frontend of s, is one external traffic
// arrives on (load-balancer IP, external IPs, NodePort): not the
// ClusterIP.
func (s Service) External(fe Frontend) bool { return fe.NodePort || fe.Addr != s.ClusterIP }

// NoLocalEndpoint tells whether s has externalTrafficPolicy Local and
// backends, none of them on node: outside traffic to its external
// frontends is dropped, while the node's own and its pods' traffic there
// goes to the other nodes' backends (kube-proxy's "short circuit").
func (s Service) NoLocalEndpoint(node string) bool {
	if !s.ExternalLocal || len(s.Backends) == 0 {
		return false
	}
	for _, be := range s.Backends {
		if be.Node != "" && be.Node == node {
			return false
		}
	}
	return true
}

// Serving returns the backends fe (a frontend of s) sends new connections
// to on the node named node, and the draining ones it keeps: all of them,
// or under a Local policy only those whose Node is node.
func (s Service) Serving(fe Frontend, node string) (ready, draining []Backend) {
	if !s.Local(fe) {
		return s.Backends, s.Draining
	}
	onNode := func(bes []Backend) []Backend {
		var out []Backend
		for _, be := range bes {
			if be.Node != "" && be.Node == node {
				out = append(out, be)
			}
		}
		return out
	}
	return onNode(s.Backends), onNode(s.Draining)
}

// Firewalled tells whether s's load-balancer IP only lets the sources in
// its LoadBalancerSourceRanges through.
func (s Service) Firewalled() bool {
	return s.LoadBalancerIP.IsValid() && len(s.LoadBalancerSourceRanges) > 0
}

// AllowFromNode tells whether traffic to s's load-balancer IP whose source
// is that IP itself passes its firewall: when one of the node's addresses
// (nodeIPs, the agent's --node-ip) is inside a range (kube-proxy's
// "allowFromNode": where the IP is bound on the node, as IPVS binds it,
// the node's own requests carry it as source).
func (s Service) AllowFromNode(nodeIPs []netip.Addr) bool {
	for _, p := range s.LoadBalancerSourceRanges {
		for _, a := range nodeIPs {
			if p.Contains(a) {
				return true
			}
		}
	}
	return false
}

// Endpoints are the backends' addresses with TargetPort.
func Endpoints(bes []Backend) []netip.AddrPort {
	out := make([]netip.AddrPort, 0, len(bes))
	for _, be := range bes {
		out = append(out, netip.AddrPortFrom(be.Addr, TargetPort))
	}
	return out
}

// YAML renders the Service and its EndpointSlice.
func (s Service) YAML() string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: v1\nkind: Service\nmetadata:\n  name: %s\n  namespace: %s\n", s.Name, Namespace)
	if s.Scheduler != "" {
		fmt.Fprintf(&b, "  annotations:\n    switchyard.io/ipvs-scheduler: %q\n", s.Scheduler)
	}
	b.WriteString("spec:\n")
	switch {
	case s.LoadBalancerIP.IsValid():
		b.WriteString("  type: LoadBalancer\n")
	case s.NodePort != 0:
		b.WriteString("  type: NodePort\n")
	}
	fmt.Fprintf(&b, "  clusterIP: %s\n", s.ClusterIP)
	if s.ExternalLocal {
		b.WriteString("  externalTrafficPolicy: Local\n")
	}
	if s.InternalLocal {
		b.WriteString("  internalTrafficPolicy: Local\n")
	}
	if s.HealthCheckNodePort != 0 {
		fmt.Fprintf(&b, "  healthCheckNodePort: %d\n", s.HealthCheckNodePort)
	}
	if s.AffinityClientIP {
		b.WriteString("  sessionAffinity: ClientIP\n")
	}
	if len(s.LoadBalancerSourceRanges) > 0 {
		b.WriteString("  loadBalancerSourceRanges:\n")
		for _, p := range s.LoadBalancerSourceRanges {
			fmt.Fprintf(&b, "  - %q\n", p)
		}
	}
	if len(s.ExternalIPs) > 0 {
		b.WriteString("  externalIPs:\n")
		for _, ip := range s.ExternalIPs {
			fmt.Fprintf(&b, "  - %q\n", ip)
		}
	}
	fmt.Fprintf(&b, "  ports:\n  - name: p\n    protocol: %s\n    port: %d\n    targetPort: %d\n", s.Proto(), s.Port, TargetPort)
	if s.NodePort != 0 {
		fmt.Fprintf(&b, "    nodePort: %d\n", s.NodePort)
	}
	if s.LoadBalancerIP.IsValid() {
		fmt.Fprintf(&b, "status:\n  loadBalancer:\n    ingress:\n    - ip: %q\n", s.LoadBalancerIP)
	}
	fmt.Fprintf(&b, "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: %s-1\n  namespace: %s\n", s.Name, Namespace)
	fmt.Fprintf(&b, "  labels:\n    kubernetes.io/service-name: %s\naddressType: IPv4\n", s.Name)
	fmt.Fprintf(&b, "ports:\n- name: p\n  protocol: %s\n  port: %d\n", s.Proto(), TargetPort)
	if len(s.Backends) == 0 {
		b.WriteString("endpoints: []\n")
	} else {
		b.WriteString("endpoints:\n")
		for _, be := range s.Backends {
			fmt.Fprintf(&b, "- addresses: [%q]\n  conditions:\n    ready: true\n", be.Addr)
			if be.Node != "" {
				fmt.Fprintf(&b, "  nodeName: %s\n", be.Node)
			}
		}
	}
	return b.String()
}
