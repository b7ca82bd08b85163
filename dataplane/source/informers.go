package source

import (
	"context"
	"errors"
	"fmt"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/dataplane"
)

// LabelHeadless is set by the EndpointSlice controller on the slices of
// headless Services (v1.IsHeadlessService); the proxy never needs them.
const LabelHeadless = v1.IsHeadlessService

// InformerOptions configures RunInformers. The zero value is usable.
type InformerOptions struct {
	// ProxyName is the agent's service.kubernetes.io/service-proxy-name
	// (dataplane.TranslateOptions.ProxyName). Empty: objects carrying the
	// label are filtered out by the API server, as kube-proxy does. Set:
	// no label filter is applied, because a selector cannot express
	// "label absent OR equal to ProxyName"; the Tracker skips the Services
	// of other proxies, and their slices program nothing without them.
	ProxyName string

	// ResyncPeriod re-delivers every cached object as an update this
	// often; 0 (the default) disables it. kube-proxy defaults to 15m, but a
	// resync replays the informer's cache, not the API server, and the sync
	// loop already compares the whole State with the kernel on its own
	// maximum interval, so a resync would only cost CPU.
	ResyncPeriod time.Duration
}

// ServiceSelector is the label selector of the Service informer.
func ServiceSelector(proxyName string) labels.Selector {
	sel := labels.NewSelector()
	if proxyName == "" {
		sel = sel.Add(mustRequirement(dataplane.LabelServiceProxyName, selection.DoesNotExist))
	}
	return sel
}

// EndpointSliceSelector is the label selector of the EndpointSlice
// informer: never headless slices, and the service-proxy-name rule of
// ServiceSelector (the EndpointSlice controller copies Service labels to
// the slices).
func EndpointSliceSelector(proxyName string) labels.Selector {
	sel := labels.NewSelector().Add(mustRequirement(LabelHeadless, selection.DoesNotExist))
	if proxyName == "" {
		sel = sel.Add(mustRequirement(dataplane.LabelServiceProxyName, selection.DoesNotExist))
	}
	return sel
}

func mustRequirement(key string, op selection.Operator) labels.Requirement {
	r, err := labels.NewRequirement(key, op, nil)
	if err != nil {
		panic(fmt.Sprintf("label requirement %s %s: %v", key, op, err)) // constant input
	}
	return *r
}

