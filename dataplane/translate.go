package dataplane

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
)

const (
	// LabelServiceProxyName marks Services handled by another proxy.
	LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"
	// LabelServiceName ties an EndpointSlice to its Service.
	LabelServiceName = discovery.LabelServiceName
	// AnnotationIPVSScheduler selects the IPVS scheduler of one Service.
	AnnotationIPVSScheduler = "switchyard.io/ipvs-scheduler"

	// The conntrack rebalancer's opt-in and knobs (see RebalanceSpec).
	AnnotationRebalance             = "switchyard.io/rebalance"
	AnnotationRebalanceTolerance    = "switchyard.io/rebalance-tolerance"
	AnnotationRebalanceMaxResets    = "switchyard.io/rebalance-max-resets-per-second"
	AnnotationRebalanceMinAge       = "switchyard.io/rebalance-min-age"
	AnnotationRebalanceDryRun       = "switchyard.io/rebalance-dry-run"
	DefaultRebalanceTolerance       = 0.10
	DefaultRebalanceMaxResetsPerSec = 20.0
	DefaultRebalanceMinAge          = 5 * time.Second

	// AnnotationMaxConnectionsPerBackend caps the established connections
	// this node opens to each backend of the Service (an L4 circuit
	// breaker): new connections beyond it are refused with a reset.
	AnnotationMaxConnectionsPerBackend = "switchyard.io/max-connections-per-backend"
	MaxConnectionsPerBackendLimit      = 1 << 20

	// DefaultAffinityTimeout is kube-proxy's default ClientIP timeout.
	DefaultAffinityTimeout = 10800 * time.Second
)

// IPVSSchedulers are the schedulers switchyard accepts, by kernel name.
var IPVSSchedulers = []string{"rr", "wrr", "lc", "wlc", "sh", "mh", "sed", "nq"}

// ValidScheduler reports whether s is an accepted IPVS scheduler name.
func ValidScheduler(s string) bool { return slices.Contains(IPVSSchedulers, s) }

// Problem describes an object (or part of one) that translation rejected or
// corrected. Reason is a short, stable token suitable as a metric label.
type Problem struct {
	Object string // "Service ns/name" or "EndpointSlice ns/name"
	Reason string
	Detail string
	// Fatal problems made the whole object unusable; others were corrected
	// (e.g. an invalid annotation replaced by the default).
	Fatal bool
}

func (p Problem) Error() string {
	return fmt.Sprintf("%s: %s: %s", p.Object, p.Reason, p.Detail)
}

// TranslateOptions carries the agent configuration translation depends on.
type TranslateOptions struct {
	// ProxyName is the value of service.kubernetes.io/service-proxy-name
	// that selects switchyard; Services with the label and any other value
	// are skipped. Empty: every labelled Service is skipped.
	ProxyName string
}

// SkipReason returns why kube-proxy semantics say the Service must not be
// programmed at all, or "" when it must.
func SkipReason(svc *v1.Service, opts TranslateOptions) string {
	if v, ok := svc.Labels[LabelServiceProxyName]; ok && (opts.ProxyName == "" || v != opts.ProxyName) {
		return "service-proxy-name " + v
	}
	if svc.Spec.Type == v1.ServiceTypeExternalName {
		return "ExternalName"
	}
	if svc.Spec.ClusterIP == v1.ClusterIPNone {
		return "headless"
	}
	if svc.Spec.ClusterIP == "" && len(svc.Spec.ClusterIPs) == 0 {
		return "no cluster IP"
	}
	return ""
}

