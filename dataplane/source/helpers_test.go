package source

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"github.com/switchyard/switchyard/dataplane"
)

// The Tracker is the Handler the agent uses; keep the interfaces in step.
var (
	_ Handler = (*dataplane.Tracker)(nil)
	_ Handler = (*recorder)(nil)
	_ Handler = (*podRecorder)(nil)

	_ PodHandler = (*podRecorder)(nil)
)

// recorder is a Handler that records every call as a line ("svc+ ns/name",
// "slice- ns/name", "node+ name zone=z", "synced services", ...) and keeps
// the latest objects.
type recorder struct {
	mu       sync.Mutex
	events   []string
	services map[string]*v1.Service
	slices   map[string]*discovery.EndpointSlice
	node     *v1.Node
	synced   map[string]bool
	notified int
}

func newRecorder() *recorder {
	return &recorder{services: map[string]*v1.Service{}, slices: map[string]*discovery.EndpointSlice{}, synced: map[string]bool{}}
}

func (r *recorder) record(format string, args ...any) {
	r.events = append(r.events, fmt.Sprintf(format, args...))
}

func (r *recorder) OnServiceUpsert(svc *v1.Service) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.record("svc+ %s/%s", svc.Namespace, svc.Name)
	r.services[svc.Namespace+"/"+svc.Name] = svc
}

func (r *recorder) OnServiceDelete(ns, name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.record("svc- %s/%s", ns, name)
	delete(r.services, ns+"/"+name)
}

func (r *recorder) OnEndpointSliceUpsert(sl *discovery.EndpointSlice) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.record("slice+ %s/%s", sl.Namespace, sl.Name)
	r.slices[sl.Namespace+"/"+sl.Name] = sl
}

func (r *recorder) OnEndpointSliceDelete(sl *discovery.EndpointSlice) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.record("slice- %s/%s", sl.Namespace, sl.Name)
	delete(r.slices, sl.Namespace+"/"+sl.Name)
}

func (r *recorder) OnNodeUpsert(node *v1.Node) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.record("node+ %s zone=%s", node.Name, node.Labels[dataplane.LabelTopologyZone])
	r.node = node
}

func (r *recorder) SetServicesSynced()       { r.setSynced("services") }
func (r *recorder) SetEndpointSlicesSynced() { r.setSynced("slices") }

func (r *recorder) setSynced(what string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.record("synced %s", what)
	r.synced[what] = true
}

func (r *recorder) notify() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.notified++
}

// Events returns the calls recorded so far.
func (r *recorder) Events() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

// with runs f under the lock, for reading the maps.
func (r *recorder) with(f func(r *recorder) bool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return f(r)
}

// podRecorder also consumes Pods.
type podRecorder struct {
	*recorder
	pods map[string]*v1.Pod
}

func newPodRecorder() *podRecorder {
	return &podRecorder{recorder: newRecorder(), pods: map[string]*v1.Pod{}}
}

func (r *podRecorder) OnPodUpsert(pod *v1.Pod) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.record("pod+ %s/%s", pod.Namespace, pod.Name)
	r.pods[pod.Namespace+"/"+pod.Name] = pod
}

func (r *podRecorder) OnPodDelete(ns, name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.record("pod- %s/%s", ns, name)
	delete(r.pods, ns+"/"+name)
}

func (r *podRecorder) SetPodsSynced() { r.setSynced("pods") }

// problems collects ManifestProblems from the source goroutine.
type problems struct {
	mu   sync.Mutex
	list []ManifestProblem
}

func (p *problems) report(mp ManifestProblem) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.list = append(p.list, mp)
}

func (p *problems) List() []ManifestProblem {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.list)
}

// waitTimeout bounds every wait; conditions are polled, never slept on.
const waitTimeout = 10 * time.Second

// eventually polls cond until it holds or waitTimeout passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", waitTimeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// drainUntil drains tracker until its State dumps as want, so the test
// does not depend on how events were batched.
func drainUntil(t *testing.T, tr *dataplane.Tracker, want string) {
	t.Helper()
	got := ""
	deadline := time.Now().Add(waitTimeout)
	for {
		st, _ := tr.Drain()
		if got = st.Dump(); got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("State after %v:\n%s\nwant:\n%s", waitTimeout, got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