// RunInformers watches Services, EndpointSlices (discovery/v1) and this
// node's Node object, delivers them to h and calls notify after each event.
// Once every informer has listed and h has received the initial objects, it
// marks Services and EndpointSlices synced (and calls notify). It blocks
// until ctx is done and returns nil then; it returns an error when the
// arguments are invalid or ctx ends before the caches synced.
func RunInformers(ctx context.Context, client kubernetes.Interface, nodeName string, h Handler, notify func(), opts InformerOptions) error {
	if client == nil || h == nil {
		return errors.New("informers: client and handler are required")
	}
	if nodeName == "" {
		// The node name selects node-local endpoints (trafficPolicy Local)
		// and the node's zone; running without it would be silently wrong.
		return errors.New("informers: node name is required")
	}
	if opts.ResyncPeriod < 0 {
		return fmt.Errorf("informers: negative resync period %v", opts.ResyncPeriod)
	}
	notify = notifier(notify)

	svcSel := ServiceSelector(opts.ProxyName).String()
	sliceSel := EndpointSliceSelector(opts.ProxyName).String()
	nodeSel := fields.OneTermEqualSelector(metav1.ObjectNameField, nodeName).String()
	// One factory per selector: a factory applies its tweak to every
	// informer it makes.
	svcFactory := informers.NewSharedInformerFactoryWithOptions(client, opts.ResyncPeriod,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = svcSel }))
	sliceFactory := informers.NewSharedInformerFactoryWithOptions(client, opts.ResyncPeriod,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = sliceSel }))
	nodeFactory := informers.NewSharedInformerFactoryWithOptions(client, opts.ResyncPeriod,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = nodeSel }))
	factories := []informers.SharedInformerFactory{svcFactory, sliceFactory, nodeFactory}

	ev := informerEvents{h: h, notify: notify, nodeName: nodeName}
	type registration struct {
		what     string
		informer cache.SharedIndexInformer
		handler  cache.ResourceEventHandler
	}
	regs := []registration{
		{"Service", svcFactory.Core().V1().Services().Informer(), ev.serviceHandler()},
		{"EndpointSlice", sliceFactory.Discovery().V1().EndpointSlices().Informer(), ev.sliceHandler()},
		{"Node", nodeFactory.Core().V1().Nodes().Informer(), ev.nodeHandler()},
	}
	// Pods only for a handler that consumes them (hostPort), and only this
	// node's: the field selector keeps the watch (and the cache) to the
	// Pods scheduled here, as the kubelet's own watch.
	ph, wantPods := h.(PodHandler)
	podSel := fields.OneTermEqualSelector("spec.nodeName", nodeName).String()
	if wantPods {
		podFactory := informers.NewSharedInformerFactoryWithOptions(client, opts.ResyncPeriod,
			informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = podSel }))
		factories = append(factories, podFactory)
		inf := podFactory.Core().V1().Pods().Informer()
		if err := inf.SetTransform(TrimPod); err != nil {
			return fmt.Errorf("informers: Pod transform: %w", err)
		}
		regs = append(regs, registration{"Pod", inf, ev.podHandler(ph)})
	}
	var synced []cache.InformerSynced
	for _, reg := range regs {
		r, err := reg.informer.AddEventHandler(reg.handler)
		if err != nil {
			return fmt.Errorf("informers: adding %s handler: %w", reg.what, err)
		}
		// The registration, unlike the informer, is synced only once the
		// handler has received the initial list; marking the tracker synced
		// earlier could program a Service before its endpoints arrived.
		synced = append(synced, r.HasSynced)
	}

	for _, f := range factories {
		f.Start(ctx.Done())
	}
	// Shutdown waits for the informer goroutines, which stop when ctx ends.
	defer func() {
		for _, f := range factories {
			f.Shutdown()
		}
	}()

	if wantPods {
		klog.InfoS("Watching this node's Pods for host ports", "fieldSelector", podSel)
	}
	klog.InfoS("Waiting for informer caches to sync", "serviceSelector", svcSel, "endpointSliceSelector", sliceSel, "node", nodeName)
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return fmt.Errorf("informers: waiting for caches to sync: %w", context.Cause(ctx))
	}
	h.SetServicesSynced()
	h.SetEndpointSlicesSynced()
	if wantPods {
		ph.SetPodsSynced()
	}
	notify()
	klog.InfoS("Informer caches synced")

	<-ctx.Done()
	return nil
}

// informerEvents turns informer callbacks into Handler calls.
type informerEvents struct {
	h        Handler
	notify   func()
	nodeName string
}

// upserter returns an Add/Update callback that hands objects of type T to
// fn and then notifies; anything else is logged and dropped.
func upserter[T any](e informerEvents, kind string, fn func(T) bool) func(any) {
	return func(obj any) {
		o, ok := obj.(T)
		if !ok {
			klog.ErrorS(nil, "Unexpected object in "+kind+" informer", "type", fmt.Sprintf("%T", obj))
			return
		}
		if fn(o) {
			e.notify()
		}
	}
}

func (e informerEvents) serviceHandler() cache.ResourceEventHandler {
	upsert := upserter(e, "Service", func(svc *v1.Service) bool { e.h.OnServiceUpsert(svc); return true })
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    upsert,
		UpdateFunc: func(_, obj any) { upsert(obj) },
		DeleteFunc: func(obj any) {
			ns, name, ok := deletedKey[*v1.Service](obj)
			if !ok {
				return
			}
			e.h.OnServiceDelete(ns, name)
			e.notify()
		},
	}
}

func (e informerEvents) sliceHandler() cache.ResourceEventHandler {
	upsert := upserter(e, "EndpointSlice", func(sl *discovery.EndpointSlice) bool { e.h.OnEndpointSliceUpsert(sl); return true })
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    upsert,
		UpdateFunc: func(_, obj any) { upsert(obj) },
		DeleteFunc: func(obj any) {
			sl, ok := obj.(*discovery.EndpointSlice)
			if tomb, isTomb := obj.(cache.DeletedFinalStateUnknown); isTomb {
				sl, ok = tomb.Obj.(*discovery.EndpointSlice)
			}
			if !ok {
				// The tracker finds a slice by namespace and name, so the
				// tombstone's key is enough when its object is unusable.
				ns, name, found := deletedKey[*discovery.EndpointSlice](obj)
				if !found {
					return
				}
				sl = &discovery.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
			}
			e.h.OnEndpointSliceDelete(sl)
			e.notify()
		},
	}
}

