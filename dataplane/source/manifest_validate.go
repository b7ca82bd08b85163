package source

import (
	"fmt"
	"net/netip"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/switchyard/switchyard/dataplane"
)

// The API server's own validation (k8s.io/kubernetes/pkg/apis/core/validation)
// is not importable as a library, so these checks re-implement the subset
// that matters to a proxy, using apimachinery's helpers for names, labels
// and port numbers. Nothing here needs a cluster: there is no API server in
// standalone mode to allocate or default anything.

// validateObject returns a reason token and the field errors of obj, or
// ("", nil) when obj is usable.
func validateObject(obj runtime.Object) (string, error) {
	var errs field.ErrorList
	reason := ReasonInvalidObject
	switch o := obj.(type) {
	case *v1.Service:
		errs = validateService(o)
	case *discovery.EndpointSlice:
		errs = validateEndpointSlice(o)
		if _, ok := o.Labels[dataplane.LabelServiceName]; !ok || o.Labels[dataplane.LabelServiceName] == "" {
			if len(errs) == 0 {
				reason = ReasonMissingServiceName
			}
			errs = append(errs, field.Required(field.NewPath("metadata", "labels").Key(dataplane.LabelServiceName),
				"the slice must name its Service"))
		}
	case *v1.Node:
		errs = apivalidation.ValidateObjectMeta(&o.ObjectMeta, false, apivalidation.NameIsDNSSubdomain, field.NewPath("metadata"))
	case *v1.Pod:
		errs = validatePod(o)
	default:
		return ReasonDecodeError, fmt.Errorf("unsupported object type %T", obj)
	}
	if len(errs) == 0 {
		return "", nil
	}
	return reason, errs.ToAggregate()
}

func protocols() []v1.Protocol {
	return []v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP, v1.ProtocolSCTP}
}

func validateService(svc *v1.Service) field.ErrorList {
	errs := apivalidation.ValidateObjectMeta(&svc.ObjectMeta, true, apivalidation.NameIsDNS1035Label, field.NewPath("metadata"))
	spec := field.NewPath("spec")
	errs = append(errs, oneOf(spec.Child("type"), svc.Spec.Type,
		[]v1.ServiceType{v1.ServiceTypeClusterIP, v1.ServiceTypeNodePort, v1.ServiceTypeLoadBalancer, v1.ServiceTypeExternalName})...)
	errs = append(errs, oneOf(spec.Child("sessionAffinity"), svc.Spec.SessionAffinity,
		[]v1.ServiceAffinity{v1.ServiceAffinityNone, v1.ServiceAffinityClientIP})...)
	errs = append(errs, oneOf(spec.Child("externalTrafficPolicy"), svc.Spec.ExternalTrafficPolicy,
		[]v1.ServiceExternalTrafficPolicy{v1.ServiceExternalTrafficPolicyCluster, v1.ServiceExternalTrafficPolicyLocal})...)
	if p := svc.Spec.InternalTrafficPolicy; p != nil {
		errs = append(errs, oneOf(spec.Child("internalTrafficPolicy"), *p,
			[]v1.ServiceInternalTrafficPolicy{v1.ServiceInternalTrafficPolicyCluster, v1.ServiceInternalTrafficPolicyLocal})...)
	}
	if svc.Spec.Type == v1.ServiceTypeExternalName {
		return errs // never proxied; the tracker skips it
	}

	headless := svc.Spec.ClusterIP == v1.ClusterIPNone
	switch {
	case svc.Spec.ClusterIP == "":
		errs = append(errs, field.Required(spec.Child("clusterIP"), "standalone mode has no IP allocator; set the cluster IP (or None)"))
	case !headless:
		errs = append(errs, validIP(spec.Child("clusterIP"), svc.Spec.ClusterIP)...)
	}
	if n := len(svc.Spec.ClusterIPs); n > 2 {
		errs = append(errs, field.TooMany(spec.Child("clusterIPs"), n, 2))
	}
	for i, ip := range svc.Spec.ClusterIPs {
		p := spec.Child("clusterIPs").Index(i)
		switch {
		case i == 0 && ip != svc.Spec.ClusterIP:
			errs = append(errs, field.Invalid(p, ip, "must match spec.clusterIP"))
		case ip != v1.ClusterIPNone || i > 0:
			errs = append(errs, validIP(p, ip)...)
		}
	}
	for i, ip := range svc.Spec.ExternalIPs {
		errs = append(errs, validIP(spec.Child("externalIPs").Index(i), ip)...)
	}
	for i, ing := range svc.Status.LoadBalancer.Ingress {
		if ing.IP != "" {
			errs = append(errs, validIP(field.NewPath("status", "loadBalancer", "ingress").Index(i).Child("ip"), ing.IP)...)
		}
	}

	if len(svc.Spec.Ports) == 0 && !headless {
		errs = append(errs, field.Required(spec.Child("ports"), ""))
	}
	nodePorts := svc.Spec.Type == v1.ServiceTypeNodePort || svc.Spec.Type == v1.ServiceTypeLoadBalancer
	names := map[string]bool{}
	portProtos := map[v1.ServicePort]bool{}
	for i, port := range svc.Spec.Ports {
		p := spec.Child("ports").Index(i)
		if len(svc.Spec.Ports) > 1 && port.Name == "" {
			errs = append(errs, field.Required(p.Child("name"), "required when the Service has several ports"))
		}
		if port.Name != "" {
			errs = append(errs, dnsLabel(p.Child("name"), port.Name)...)
			if names[port.Name] {
				errs = append(errs, field.Duplicate(p.Child("name"), port.Name))
			}
			names[port.Name] = true
		}
		errs = append(errs, portNum(p.Child("port"), port.Port)...)
		proto := port.Protocol
		if proto == "" {
			proto = v1.ProtocolTCP
		}
		errs = append(errs, oneOf(p.Child("protocol"), port.Protocol, protocols())...)
		pp := v1.ServicePort{Port: port.Port, Protocol: proto}
		if portProtos[pp] {
			errs = append(errs, field.Duplicate(p, fmt.Sprintf("%d/%s", port.Port, proto)))
		}
		portProtos[pp] = true
		errs = append(errs, targetPort(p.Child("targetPort"), port.TargetPort)...)
		if port.NodePort != 0 {
			if !nodePorts {
				errs = append(errs, field.Forbidden(p.Child("nodePort"), "only for type NodePort or LoadBalancer"))
			}
			errs = append(errs, portNum(p.Child("nodePort"), port.NodePort)...)
		}
	}
	return errs
}

