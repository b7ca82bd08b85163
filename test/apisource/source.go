// Package apisource is an agentspec.Source that applies the scenarios'
// YAML documents (Services, EndpointSlices, Pods) through a real API
// server, so the same agent scenarios that run on a manifests directory
// run against kube-apiserver: the agent then watches them with
// --kubeconfig.
package apisource

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/switchyard/switchyard/test/agentspec"
)

// requestTimeout bounds each API call.
const requestTimeout = 10 * time.Second

// ref names one object the Source wrote.
type ref struct{ kind, namespace, name string }

// Source writes through client; the agent gets args (--kubeconfig ...).
type Source struct {
	client kubernetes.Interface
	args   []string

	mu         sync.Mutex
	written    map[string][]ref // by the name Write was given
	namespaces map[string]bool  // created or seen
}

var _ agentspec.Source = (*Source)(nil)

// New returns a Source applying through client; agentArgs point the
// agent at the same API server (e.g. "--kubeconfig", path).
func New(client kubernetes.Interface, agentArgs ...string) *Source {
	return &Source{client: client, args: agentArgs, written: map[string][]ref{}, namespaces: map[string]bool{}}
}

// Args implements agentspec.Source.
func (s *Source) Args() []string { return s.args }

// Write implements agentspec.Source: it creates or updates each object in
// content (status included: a LoadBalancer's ingress, a Pod's phase and
// addresses, as no controller or kubelet sets them here) and deletes the
// objects an earlier Write of name had that content no longer has.
func (s *Source) Write(t *testing.T, name, content string) {
	t.Helper()
	objs, err := Decode(content)
	if err != nil {
		t.Fatalf("apisource: %s: %v", name, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	var refs []ref
	for _, o := range objs {
		r, err := s.apply(ctx, o)
		if err != nil {
			t.Fatalf("apisource: %s: %v", name, err)
		}
		refs = append(refs, r)
	}
	s.mu.Lock()
	old := s.written[name]
	s.written[name] = refs
	s.mu.Unlock()
	for _, r := range old {
		if !slices.Contains(refs, r) {
			if err := s.delete(ctx, r); err != nil {
				t.Fatalf("apisource: %s: %v", name, err)
			}
		}
	}
}

// Remove implements agentspec.Source.
func (s *Source) Remove(t *testing.T, name string) {
	t.Helper()
	s.mu.Lock()
	refs := s.written[name]
	delete(s.written, name)
	s.mu.Unlock()
	if refs == nil {
		t.Fatalf("apisource: nothing was written as %s", name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	for _, r := range refs {
		if err := s.delete(ctx, r); err != nil {
			t.Fatalf("apisource: %s: %v", name, err)
		}
	}
}

// Decode reads YAML documents separated by "---" lines into typed objects.
func Decode(content string) ([]runtime.Object, error) {
	var out []runtime.Object
	for i, doc := range strings.Split("\n"+content, "\n---") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		o, _, err := scheme.Codecs.UniversalDeserializer().Decode([]byte(doc), nil, nil)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i+1, err)
		}
		out = append(out, o)
	}
	return out, nil
}

func (s *Source) apply(ctx context.Context, o runtime.Object) (ref, error) {
	switch o := o.(type) {
	case *v1.Service:
		return ref{"Service", o.Namespace, o.Name}, s.applyService(ctx, o)
	case *discovery.EndpointSlice:
		return ref{"EndpointSlice", o.Namespace, o.Name}, s.applySlice(ctx, o)
	case *v1.Pod:
		return ref{"Pod", o.Namespace, o.Name}, s.applyPod(ctx, o)
	default:
		return ref{}, fmt.Errorf("apisource cannot apply a %T", o)
	}
}

// ensureNamespace creates ns once.
func (s *Source) ensureNamespace(ctx context.Context, ns string) error {
	s.mu.Lock()
	seen := s.namespaces[ns]
	s.mu.Unlock()
	if seen {
		return nil
	}
	_, err := s.client.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", ns, err)
	}
	// Pods need their ServiceAccount, which the controller manager (not
	// running here) would create.
	_, err = s.client.CoreV1().ServiceAccounts(ns).Create(ctx, &v1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create serviceaccount %s/default: %w", ns, err)
	}
	s.mu.Lock()
	s.namespaces[ns] = true
	s.mu.Unlock()
	return nil
}