func (e informerEvents) nodeHandler() cache.ResourceEventHandler {
	upsert := upserter(e, "Node", func(node *v1.Node) bool {
		// The field selector already restricts the watch to this node; the
		// check keeps the contract when a client ignores it (fakes do).
		if node.Name != e.nodeName {
			return false
		}
		e.h.OnNodeUpsert(node)
		return true
	})
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    upsert,
		UpdateFunc: func(_, obj any) { upsert(obj) },
		DeleteFunc: func(obj any) {
			_, name, ok := deletedKey[*v1.Node](obj)
			if !ok || name != e.nodeName {
				return
			}
			// Without its Node the zone is unknown; forgetting it makes
			// topology-aware routing fall back to all endpoints, which is
			// always correct, if not optimal, until the Node is back.
			klog.InfoS("This node's Node object was deleted; forgetting its zone", "node", name)
			e.h.OnNodeUpsert(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}})
			e.notify()
		},
	}
}

func (e informerEvents) podHandler(ph PodHandler) cache.ResourceEventHandler {
	upsert := upserter(e, "Pod", func(pod *v1.Pod) bool {
		if pod.Spec.NodeName != e.nodeName {
			return false
		}
		ph.OnPodUpsert(pod)
		return true
	})
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    upsert,
		UpdateFunc: func(_, obj any) { upsert(obj) },
		DeleteFunc: func(obj any) {
			ns, name, ok := deletedKey[*v1.Pod](obj)
			if !ok {
				return
			}
			ph.OnPodDelete(ns, name)
			e.notify()
		},
	}
}

// TrimPod is the Pod informer's transform: it keeps only what host port
// mapping reads (identity, creation and deletion times, node, phase, pod
// IPs, container ports), so the cache holds a fraction of each Pod.
// Anything else passes through unchanged.
func TrimPod(obj any) (any, error) {
	pod, ok := obj.(*v1.Pod)
	if !ok {
		return obj, nil
	}
	out := &v1.Pod{
		TypeMeta: pod.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID, ResourceVersion: pod.ResourceVersion,
			CreationTimestamp: pod.CreationTimestamp, DeletionTimestamp: pod.DeletionTimestamp,
		},
		Spec:   v1.PodSpec{NodeName: pod.Spec.NodeName, HostNetwork: pod.Spec.HostNetwork},
		Status: v1.PodStatus{Phase: pod.Status.Phase, PodIP: pod.Status.PodIP, PodIPs: pod.Status.PodIPs},
	}
	for _, c := range pod.Spec.Containers {
		if len(c.Ports) > 0 {
			out.Spec.Containers = append(out.Spec.Containers, v1.Container{Name: c.Name, Ports: c.Ports})
		}
	}
	return out, nil
}

// deletedKey returns the namespace and name of a deleted object, which is
// either a T or a cache.DeletedFinalStateUnknown tombstone (the watch missed
// the delete and a relist found the object gone). For a tombstone whose
// object is not a T, the namespace and name come from its key.
func deletedKey[T metav1.Object](obj any) (namespace, name string, ok bool) {
	if o, isT := obj.(T); isT {
		return o.GetNamespace(), o.GetName(), true
	}
	tomb, isTomb := obj.(cache.DeletedFinalStateUnknown)
	if !isTomb {
		klog.ErrorS(nil, "Unexpected object in delete event", "type", fmt.Sprintf("%T", obj))
		return "", "", false
	}
	if o, isT := tomb.Obj.(T); isT {
		return o.GetNamespace(), o.GetName(), true
	}
	namespace, name, err := cache.SplitMetaNamespaceKey(tomb.Key)
	if err != nil || name == "" {
		klog.ErrorS(err, "Unusable tombstone in delete event", "key", tomb.Key, "type", fmt.Sprintf("%T", tomb.Obj))
		return "", "", false
	}
	return namespace, name, true
}
