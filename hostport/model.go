package hostport

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/switchyard/switchyard/dataplane"
)

// Mapping is one hostPort of one Pod in one address family: packets to
// HostIP:HostPort/Protocol on this node go to PodIP:ContainerPort.
type Mapping struct {
	Pod types.NamespacedName
	// HostIP is the node address the port is opened on. The zero Addr
	// (hostIP "", "0.0.0.0" or "::") means every local address of PodIP's
	// family except loopback.
	HostIP   netip.Addr
	HostPort uint16
	Protocol dataplane.Protocol
	// PodIP decides the family of the mapping.
	PodIP         netip.Addr
	ContainerPort uint16
}

// IPv6 reports whether the mapping is programmed in the ip6 table.
func (m Mapping) IPv6() bool { return m.PodIP.Is6() }

// Key is what the mapping claims on the node.
func (m Mapping) Key() Key {
	return Key{IPv6: m.IPv6(), HostIP: m.HostIP, HostPort: m.HostPort, Protocol: m.Protocol}
}

// Target is where the mapping sends packets.
func (m Mapping) Target() netip.AddrPort { return netip.AddrPortFrom(m.PodIP, m.ContainerPort) }

// String renders "tcp 0.0.0.0:8080 -> 10.244.1.2:80 (ns/pod)".
func (m Mapping) String() string {
	return fmt.Sprintf("%s -> %s (%s)", m.Key(), m.Target(), m.Pod)
}

// Key identifies what a hostPort claims: a protocol and port on one node
// address, or on all of them (HostIP invalid) in one family.
type Key struct {
	IPv6     bool
	HostIP   netip.Addr // zero: every local address of the family
	HostPort uint16
	Protocol dataplane.Protocol
}

// Wildcard reports whether the key covers every local address of its family.
func (k Key) Wildcard() bool { return !k.HostIP.IsValid() }

// Overlaps reports whether a packet could match both keys: same family,
// protocol and port, and the same address or a wildcard on either side.
func (k Key) Overlaps(o Key) bool {
	return k.IPv6 == o.IPv6 && k.Protocol == o.Protocol && k.HostPort == o.HostPort &&
		(k.Wildcard() || o.Wildcard() || k.HostIP == o.HostIP)
}

// String renders "tcp 0.0.0.0:8080", "udp [::]:53" or "tcp 192.0.2.1:80";
// the unspecified address stands for the wildcard of its family.
func (k Key) String() string {
	ip := k.HostIP
	if !ip.IsValid() {
		ip = netip.IPv4Unspecified()
		if k.IPv6 {
			ip = netip.IPv6Unspecified()
		}
	}
	return strings.ToLower(string(k.Protocol)) + " " + netip.AddrPortFrom(ip, k.HostPort).String()
}

func compareKeys(a, b Key) int {
	return cmp.Or(
		compareBool(a.IPv6, b.IPv6),
		strings.Compare(string(a.Protocol), string(b.Protocol)),
		cmp.Compare(a.HostPort, b.HostPort),
		a.HostIP.Compare(b.HostIP), // the wildcard (zero Addr) first
	)
}

func compareBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case !a:
		return -1
	}
	return 1
}

func comparePods(a, b types.NamespacedName) int {
	return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
}

// CompareMappings orders mappings by family (IPv4 first), protocol, host
// port, host IP (wildcard first), then pod.
func CompareMappings(a, b Mapping) int {
	return cmp.Or(compareKeys(a.Key(), b.Key()), comparePods(a.Pod, b.Pod),
		a.PodIP.Compare(b.PodIP), cmp.Compare(a.ContainerPort, b.ContainerPort))
}

// Conflict is a hostPort that lost to another one claiming an overlapping
// Key on this node. Winner's Key may differ from Loser's (one is a
// wildcard); Winner and Loser may even be the same Pod (two containers
// declaring the same hostPort).
type Conflict struct {
	Winner, Loser Mapping
}

func (c Conflict) String() string {
	return fmt.Sprintf("%s claimed by %s loses to %s claimed by %s", c.Loser.Key(), c.Loser.Pod, c.Winner.Key(), c.Winner.Pod)
}

// Reasons of an InvalidPort: short, stable tokens meant as metric labels.
const (
	// ReasonInvalidHostIP: hostIP is not an IP address (or has a zone).
	ReasonInvalidHostIP = "invalid-host-ip"
	// ReasonUnsupportedHostIP: hostIP is a loopback or multicast address.
	// Loopback destinations would need route_localnet and masquerading;
	// like the default CNI portmap setup, hostPorts are not offered on
	// loopback.
	ReasonUnsupportedHostIP = "unsupported-host-ip"
	// ReasonInvalidPort: hostPort or containerPort outside 1..65535.
	ReasonInvalidPort = "invalid-port"
	// ReasonInvalidProtocol: not TCP, UDP or SCTP.
	ReasonInvalidProtocol = "invalid-protocol"
	// ReasonNoPodIPOfFamily: hostIP is of a family the Pod has no address
	// of; the port is not mapped (CNI portmap skips it silently).
	ReasonNoPodIPOfFamily = "no-pod-ip-of-host-ip-family"
	// ReasonInvalidPodIP: an entry of status.podIPs is not an IP address.
	ReasonInvalidPodIP = "invalid-pod-ip"
)