func (s *Source) applyService(ctx context.Context, want *v1.Service) error {
	if err := s.ensureNamespace(ctx, want.Namespace); err != nil {
		return err
	}
	c := s.client.CoreV1().Services(want.Namespace)
	status := want.Status
	// A manifest's LoadBalancer without nodePorts has none; the API
	// server would allocate them unless told not to.
	if want.Spec.Type == v1.ServiceTypeLoadBalancer && want.Spec.AllocateLoadBalancerNodePorts == nil && !hasNodePort(want) {
		no := false
		want.Spec.AllocateLoadBalancerNodePorts = &no
	}
	got, err := c.Get(ctx, want.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		if got, err = c.Create(ctx, want, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create Service %s/%s: %w", want.Namespace, want.Name, err)
		}
	case err != nil:
		return fmt.Errorf("get Service %s/%s: %w", want.Namespace, want.Name, err)
	default:
		want.ResourceVersion = got.ResourceVersion
		if got, err = c.Update(ctx, want, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("update Service %s/%s: %w", want.Namespace, want.Name, err)
		}
	}
	// The load balancer's ingress is status: no cloud controller here.
	got.Status = status
	if _, err := c.UpdateStatus(ctx, got, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update Service %s/%s status: %w", want.Namespace, want.Name, err)
	}
	return nil
}

func hasNodePort(svc *v1.Service) bool {
	for _, p := range svc.Spec.Ports {
		if p.NodePort != 0 {
			return true
		}
	}
	return false
}

func (s *Source) applySlice(ctx context.Context, want *discovery.EndpointSlice) error {
	if err := s.ensureNamespace(ctx, want.Namespace); err != nil {
		return err
	}
	c := s.client.DiscoveryV1().EndpointSlices(want.Namespace)
	got, err := c.Get(ctx, want.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = c.Create(ctx, want, metav1.CreateOptions{})
	case err == nil:
		want.ResourceVersion = got.ResourceVersion
		_, err = c.Update(ctx, want, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("apply EndpointSlice %s/%s: %w", want.Namespace, want.Name, err)
	}
	return nil
}

// applyPod creates the Pod (bound to its node, as the scheduler would)
// or, when it exists, keeps its spec (mostly immutable) and sets the
// status, which is what the agent reads: phase and addresses.
func (s *Source) applyPod(ctx context.Context, want *v1.Pod) error {
	if err := s.ensureNamespace(ctx, want.Namespace); err != nil {
		return err
	}
	c := s.client.CoreV1().Pods(want.Namespace)
	status := want.Status
	want.CreationTimestamp = metav1.Time{}
	got, err := c.Get(ctx, want.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		if got, err = c.Create(ctx, want, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create Pod %s/%s: %w", want.Namespace, want.Name, err)
		}
	case err != nil:
		return fmt.Errorf("get Pod %s/%s: %w", want.Namespace, want.Name, err)
	}
	got.Status = status
	if _, err := c.UpdateStatus(ctx, got, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update Pod %s/%s status: %w", want.Namespace, want.Name, err)
	}
	return nil
}

func (s *Source) delete(ctx context.Context, r ref) error {
	var err error
	now := metav1.DeleteOptions{GracePeriodSeconds: new(int64)} // no kubelet to wait for
	switch r.kind {
	case "Service":
		err = s.client.CoreV1().Services(r.namespace).Delete(ctx, r.name, now)
	case "EndpointSlice":
		err = s.client.DiscoveryV1().EndpointSlices(r.namespace).Delete(ctx, r.name, now)
	case "Pod":
		err = s.client.CoreV1().Pods(r.namespace).Delete(ctx, r.name, now)
	}
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete %s %s/%s: %w", r.kind, r.namespace, r.name, err)
	}
	return nil
}