func validateEndpointSlice(sl *discovery.EndpointSlice) field.ErrorList {
	errs := apivalidation.ValidateObjectMeta(&sl.ObjectMeta, true, apivalidation.NameIsDNSSubdomain, field.NewPath("metadata"))
	if sl.AddressType == "" {
		errs = append(errs, field.Required(field.NewPath("addressType"), ""))
	} else {
		errs = append(errs, oneOf(field.NewPath("addressType"), sl.AddressType,
			[]discovery.AddressType{discovery.AddressTypeIPv4, discovery.AddressTypeIPv6, discovery.AddressTypeFQDN})...)
	}
	for i, ep := range sl.Endpoints {
		p := field.NewPath("endpoints").Index(i).Child("addresses")
		if len(ep.Addresses) == 0 {
			errs = append(errs, field.Required(p, "at least one address"))
		}
		for j, a := range ep.Addresses {
			errs = append(errs, endpointAddress(p.Index(j), a, sl.AddressType)...)
		}
	}
	names := map[string]bool{}
	for i, port := range sl.Ports {
		p := field.NewPath("ports").Index(i)
		name := ""
		if port.Name != nil {
			name = *port.Name
		}
		if name != "" {
			errs = append(errs, dnsLabel(p.Child("name"), name)...)
		}
		if names[name] {
			errs = append(errs, field.Duplicate(p.Child("name"), name))
		}
		names[name] = true
		if port.Port != nil {
			errs = append(errs, portNum(p.Child("port"), *port.Port)...)
		}
		if port.Protocol != nil {
			errs = append(errs, oneOf(p.Child("protocol"), *port.Protocol, protocols())...)
		}
	}
	return errs
}

// validatePod checks what a host port mapping would use.
func validatePod(pod *v1.Pod) field.ErrorList {
	errs := apivalidation.ValidateObjectMeta(&pod.ObjectMeta, true, apivalidation.NameIsDNSSubdomain, field.NewPath("metadata"))
	for i, c := range pod.Spec.Containers {
		for j, port := range c.Ports {
			p := field.NewPath("spec", "containers").Index(i).Child("ports").Index(j)
			errs = append(errs, portNum(p.Child("containerPort"), port.ContainerPort)...)
			if port.HostPort != 0 {
				errs = append(errs, portNum(p.Child("hostPort"), port.HostPort)...)
			}
			errs = append(errs, oneOf(p.Child("protocol"), port.Protocol, protocols())...)
			if port.HostIP != "" {
				errs = append(errs, validIP(p.Child("hostIP"), port.HostIP)...)
			}
		}
	}
	return errs
}

// oneOf accepts the empty value (the API default applies) or one of valid.
func oneOf[T ~string](p *field.Path, v T, valid []T) field.ErrorList {
	if v == "" {
		return nil
	}
	for _, ok := range valid {
		if v == ok {
			return nil
		}
	}
	strs := make([]string, len(valid))
	for i, s := range valid {
		strs[i] = string(s)
	}
	return field.ErrorList{field.NotSupported(p, v, strs)}
}

func portNum(p *field.Path, port int32) field.ErrorList {
	var errs field.ErrorList
	for _, msg := range validation.IsValidPortNum(int(port)) {
		errs = append(errs, field.Invalid(p, port, msg))
	}
	return errs
}

// targetPort accepts 0 (defaults to the port), a port number or an IANA
// port name (a named container port).
func targetPort(p *field.Path, tp intstr.IntOrString) field.ErrorList {
	if tp.Type == intstr.String {
		var errs field.ErrorList
		for _, msg := range validation.IsValidPortName(tp.StrVal) {
			errs = append(errs, field.Invalid(p, tp.StrVal, msg))
		}
		return errs
	}
	if tp.IntVal == 0 {
		return nil
	}
	return portNum(p, tp.IntVal)
}

func dnsLabel(p *field.Path, s string) field.ErrorList {
	var errs field.ErrorList
	for _, msg := range validation.IsDNS1123Label(s) {
		errs = append(errs, field.Invalid(p, s, msg))
	}
	return errs
}

func validIP(p *field.Path, s string) field.ErrorList {
	if _, err := netip.ParseAddr(s); err != nil {
		return field.ErrorList{field.Invalid(p, s, "must be a valid IP address")}
	}
	return nil
}

func endpointAddress(p *field.Path, s string, t discovery.AddressType) field.ErrorList {
	switch t {
	case discovery.AddressTypeIPv4, discovery.AddressTypeIPv6:
		a, err := netip.ParseAddr(s)
		if err != nil {
			return field.ErrorList{field.Invalid(p, s, "must be a valid IP address")}
		}
		if a.Is4() != (t == discovery.AddressTypeIPv4) {
			return field.ErrorList{field.Invalid(p, s, "must be an "+string(t)+" address")}
		}
	case discovery.AddressTypeFQDN:
		return validation.IsFullyQualifiedDomainName(p, s)
	}
	return nil
}
