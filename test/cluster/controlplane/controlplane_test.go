package controlplane_test

import (
	"context"
	"os"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/switchyard/switchyard/test/cluster/controlplane"
)

// rbacManifest is the agent's RBAC in the main repository.
const rbacManifest = "../../../deploy/rbac.yaml"

// TestControlPlane starts a control plane, writes a Namespace, a Service
// and an EndpointSlice as the admin and reads them back, then applies
// deploy/rbac.yaml and checks, with a minted token for the switchyard
// ServiceAccount, that the agent's rights are exactly what it needs: list
// and watch Services and EndpointSlices, but no Service writes.
func TestControlPlane(t *testing.T) {
	cp := controlplane.StartT(t, controlplane.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin, err := cp.Client()
	if err != nil {
		t.Fatal(err)
	}

	// The admin kubeconfig file works as a client would load it.
	cfg, err := clientcmd.BuildConfigFromFlags("", cp.Kubeconfig)
	if err != nil {
		t.Fatalf("load %s: %v", cp.Kubeconfig, err)
	}
	if v, err := kubernetes.NewForConfigOrDie(cfg).Discovery().ServerVersion(); err != nil {
		t.Fatalf("server version via kubeconfig: %v", err)
	} else {
		t.Logf("server %s", v.GitVersion)
	}

	node, err := cp.CreateNode(ctx, "node-a", "10.200.0.2")
	if err != nil {
		t.Fatal(err)
	}
	if got := node.Status.Addresses; len(got) == 0 || got[0].Type != corev1.NodeInternalIP || got[0].Address != "10.200.0.2" {
		t.Errorf("node addresses = %v, want InternalIP 10.200.0.2 first", got)
	}
	if len(node.Spec.Taints) != 0 {
		t.Errorf("node taints = %v, want none", node.Spec.Taints)
	}

	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "smoke"}}
	if _, err := admin.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "smoke"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{
			Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP,
		}}},
	}
	createdSvc, err := admin.CoreV1().Services("smoke").Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name: "web-1", Namespace: "smoke",
			Labels: map[string]string{discoveryv1.LabelServiceName: "web"},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{
			Addresses:  []string{"10.244.0.5"},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
			NodeName:   ptr.To("node-a"),
		}},
		Ports: []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(int32(8080)), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	if _, err := admin.DiscoveryV1().EndpointSlices("smoke").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	gotSvc, err := admin.CoreV1().Services("smoke").Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if gotSvc.Spec.ClusterIP == "" || gotSvc.Spec.ClusterIP != createdSvc.Spec.ClusterIP || gotSvc.Spec.Ports[0].Port != 80 {
		t.Errorf("service read back: clusterIP %q (created %q), ports %v", gotSvc.Spec.ClusterIP, createdSvc.Spec.ClusterIP, gotSvc.Spec.Ports)
	}
	t.Logf("service smoke/web has cluster IP %s", gotSvc.Spec.ClusterIP)
	gotSlice, err := admin.DiscoveryV1().EndpointSlices("smoke").Get(ctx, "web-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(gotSlice.Endpoints) != 1 || gotSlice.Endpoints[0].Addresses[0] != "10.244.0.5" || *gotSlice.Ports[0].Port != 8080 {
		t.Errorf("endpointslice read back: %+v %+v", gotSlice.Endpoints, gotSlice.Ports)
	}

	// The agent's identity, from the repository's own RBAC manifest.
	manifest, err := os.ReadFile(rbacManifest)
	if err != nil {
		t.Fatal(err)
	}
	if err := controlplane.WaitNamespace(ctx, admin, "kube-system"); err != nil {
		t.Fatal(err)
	}
	applied, err := cp.Apply(ctx, manifest)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range applied {
		t.Logf("applied %s %s", o.GetKind(), o.GetName())
	}
	token, err := cp.ServiceAccountToken(ctx, "kube-system", "switchyard", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	agent, err := kubernetes.NewForConfig(cp.Config(token))
	if err != nil {
		t.Fatal(err)
	}

	// Who the apiserver thinks the token is.
	review, err := agent.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if u := review.Status.UserInfo.Username; u != "system:serviceaccount:kube-system:switchyard" {
		t.Errorf("token authenticates as %q", u)
	}

	// Access reviews: what deploy/rbac.yaml grants and what it must not.
	for _, c := range []struct {
		verb, group, resource string
		want                  bool
	}{
		{"list", "", "services", true},
		{"watch", "", "services", true},
		{"list", "discovery.k8s.io", "endpointslices", true},
		{"watch", "discovery.k8s.io", "endpointslices", true},
		{"list", "", "nodes", true},
		{"create", "", "services", false},
		{"update", "", "services", false},
		{"delete", "discovery.k8s.io", "endpointslices", false},
		{"list", "", "secrets", false},
	} {
		r, err := agent.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
				Verb: c.verb, Group: c.group, Resource: c.resource,
			}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if r.Status.Allowed != c.want {
			t.Errorf("%s %s.%s allowed = %v, want %v (%s)", c.verb, c.resource, c.group, r.Status.Allowed, c.want, r.Status.Reason)
		}
	}

	// And the real calls.
	svcs, err := agent.CoreV1().Services(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("agent lists services: %v", err)
	}
	slices, err := agent.DiscoveryV1().EndpointSlices(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("agent lists endpointslices: %v", err)
	}
	t.Logf("agent sees %d services and %d endpointslices", len(svcs.Items), len(slices.Items))
	svcWatch, err := agent.CoreV1().Services(metav1.NamespaceAll).Watch(ctx, metav1.ListOptions{ResourceVersion: svcs.ResourceVersion})
	if err != nil {
		t.Fatalf("agent watches services: %v", err)
	}
	defer svcWatch.Stop()
	sliceWatch, err := agent.DiscoveryV1().EndpointSlices(metav1.NamespaceAll).Watch(ctx, metav1.ListOptions{ResourceVersion: slices.ResourceVersion})
	if err != nil {
		t.Fatalf("agent watches endpointslices: %v", err)
	}
	defer sliceWatch.Stop()

	svc2 := svc.DeepCopy()
	svc2.Name = "api"
	if _, err := admin.CoreV1().Services("smoke").Create(ctx, svc2, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	slice2 := slice.DeepCopy()
	slice2.Name = "api-1"
	slice2.Labels[discoveryv1.LabelServiceName] = "api"
	if _, err := admin.DiscoveryV1().EndpointSlices("smoke").Create(ctx, slice2, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	expectAdded(t, svcWatch, "smoke/api")
	expectAdded(t, sliceWatch, "smoke/api-1")

	_, err = agent.CoreV1().Services("smoke").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "forbidden", Namespace: "smoke"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 81}}},
	}, metav1.CreateOptions{})
	if !apierrors.IsForbidden(err) {
		t.Errorf("agent creating a service: err = %v, want forbidden", err)
	}
}

// expectAdded waits (bounded) for an ADDED event of namespace/name on w.
func expectAdded(t *testing.T, w watch.Interface, want string) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				t.Fatalf("watch for %s closed", want)
			}
			if ev.Type == watch.Error {
				t.Fatalf("watch for %s: %v", want, apierrors.FromObject(ev.Object))
			}
			m, err := meta.Accessor(ev.Object)
			if err != nil {
				t.Fatal(err)
			}
			if ev.Type == watch.Added && m.GetNamespace()+"/"+m.GetName() == want {
				return
			}
		case <-timeout:
			t.Fatalf("no ADDED event for %s within 30s", want)
		}
	}
}