// ServicePortsFromService builds the model of every port of svc. It is a pure
// function. A nil result with no fatal problem means the Service is skipped
// on purpose (see SkipReason). Non-fatal problems were corrected and the
// ports are usable.
func ServicePortsFromService(svc *v1.Service, opts TranslateOptions) ([]*ServicePort, []Problem) {
	if SkipReason(svc, opts) != "" {
		return nil, nil
	}
	obj := "Service " + svc.Namespace + "/" + svc.Name
	var problems []Problem
	report := func(fatal bool, reason, format string, args ...any) {
		problems = append(problems, Problem{Object: obj, Reason: reason, Detail: fmt.Sprintf(format, args...), Fatal: fatal})
	}

	clusterIPStrs := svc.Spec.ClusterIPs
	if len(clusterIPStrs) == 0 {
		clusterIPStrs = []string{svc.Spec.ClusterIP}
	}
	clusterIPs := parseAddrs(clusterIPStrs, func(s string) { report(false, "invalid-cluster-ip", "cluster IP %q is not an IP address; ignored", s) })
	if len(clusterIPs) == 0 {
		report(true, "invalid-cluster-ip", "no usable cluster IP")
		return nil, problems
	}
	externalIPs := parseAddrs(svc.Spec.ExternalIPs, func(s string) { report(false, "invalid-external-ip", "external IP %q ignored", s) })

	var lbIPs []netip.Addr
	if svc.Spec.Type == v1.ServiceTypeLoadBalancer {
		for _, ing := range svc.Status.LoadBalancer.Ingress {
			if ing.IP == "" {
				continue
			}
			// ipMode Proxy: the load balancer delivers to the node, not to
			// the VIP, so kube-proxy does not capture the VIP.
			if ing.IPMode != nil && *ing.IPMode == v1.LoadBalancerIPModeProxy {
				continue
			}
			a, err := netip.ParseAddr(ing.IP)
			if err != nil {
				report(false, "invalid-lb-ip", "load balancer IP %q ignored", ing.IP)
				continue
			}
			lbIPs = append(lbIPs, a.Unmap())
		}
	}
	lbIPs = sortUnique(lbIPs)

	var sourceRanges []netip.Prefix
	for _, r := range svc.Spec.LoadBalancerSourceRanges {
		p, err := netip.ParsePrefix(strings.TrimSpace(r))
		if err != nil {
			report(false, "invalid-source-range", "loadBalancerSourceRange %q ignored", r)
			continue
		}
		sourceRanges = append(sourceRanges, unmapPrefix(p).Masked())
	}
	slices.SortFunc(sourceRanges, comparePrefix)
	sourceRanges = slices.Compact(sourceRanges)

	scheduler := ""
	if s, ok := svc.Annotations[AnnotationIPVSScheduler]; ok {
		if ValidScheduler(s) {
			scheduler = s
		} else {
			report(false, "invalid-scheduler", "annotation %s=%q is not one of %v; using the default scheduler", AnnotationIPVSScheduler, s, IPVSSchedulers)
		}
	}

	rebalance := parseRebalance(svc.Annotations, report)
	maxConns := 0
	if v, ok := svc.Annotations[AnnotationMaxConnectionsPerBackend]; ok {
		if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n > 0 && n <= MaxConnectionsPerBackendLimit {
			maxConns = n
		} else {
			report(false, "invalid-max-connections", "annotation %s=%q is not an integer in [1, %d]; no connection limit", AnnotationMaxConnectionsPerBackend, v, MaxConnectionsPerBackendLimit)
		}
	}

	var affinity time.Duration
	if svc.Spec.SessionAffinity == v1.ServiceAffinityClientIP {
		affinity = DefaultAffinityTimeout
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			if t := *c.ClientIP.TimeoutSeconds; t > 0 && t <= 86400 {
				affinity = time.Duration(t) * time.Second
			} else {
				report(false, "invalid-affinity-timeout", "sessionAffinity timeoutSeconds %d out of range (1..86400); using %v", t, DefaultAffinityTimeout)
			}
		}
	}

	externalLocal := svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal &&
		(svc.Spec.Type == v1.ServiceTypeNodePort || svc.Spec.Type == v1.ServiceTypeLoadBalancer || len(externalIPs) > 0)
	internalLocal := svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == v1.ServiceInternalTrafficPolicyLocal
	var hcPort uint16
	if externalLocal && svc.Spec.Type == v1.ServiceTypeLoadBalancer && svc.Spec.HealthCheckNodePort > 0 && svc.Spec.HealthCheckNodePort <= 65535 {
		hcPort = uint16(svc.Spec.HealthCheckNodePort)
	}

	seen := map[ServicePortName]bool{}
	var out []*ServicePort
	for _, p := range svc.Spec.Ports {
		proto := Protocol(p.Protocol)
		if proto == "" {
			proto = TCP
		}
		if proto != TCP && proto != UDP && proto != SCTP {
			report(false, "invalid-protocol", "port %q: protocol %q not supported; port skipped", p.Name, p.Protocol)
			continue
		}
		if p.Port <= 0 || p.Port > 65535 {
			report(false, "invalid-port", "port %q: port %d out of range; port skipped", p.Name, p.Port)
			continue
		}
		name := ServicePortName{ServiceName: ServiceName{svc.Namespace, svc.Name}, Port: p.Name, Protocol: proto}
		if seen[name] {
			report(false, "duplicate-port", "port %q/%s listed twice; later entry skipped", p.Name, proto)
			continue
		}
		seen[name] = true
		sp := &ServicePort{
			Name:                     name,
			Port:                     uint16(p.Port),
			ClusterIPs:               clusterIPs,
			ExternalIPs:              externalIPs,
			LoadBalancerIPs:          lbIPs,
			Scheduler:                scheduler,
			SessionAffinityTimeout:   affinity,
			ExternalPolicyLocal:      externalLocal,
			InternalPolicyLocal:      internalLocal,
			HealthCheckNodePort:      hcPort,
			LoadBalancerSourceRanges: sourceRanges,
			Rebalance:                rebalance,
			MaxConnectionsPerBackend: maxConns,
		}
		if svc.Spec.Type == v1.ServiceTypeNodePort || svc.Spec.Type == v1.ServiceTypeLoadBalancer {
			switch {
			case p.NodePort == 0:
				// Not allocated (yet), or allocateLoadBalancerNodePorts=false.
			case p.NodePort < 0 || p.NodePort > 65535:
				report(false, "invalid-node-port", "port %q: nodePort %d out of range; NodePort ignored", p.Name, p.NodePort)
			default:
				sp.NodePort = uint16(p.NodePort)
			}
		}
		out = append(out, sp)
	}
	return out, problems
}

