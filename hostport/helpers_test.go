package hostport

import (
	"net/netip"
	"os"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/switchyard/switchyard/dataplane"
)

const testNode = "node-a"

// epoch is the creation time of test Pods; age n means epoch + n seconds.
var epoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// podOpt modifies a test Pod.
type podOpt func(*v1.Pod)

// newPod returns a running Pod on testNode named "ns/name" with the IPs and
// options; ports are added with port().
func newPod(nsName string, ips []string, opts ...podOpt) *v1.Pod {
	ns, name := "default", nsName
	for i := range nsName {
		if nsName[i] == '/' {
			ns, name = nsName[:i], nsName[i+1:]
		}
	}
	p := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, CreationTimestamp: metav1.NewTime(epoch)},
		Spec:       v1.PodSpec{NodeName: testNode},
		Status:     v1.PodStatus{Phase: v1.PodRunning},
	}
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, v1.PodIP{IP: ip})
	}
	if len(ips) > 0 {
		p.Status.PodIP = ips[0]
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

// port adds a container port to the container named c (created on first
// use).
func port(c string, proto v1.Protocol, hostIP string, hostPort, containerPort int32) podOpt {
	return func(p *v1.Pod) {
		cp := v1.ContainerPort{Protocol: proto, HostIP: hostIP, HostPort: hostPort, ContainerPort: containerPort}
		for i := range p.Spec.Containers {
			if p.Spec.Containers[i].Name == c {
				p.Spec.Containers[i].Ports = append(p.Spec.Containers[i].Ports, cp)
				return
			}
		}
		p.Spec.Containers = append(p.Spec.Containers, v1.Container{Name: c, Ports: []v1.ContainerPort{cp}})
	}
}

func age(seconds int) podOpt {
	return func(p *v1.Pod) { p.CreationTimestamp = metav1.NewTime(epoch.Add(time.Duration(seconds) * time.Second)) }
}

func phase(ph v1.PodPhase) podOpt { return func(p *v1.Pod) { p.Status.Phase = ph } }

func onNode(n string) podOpt { return func(p *v1.Pod) { p.Spec.NodeName = n } }

func nn(s string) types.NamespacedName {
	for i := range s {
		if s[i] == '/' {
			return types.NamespacedName{Namespace: s[:i], Name: s[i+1:]}
		}
	}
	return types.NamespacedName{Namespace: "default", Name: s}
}

// mp builds a Mapping: hostIP "" is the wildcard.
func mp(pod string, proto dataplane.Protocol, hostIP string, hostPort uint16, podIP string, containerPort uint16) Mapping {
	m := Mapping{Pod: nn(pod), HostPort: hostPort, Protocol: proto, PodIP: netip.MustParseAddr(podIP), ContainerPort: containerPort}
	if hostIP != "" {
		m.HostIP = netip.MustParseAddr(hostIP)
	}
	return m
}

// requireKernel skips real-kernel tests where they cannot run. They program
// network namespaces they create, never the root namespace.
func requireKernel(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("real-kernel test skipped in -short mode")
	}
	if os.Geteuid() != 0 {
		t.Skip("real-kernel test needs root (network namespaces, nftables)")
	}
}
