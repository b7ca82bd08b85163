package source

import (
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
)

// Handler receives what a source sees. *dataplane.Tracker implements it.
// Methods are called concurrently (each informer delivers from its own
// goroutine). Objects passed in must be treated as read-only: informers
// share them with their cache.
type Handler interface {
	OnServiceUpsert(svc *v1.Service)
	OnServiceDelete(namespace, name string)
	// OnEndpointSliceUpsert receives every slice the source selected; the
	// handler ignores slices without the kubernetes.io/service-name label.
	OnEndpointSliceUpsert(slice *discovery.EndpointSlice)
	// OnEndpointSliceDelete may receive a slice with only its namespace and
	// name set, when the informer lost the final state of the object.
	OnEndpointSliceDelete(slice *discovery.EndpointSlice)
	// OnNodeUpsert receives this node's Node object (a manifests directory
	// may also hold other Nodes; the handler ignores those by name). When a
	// Node disappears it receives a Node with only the name set, which
	// clears the zone.
	OnNodeUpsert(node *v1.Node)
	// SetServicesSynced and SetEndpointSlicesSynced are called once, after
	// the initial listing has been delivered through the methods above.
	SetServicesSynced()
	SetEndpointSlicesSynced()
}

// PodHandler is an optional extension of Handler for Pods (hostPort
// support). RunManifests delivers Pods only when its Handler also implements
// PodHandler; otherwise Pod manifests are ignored.
type PodHandler interface {
	OnPodUpsert(pod *v1.Pod)
	OnPodDelete(namespace, name string)
	// SetPodsSynced is called once after the initial Pods were delivered,
	// so stale host ports can be cleaned up without racing the first read.
	SetPodsSynced()
}

// notifier returns notify, or a no-op when it is nil, so the sources can
// call it unconditionally.
func notifier(notify func()) func() {
	if notify == nil {
		return func() {}
	}
	return notify
}