// EndpointsFromSlices merges the EndpointSlices of one Service into
// endpoints per Service port. Slices are processed in name order; an
// endpoint address:port listed by several slices is counted once, the ready
// copy preferred (the EndpointSlice controller can briefly list an endpoint
// twice while moving it between slices). Slices that are not IP-based or lack
// the service-name label contribute nothing.
func EndpointsFromSlices(slicesIn []*discovery.EndpointSlice) (map[ServicePortName][]Endpoint, []Problem) {
	ordered := slices.Clone(slicesIn)
	slices.SortFunc(ordered, func(a, b *discovery.EndpointSlice) int { return strings.Compare(a.Name, b.Name) })
	var problems []Problem
	merged := map[ServicePortName]map[netip.AddrPort]Endpoint{}
	for _, sl := range ordered {
		svcName, ok := sl.Labels[LabelServiceName]
		if !ok || svcName == "" {
			continue
		}
		if sl.AddressType != discovery.AddressTypeIPv4 && sl.AddressType != discovery.AddressTypeIPv6 {
			continue
		}
		obj := "EndpointSlice " + sl.Namespace + "/" + sl.Name
		for _, port := range sl.Ports {
			if port.Port == nil || *port.Port <= 0 || *port.Port > 65535 {
				continue // kube-proxy ignores ports without a number
			}
			proto := TCP
			if port.Protocol != nil {
				proto = Protocol(*port.Protocol)
			}
			name := ""
			if port.Name != nil {
				name = *port.Name
			}
			key := ServicePortName{ServiceName: ServiceName{sl.Namespace, svcName}, Port: name, Protocol: proto}
			for _, ep := range sl.Endpoints {
				if len(ep.Addresses) == 0 {
					continue
				}
				// Like kube-proxy, only the first address is used: the API
				// says the others are duplicates of the same backend.
				a, err := netip.ParseAddr(ep.Addresses[0])
				if err != nil {
					problems = append(problems, Problem{Object: obj, Reason: "invalid-endpoint-ip", Detail: fmt.Sprintf("address %q ignored", ep.Addresses[0])})
					continue
				}
				e := Endpoint{Addr: netip.AddrPortFrom(a.Unmap(), uint16(*port.Port))}
				e.Ready = ep.Conditions.Ready == nil || *ep.Conditions.Ready
				e.Serving = e.Ready
				if ep.Conditions.Serving != nil {
					e.Serving = *ep.Conditions.Serving
				}
				e.Terminating = ep.Conditions.Terminating != nil && *ep.Conditions.Terminating
				if ep.NodeName != nil {
					e.NodeName = *ep.NodeName
				}
				if ep.Zone != nil {
					e.Zone = *ep.Zone
				}
				if ep.Hints != nil {
					for _, z := range ep.Hints.ForZones {
						e.ZoneHints = append(e.ZoneHints, z.Name)
					}
					for _, n := range ep.Hints.ForNodes {
						e.NodeHints = append(e.NodeHints, n.Name)
					}
					slices.Sort(e.ZoneHints)
					slices.Sort(e.NodeHints)
				}
				m := merged[key]
				if m == nil {
					m = map[netip.AddrPort]Endpoint{}
					merged[key] = m
				}
				if prev, dup := m[e.Addr]; dup && (prev.Ready || !e.Ready) {
					continue
				}
				m[e.Addr] = e
			}
		}
	}
	out := make(map[ServicePortName][]Endpoint, len(merged))
	for k, m := range merged {
		eps := make([]Endpoint, 0, len(m))
		for _, e := range m {
			eps = append(eps, e)
		}
		slices.SortFunc(eps, CompareEndpoints)
		out[k] = eps
	}
	return out, problems
}

