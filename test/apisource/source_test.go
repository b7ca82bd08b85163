package apisource

import (
	"context"
	"net/netip"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/switchyard/switchyard/test/agentspec"
)

func TestSourceAppliesAndRemovesTheScenarioObjects(t *testing.T) {
	client := fake.NewClientset()
	s := New(client, "--kubeconfig", "/k")
	ctx := context.Background()
	be := func(id, addr string) agentspec.Backend {
		return agentspec.Backend{ID: id, Addr: netip.MustParseAddr(addr)}
	}
	web := agentspec.Service{Name: "web", ClusterIP: netip.MustParseAddr("10.96.0.70"), Port: 80, NodePort: 30080,
		LoadBalancerIP: netip.MustParseAddr("198.51.100.7"), Backends: []agentspec.Backend{be("be0", "10.244.0.2"), be("be1", "10.244.1.2")}}
	s.Write(t, "web.yaml", web.YAML())

	svc, err := client.CoreV1().Services(agentspec.Namespace).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if svc.Spec.ClusterIP != "10.96.0.70" || svc.Spec.Ports[0].NodePort != 30080 || len(svc.Status.LoadBalancer.Ingress) != 1 || svc.Status.LoadBalancer.Ingress[0].IP != "198.51.100.7" {
		t.Errorf("Service as applied: %+v", svc)
	}
	sl, err := client.DiscoveryV1().EndpointSlices(agentspec.Namespace).Get(ctx, "web-1", metav1.GetOptions{})
	if err != nil || len(sl.Endpoints) != 2 {
		t.Fatalf("EndpointSlice: %v, %+v", err, sl)
	}
	if _, err := client.CoreV1().Namespaces().Get(ctx, agentspec.Namespace, metav1.GetOptions{}); err != nil {
		t.Errorf("namespace not created: %v", err)
	}

	// An update: one backend left.
	web.Backends = web.Backends[:1]
	s.Write(t, "web.yaml", web.YAML())
	if sl, _ = client.DiscoveryV1().EndpointSlices(agentspec.Namespace).Get(ctx, "web-1", metav1.GetOptions{}); len(sl.Endpoints) != 1 {
		t.Errorf("EndpointSlice after the update: %+v", sl.Endpoints)
	}

	// A Pod with its status (no kubelet sets it).
	s.Write(t, "pod.yaml", agentspec.HostPod("hp", "node-a", be("be2", "10.244.2.2"), 30080, time.Now()))
	pod, err := client.CoreV1().Pods(agentspec.Namespace).Get(ctx, "hp", metav1.GetOptions{})
	if err != nil || pod.Status.PodIP != "10.244.2.2" || pod.Spec.NodeName != "node-a" {
		t.Fatalf("Pod: %v, %+v", err, pod)
	}
	// The Pod moves: its status follows.
	s.Write(t, "pod.yaml", agentspec.HostPod("hp", "node-a", be("be3", "10.244.3.2"), 30080, time.Now()))
	if pod, _ = client.CoreV1().Pods(agentspec.Namespace).Get(ctx, "hp", metav1.GetOptions{}); pod.Status.PodIP != "10.244.3.2" {
		t.Errorf("Pod after the move: %+v", pod.Status)
	}

	// Content without the slice deletes it; Remove deletes the rest.
	s.Write(t, "web.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: "+agentspec.Namespace+"}\nspec: {clusterIP: 10.96.0.70, ports: [{port: 80}]}\n")
	if _, err := client.DiscoveryV1().EndpointSlices(agentspec.Namespace).Get(ctx, "web-1", metav1.GetOptions{}); err == nil {
		t.Error("the EndpointSlice no longer written is still there")
	}
	s.Remove(t, "web.yaml")
	s.Remove(t, "pod.yaml")
	if l, _ := client.CoreV1().Services(agentspec.Namespace).List(ctx, metav1.ListOptions{}); len(l.Items) != 0 {
		t.Errorf("Services left: %d", len(l.Items))
	}
	if l, _ := client.CoreV1().Pods(agentspec.Namespace).List(ctx, metav1.ListOptions{}); len(l.Items) != 0 {
		t.Errorf("Pods left: %d", len(l.Items))
	}
	if got := s.Args(); len(got) != 2 || got[1] != "/k" {
		t.Errorf("Args %v", got)
	}
}

func TestDecodeRejectsBrokenDocuments(t *testing.T) {
	if _, err := Decode("kind: Service\nmetadata: {name: [oops\n"); err == nil {
		t.Error("a broken document decoded")
	}
	objs, err := Decode("---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n")
	if err != nil || len(objs) != 1 {
		t.Errorf("Decode: %v, %d objects", err, len(objs))
	}
}