// InvalidPort is a Pod's port (or Pod IP) that Desired ignored.
type InvalidPort struct {
	Pod       types.NamespacedName
	Container string // "" for a Pod-level problem (ReasonInvalidPodIP)
	Reason    string
	Detail    string
}

func (p InvalidPort) String() string {
	where := p.Pod.String()
	if p.Container != "" {
		where += " container " + p.Container
	}
	return fmt.Sprintf("%s: %s: %s", where, p.Reason, p.Detail)
}

// Desired returns the hostPort mappings this node must program for pods,
// the claims that lost to an overlapping earlier one, and the ports that
// could not be used. Output is deterministic: mappings sorted by
// CompareMappings, conflicts by the loser's mapping, invalid ports by Pod.
//
// A Pod counts when it is scheduled to nodeName, not on the host network
// (its ports are the node's own), not in a terminal phase (Succeeded,
// Failed), and has an IP. Every container port with a non-zero hostPort
// counts (regular containers only, as the kubelet hands them to the CNI
// portmap plugin). Per family, following CNI portmap:
//   - hostIP "" maps on every local address, in every family the Pod has
//     an IP of (one Mapping per family);
//   - hostIP "0.0.0.0" maps on every local IPv4 address, "::" on every
//     local IPv6 address (IPv4 or IPv6 only);
//   - any other hostIP maps on that address only, in its family.
//
// Conflicts: Pods are taken in creation order (then namespace/name), each
// Pod's containers and ports in spec order; a mapping whose Key overlaps
// one already taken loses. A wildcard and a specific address of the same
// family, protocol and port overlap.
func Desired(pods []*v1.Pod, nodeName string) (mappings []Mapping, conflicts []Conflict, invalid []InvalidPort) {
	var eligible []*v1.Pod
	for _, pod := range pods {
		if pod == nil || pod.Spec.NodeName != nodeName || pod.Spec.HostNetwork ||
			pod.Status.Phase == v1.PodSucceeded || pod.Status.Phase == v1.PodFailed || !hasHostPort(pod) {
			continue
		}
		eligible = append(eligible, pod)
	}
	slices.SortStableFunc(eligible, func(a, b *v1.Pod) int {
		return cmp.Or(a.CreationTimestamp.Time.Compare(b.CreationTimestamp.Time),
			comparePods(podName(a), podName(b)))
	})

	// Taken mappings by (family, protocol, port): the only ones a new
	// mapping can overlap.
	type slot struct {
		ipv6  bool
		proto dataplane.Protocol
		port  uint16
	}
	taken := map[slot][]Mapping{}
	for _, pod := range eligible {
		name := podName(pod)
		ips, bad := podIPs(pod)
		for _, s := range bad {
			invalid = append(invalid, InvalidPort{Pod: name, Reason: ReasonInvalidPodIP, Detail: fmt.Sprintf("pod IP %q is not an IP address", s)})
		}
		if len(ips) == 0 {
			continue
		}
		for _, c := range pod.Spec.Containers {
			for _, port := range c.Ports {
				if port.HostPort == 0 {
					continue
				}
				cands, reason, detail := portMappings(name, ips, port)
				if reason != "" {
					invalid = append(invalid, InvalidPort{Pod: name, Container: c.Name, Reason: reason, Detail: detail})
					continue
				}
			next:
				for _, m := range cands {
					s := slot{m.IPv6(), m.Protocol, m.HostPort}
					for _, t := range taken[s] {
						if t == m {
							continue next // the same port declared twice
						}
						if t.Key().Overlaps(m.Key()) {
							conflicts = append(conflicts, Conflict{Winner: t, Loser: m})
							continue next
						}
					}
					taken[s] = append(taken[s], m)
					mappings = append(mappings, m)
				}
			}
		}
	}
	slices.SortFunc(mappings, CompareMappings)
	slices.SortStableFunc(conflicts, func(a, b Conflict) int { return CompareMappings(a.Loser, b.Loser) })
	slices.SortStableFunc(invalid, func(a, b InvalidPort) int { return comparePods(a.Pod, b.Pod) })
	return mappings, conflicts, invalid
}

func podName(p *v1.Pod) types.NamespacedName {
	return types.NamespacedName{Namespace: p.Namespace, Name: p.Name}
}

// hasHostPort reports whether any container port of pod has a hostPort.
func hasHostPort(pod *v1.Pod) bool {
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			if p.HostPort != 0 {
				return true
			}
		}
	}
	return false
}