func parseAddrs(in []string, bad func(string)) []netip.Addr {
	var out []netip.Addr
	for _, s := range in {
		if s == "" || s == v1.ClusterIPNone {
			continue
		}
		a, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil {
			bad(s)
			continue
		}
		out = append(out, a.Unmap())
	}
	return sortUnique(out)
}

func sortUnique(in []netip.Addr) []netip.Addr {
	slices.SortFunc(in, netip.Addr.Compare)
	return slices.Compact(in)
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// unmapPrefix turns an IPv4-mapped IPv6 prefix covering only mapped
// addresses (::ffff:10.0.0.0/104) into the IPv4 prefix it means
// (10.0.0.0/8), as addresses are unmapped everywhere in the model. A
// shorter one also covers real IPv6 addresses and stays as it is.
func unmapPrefix(p netip.Prefix) netip.Prefix {
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p
}

// parseRebalance reads the rebalancer annotations: nil unless
// switchyard.io/rebalance is "true". An invalid knob is reported and
// replaced by its default; an invalid opt-in value leaves the Service
// alone (never rebalance a Service that did not clearly ask).
func parseRebalance(ann map[string]string, report func(fatal bool, reason, format string, args ...any)) *RebalanceSpec {
	v, ok := ann[AnnotationRebalance]
	if !ok {
		return nil
	}
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "true":
	case "false", "":
		return nil
	default:
		report(false, "invalid-rebalance", "annotation %s=%q is not true or false; not rebalancing", AnnotationRebalance, v)
		return nil
	}
	spec := &RebalanceSpec{
		Tolerance:     DefaultRebalanceTolerance,
		MaxResetsPerS: DefaultRebalanceMaxResetsPerSec,
		MinAge:        DefaultRebalanceMinAge,
	}
	if v, ok := ann[AnnotationRebalanceTolerance]; ok {
		if f, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil && f > 0 && f <= 10 {
			spec.Tolerance = f
		} else {
			report(false, "invalid-rebalance-tolerance", "annotation %s=%q is not a number in (0, 10]; using %v", AnnotationRebalanceTolerance, v, DefaultRebalanceTolerance)
		}
	}
	if v, ok := ann[AnnotationRebalanceMaxResets]; ok {
		if f, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil && f > 0 && f <= 100000 {
			spec.MaxResetsPerS = f
		} else {
			report(false, "invalid-rebalance-max-resets", "annotation %s=%q is not a number in (0, 100000]; using %v", AnnotationRebalanceMaxResets, v, DefaultRebalanceMaxResetsPerSec)
		}
	}
	if v, ok := ann[AnnotationRebalanceMinAge]; ok {
		if d, err := time.ParseDuration(strings.TrimSpace(v)); err == nil && d >= 0 && d <= 24*time.Hour {
			spec.MinAge = d
		} else {
			report(false, "invalid-rebalance-min-age", "annotation %s=%q is not a duration in [0, 24h]; using %v", AnnotationRebalanceMinAge, v, DefaultRebalanceMinAge)
		}
	}
	if v, ok := ann[AnnotationRebalanceDryRun]; ok {
		switch strings.ToLower(strings.TrimSpace(v)) {
		case "true":
			spec.DryRun = true
		case "false":
		default:
			// Unclear: the safe reading is a dry run.
			spec.DryRun = true
			report(false, "invalid-rebalance-dry-run", "annotation %s=%q is not true or false; dry run", AnnotationRebalanceDryRun, v)
		}
	}
	return spec
}
