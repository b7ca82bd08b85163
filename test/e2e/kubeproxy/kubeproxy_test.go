package kubeproxy_test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/switchyard/switchyard/test/cluster/controlplane"
	"github.com/switchyard/switchyard/test/e2e/kubeproxy"
	"github.com/switchyard/switchyard/test/netnstest"
)

// TestKubeProxyNFTables runs upstream kube-proxy in nftables mode in a
// network namespace of its own against the test control plane and checks
// that it syncs: healthy, and a Service with an endpoint created afterwards
// shows up in its nftables ruleset.
func TestKubeProxyNFTables(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("kube-proxy's nftables mode runs nft: install Debian's nftables (scripts/ensure-deps.sh e2e)")
	}
	cp := controlplane.StartT(t, controlplane.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := cp.CreateNode(ctx, "kp-node", "10.200.0.1"); err != nil {
		t.Fatal(err)
	}
	ns := netnstest.New(t, "kp")
	p := kubeproxy.Start(t, cp, ns, kubeproxy.Options{Hostname: "kp-node"})
	// Healthy once the first sync of each family is done.
	p.WaitHealthy(t, 60*time.Second)
	t.Logf("kube-proxy healthy after %s", time.Since(p.Started).Round(time.Millisecond))

	admin, err := cp.Client()
	if err != nil {
		t.Fatal(err)
	}
	svc, err := admin.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{
			Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP,
		}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.DiscoveryV1().EndpointSlices("default").Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "web-1", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{
			Addresses:  []string{"10.244.1.7"},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
		}},
		Ports: []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(int32(8080)), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	created := time.Now()
	var ruleset string
	for deadline := time.Now().Add(30 * time.Second); ; {
		ruleset, err = p.Ruleset()
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(ruleset, svc.Spec.ClusterIP+" . tcp . 80") && strings.Contains(ruleset, "10.244.1.7") {
			t.Logf("service %s and its endpoint in kube-proxy's ruleset %s after creation (%d lines)",
				svc.Spec.ClusterIP, time.Since(created).Round(time.Millisecond), strings.Count(ruleset, "\n"))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("service %s or endpoint 10.244.1.7 not in kube-proxy's ruleset after 30s:\n%s", svc.Spec.ClusterIP, ruleset)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.Contains(ruleset, "table ip kube-proxy") {
		t.Errorf("no table ip kube-proxy in:\n%s", ruleset)
	}
}
