package controlplane

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"
	"k8s.io/utils/ptr"
)

// CreateNode creates a Node named name with ips as its InternalIP
// addresses (the apiserver keeps status on create, as it does for the
// kubelet), Ready, without the not-ready taint the apiserver adds by
// default, so it looks like a working node to a proxy. An existing Node is
// left alone and returned.
func (cp *ControlPlane) CreateNode(ctx context.Context, name string, ips ...string) (*corev1.Node, error) {
	c, err := cp.Client()
	if err != nil {
		return nil, err
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/hostname": name}},
		Status: corev1.NodeStatus{
			Conditions: []corev1.NodeCondition{{
				Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
				LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now(),
			}},
		},
	}
	for _, ip := range ips {
		node.Status.Addresses = append(node.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip})
	}
	node.Status.Addresses = append(node.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeHostName, Address: name})
	created, err := c.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return c.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	}
	if err != nil {
		return nil, fmt.Errorf("create node %s: %w", name, err)
	}
	// The TaintNodesByCondition admission plugin adds
	// node.kubernetes.io/not-ready on create; the node lifecycle controller
	// that would lift it is not running.
	if len(created.Spec.Taints) > 0 {
		created.Spec.Taints = nil
		created, err = c.CoreV1().Nodes().Update(ctx, created, metav1.UpdateOptions{})
		if err != nil {
			return nil, fmt.Errorf("untaint node %s: %w", name, err)
		}
	}
	return created, nil
}

// ServiceAccountToken mints a token for the ServiceAccount namespace/name
// (which must exist) through the TokenRequest API, valid for ttl (the
// apiserver's minimum is 10 minutes; 0 means one hour).
func (cp *ControlPlane) ServiceAccountToken(ctx context.Context, namespace, name string, ttl time.Duration) (string, error) {
	if ttl == 0 {
		ttl = time.Hour
	}
	c, err := cp.Client()
	if err != nil {
		return "", err
	}
	tr, err := c.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To(int64(ttl.Seconds()))},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token for serviceaccount %s/%s: %w", namespace, name, err)
	}
	return tr.Status.Token, nil
}

// Apply server-side-applies every object in a YAML or JSON stream
// (multi-document; `List` kinds are not expanded) as the admin, creating or
// updating each, in order. Namespaced objects without a namespace go to
// "default". It returns the applied objects.
func (cp *ControlPlane) Apply(ctx context.Context, manifest []byte) ([]*unstructured.Unstructured, error) {
	cfg := cp.AdminConfig()
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("apply: %w", err)
	}
	disc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("apply: %w", err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disc))
	var out []*unstructured.Unstructured
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(manifest)))
	for i := 0; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("apply: document %d: %w", i, err)
		}
		obj := &unstructured.Unstructured{}
		if err := utilyaml.Unmarshal(doc, &obj.Object); err != nil {
			return out, fmt.Errorf("apply: document %d: %w", i, err)
		}
		if len(obj.Object) == 0 {
			continue // an empty document (comments only)
		}
		gvk := obj.GroupVersionKind()
		mapping, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			return out, fmt.Errorf("apply: document %d (%s): %w", i, gvk, err)
		}
		var ri dynamic.ResourceInterface = dyn.Resource(mapping.Resource)
		if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
			if obj.GetNamespace() == "" {
				obj.SetNamespace(metav1.NamespaceDefault)
			}
			ri = dyn.Resource(mapping.Resource).Namespace(obj.GetNamespace())
		}
		data, err := obj.MarshalJSON()
		if err != nil {
			return out, fmt.Errorf("apply: document %d: %w", i, err)
		}
		applied, err := ri.Patch(ctx, obj.GetName(), types.ApplyPatchType, data, metav1.PatchOptions{
			FieldManager: "switchyard-test", Force: ptr.To(true),
		})
		if err != nil {
			return out, fmt.Errorf("apply %s %s/%s: %w", gvk.Kind, obj.GetNamespace(), obj.GetName(), err)
		}
		out = append(out, applied)
	}
}

// WaitNamespace waits until namespace exists (the apiserver creates
// default, kube-system, kube-public and kube-node-lease right after it
// turns ready), bounded by ctx and one minute.
func WaitNamespace(ctx context.Context, c kubernetes.Interface, namespace string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		_, err := c.CoreV1().Namespaces().Get(ctx, namespace, metav1.GetOptions{})
		if err == nil {
			return nil
		}
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("namespace %s: %w", namespace, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("namespace %s: %w", namespace, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