// podIPs returns the Pod's first IPv4 and first IPv6 address (at most one
// each, IPv4 first) from status.podIPs, or status.podIP when podIPs is
// empty, and the entries that do not parse.
func podIPs(pod *v1.Pod) (ips []netip.Addr, bad []string) {
	var raw []string
	for _, ip := range pod.Status.PodIPs {
		raw = append(raw, ip.IP)
	}
	if len(raw) == 0 && pod.Status.PodIP != "" {
		raw = []string{pod.Status.PodIP}
	}
	var v4, v6 netip.Addr
	for _, s := range raw {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			bad = append(bad, s)
			continue
		}
		a = a.Unmap()
		switch {
		case a.Is4() && !v4.IsValid():
			v4 = a
		case a.Is6() && !v6.IsValid():
			v6 = a
		}
	}
	for _, a := range []netip.Addr{v4, v6} {
		if a.IsValid() {
			ips = append(ips, a)
		}
	}
	return ips, bad
}

// portMappings turns one container port (with a hostPort) into one mapping
// per family it applies to, or the reason (an InvalidPort reason) and
// detail of why it cannot be mapped.
func portMappings(pod types.NamespacedName, ips []netip.Addr, p v1.ContainerPort) (_ []Mapping, reason, detail string) {
	proto := dataplane.Protocol(p.Protocol)
	switch proto {
	case "":
		proto = dataplane.TCP
	case dataplane.TCP, dataplane.UDP, dataplane.SCTP:
	default:
		return nil, ReasonInvalidProtocol, fmt.Sprintf("protocol %q", p.Protocol)
	}
	if p.HostPort < 1 || p.HostPort > 65535 || p.ContainerPort < 1 || p.ContainerPort > 65535 {
		return nil, ReasonInvalidPort, fmt.Sprintf("hostPort %d, containerPort %d", p.HostPort, p.ContainerPort)
	}
	// Which families, and on which address.
	var hostIP netip.Addr
	v4, v6 := true, true
	if p.HostIP != "" {
		a, err := netip.ParseAddr(p.HostIP)
		if err != nil || a.Zone() != "" {
			return nil, ReasonInvalidHostIP, fmt.Sprintf("hostIP %q is not an IP address", p.HostIP)
		}
		a = a.Unmap()
		if a.IsLoopback() || a.IsMulticast() {
			return nil, ReasonUnsupportedHostIP, fmt.Sprintf("hostIP %s: hostPorts are not offered on loopback or multicast addresses", a)
		}
		v4, v6 = a.Is4(), a.Is6()
		if !a.IsUnspecified() {
			hostIP = a
		}
	}
	var out []Mapping
	for _, ip := range ips {
		if (ip.Is4() && v4) || (ip.Is6() && v6) {
			out = append(out, Mapping{Pod: pod, HostIP: hostIP, HostPort: uint16(p.HostPort), Protocol: proto,
				PodIP: ip, ContainerPort: uint16(p.ContainerPort)})
		}
	}
	if len(out) == 0 {
		return nil, ReasonNoPodIPOfFamily, fmt.Sprintf("hostIP %s, pod IPs %v", p.HostIP, ips)
	}
	return out, "", ""
}

// Collision is a hostPort on a port a Service also uses on every node
// address: its NodePort, or its healthCheckNodePort (TCP, served by the
// agent itself). The hostPort wins on this node: its DNAT runs first.
type Collision struct {
	Mapping Mapping
	Service dataplane.ServicePortName
	// HealthCheck: the port is the Service's healthCheckNodePort, not its
	// NodePort.
	HealthCheck bool
}

func (c Collision) String() string {
	what := "NodePort"
	if c.HealthCheck {
		what = "healthCheckNodePort"
	}
	return fmt.Sprintf("hostPort %s of %s is the %s of Service %s", c.Mapping.Key(), c.Mapping.Pod, what, c.Service)
}

// NodePortCollisions returns the mappings whose protocol and host port equal
// a NodePort (or healthCheckNodePort) of a Service in st, sorted by mapping
// then Service. A NodePort is open on every node address of both families,
// so the mapping's address and family do not matter.
func NodePortCollisions(mappings []Mapping, st *dataplane.State) []Collision {
	if len(mappings) == 0 || st == nil {
		return nil
	}
	type slot struct {
		proto dataplane.Protocol
		port  uint16
	}
	wanted := map[slot]bool{}
	for _, m := range mappings {
		wanted[slot{m.Protocol, m.HostPort}] = true
	}
	type hit struct {
		svc         dataplane.ServicePortName
		healthCheck bool
	}
	hits := map[slot][]hit{}
	for name, sp := range st.Services {
		if sp == nil {
			continue
		}
		if s := (slot{name.Protocol, sp.NodePort}); sp.NodePort != 0 && wanted[s] {
			hits[s] = append(hits[s], hit{svc: name})
		}
		if s := (slot{dataplane.TCP, sp.HealthCheckNodePort}); sp.HealthCheckNodePort != 0 && wanted[s] {
			hits[s] = append(hits[s], hit{svc: name, healthCheck: true})
		}
	}
	var out []Collision
	for _, m := range mappings {
		for _, h := range hits[slot{m.Protocol, m.HostPort}] {
			out = append(out, Collision{Mapping: m, Service: h.svc, HealthCheck: h.healthCheck})
		}
	}
	slices.SortFunc(out, func(a, b Collision) int {
		return cmp.Or(CompareMappings(a.Mapping, b.Mapping), a.Service.Compare(b.Service), compareBool(a.HealthCheck, b.HealthCheck))
	})
	return out
}
