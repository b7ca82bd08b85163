package dataplane

import (
	"maps"
	"net/netip"
	"slices"
	"sync"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
)

// LabelTopologyZone is the Node label holding the node's zone.
const LabelTopologyZone = "topology.kubernetes.io/zone"

// Tracker folds Service, EndpointSlice and Node events into the model. Event
// handlers (informers, the manifests watcher) only record what they saw;
// Drain, called by the sync loop, recomputes the model of the Services that
// were touched and reports which ones really changed, so edits that cancel
// out (an update and its revert, an add and a delete) cost no sync work.
//
// Handlers may be called from any goroutine. Drain and the State it returns
// belong to the sync goroutine.
type Tracker struct {
	opts   TranslateOptions
	report func(Problem)

	mu            sync.Mutex
	services      map[ServiceName][]*ServicePort // latest translation; absent = no Service
	slices        map[ServiceName]map[string]*discovery.EndpointSlice
	dirty         map[ServiceName]struct{}
	nodeName      string
	nodeZone      string
	nodeIPs       []netip.Addr
	fixedNodeIPs  bool // set by SetNodeIPs: the Node object's addresses are ignored
	nodeDirty     bool
	servicesSync  bool
	slicesSynced  bool
	pendingEvents int
	weights       map[ServicePortName]map[netip.AddrPort]int

	state *State // owned by the sync goroutine
}

// NewTracker returns a Tracker for this node. report receives every problem
// translation finds (it may be nil); it is called with the tracker's lock
// held, so it must not call back into the tracker.
func NewTracker(nodeName string, opts TranslateOptions, report func(Problem)) *Tracker {
	if report == nil {
		report = func(Problem) {}
	}
	st := NewState()
	st.NodeName = nodeName
	return &Tracker{
		opts:     opts,
		report:   report,
		services: map[ServiceName][]*ServicePort{},
		slices:   map[ServiceName]map[string]*discovery.EndpointSlice{},
		dirty:    map[ServiceName]struct{}{},
		weights:  map[ServicePortName]map[netip.AddrPort]int{},
		nodeName: nodeName,
		state:    st,
	}
}

// OnServiceUpsert records an added or updated Service.
func (t *Tracker) OnServiceUpsert(svc *v1.Service) {
	name := ServiceName{svc.Namespace, svc.Name}
	ports, problems := ServicePortsFromService(svc, t.opts)
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, p := range problems {
		t.report(p)
	}
	if ports == nil {
		delete(t.services, name)
	} else {
		t.services[name] = ports
	}
	t.markLocked(name)
}

// OnServiceDelete records a deleted Service.
func (t *Tracker) OnServiceDelete(namespace, name string) {
	n := ServiceName{namespace, name}
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.services, n)
	t.markLocked(n)
}

// OnEndpointSliceUpsert records an added or updated EndpointSlice. Slices
// without the service-name label are ignored, as kube-proxy does.
func (t *Tracker) OnEndpointSliceUpsert(sl *discovery.EndpointSlice) {
	svc, ok := sl.Labels[LabelServiceName]
	if !ok || svc == "" {
		return
	}
	n := ServiceName{sl.Namespace, svc}
	t.mu.Lock()
	defer t.mu.Unlock()
	// A slice can be relabelled to another Service: drop it from the old one.
	for other, m := range t.slices {
		if other != n && other.Namespace == sl.Namespace {
			if _, had := m[sl.Name]; had {
				delete(m, sl.Name)
				if len(m) == 0 {
					delete(t.slices, other)
				}
				t.markLocked(other)
			}
		}
	}
	m := t.slices[n]
	if m == nil {
		m = map[string]*discovery.EndpointSlice{}
		t.slices[n] = m
	}
	m[sl.Name] = sl
	t.markLocked(n)
}

// OnEndpointSliceDelete records a deleted EndpointSlice.
func (t *Tracker) OnEndpointSliceDelete(sl *discovery.EndpointSlice) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for n, m := range t.slices {
		if n.Namespace != sl.Namespace {
			continue
		}
		if _, had := m[sl.Name]; had {
			delete(m, sl.Name)
			if len(m) == 0 {
				delete(t.slices, n)
			}
			t.markLocked(n)
		}
	}
}

// OnNodeUpsert records this node's labels (its topology zone).
func (t *Tracker) OnNodeUpsert(node *v1.Node) {
	if node.Name != t.nodeName {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if z := node.Labels[LabelTopologyZone]; z != t.nodeZone {
		t.nodeZone = z
		t.nodeDirty = true
		t.pendingEvents++
	}
	if ips := NodeIPsFromNode(node); !t.fixedNodeIPs && !slices.Equal(ips, t.nodeIPs) {
		t.nodeIPs = ips
		t.nodeDirty = true
		t.pendingEvents++
	}
}

// NodeName is the name of the node the Tracker programs for.
func (t *Tracker) NodeName() string { return t.nodeName }

// SetWeights records the steering weights of a Service port (the
// rebalancer's; see State.Weights); nil or empty clears them. The Service
// syncs again only when they differ from what it has, which the result
// reports.
func (t *Tracker) SetWeights(name ServicePortName, weights map[netip.AddrPort]int) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if maps.Equal(t.weights[name], weights) {
		return false
	}
	if len(weights) == 0 {
		delete(t.weights, name)
	} else {
		t.weights[name] = maps.Clone(weights)
	}
	t.markLocked(name.ServiceName)
	return true
}

// SetNodeIPs fixes this node's addresses (--node-ip, or standalone mode
// without a Node object); the Node object's addresses are then ignored.
func (t *Tracker) SetNodeIPs(ips []netip.Addr) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.fixedNodeIPs = true
	t.nodeIPs = sortUnique(slices.Clone(ips))
	t.nodeDirty = true
	t.pendingEvents++
}

// NodeIPsFromNode returns the Node's InternalIP addresses, or its
// ExternalIP addresses when it has no internal one (kube-proxy's choice of
// the node's primary IPs), sorted.
func NodeIPsFromNode(node *v1.Node) []netip.Addr {
	var internal, external []netip.Addr
	for _, a := range node.Status.Addresses {
		ip, err := netip.ParseAddr(a.Address)
		if err != nil {
			continue
		}
		switch a.Type {
		case v1.NodeInternalIP:
			internal = append(internal, ip.Unmap())
		case v1.NodeExternalIP:
			external = append(external, ip.Unmap())
		}
	}
	if len(internal) == 0 {
		internal = external
	}
	return sortUnique(internal)
}

// SetServicesSynced and SetEndpointSlicesSynced mark the initial listing of
// each source as complete. Until both are, Initialized is false and the sync
// loop must not program anything: a Service seen before its endpoints would
// otherwise be programmed with none and reject traffic.
func (t *Tracker) SetServicesSynced() {
	t.mu.Lock()
	t.servicesSync = true
	t.mu.Unlock()
}

func (t *Tracker) SetEndpointSlicesSynced() {
	t.mu.Lock()
	t.slicesSynced = true
	t.mu.Unlock()
}

// Initialized reports whether both sources finished their initial listing.
func (t *Tracker) Initialized() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.servicesSync && t.slicesSynced
}

// Pending reports whether events arrived since the last Drain.
func (t *Tracker) Pending() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.pendingEvents > 0
}

func (t *Tracker) markLocked(n ServiceName) {
	t.dirty[n] = struct{}{}
	t.pendingEvents++
}

// Drain applies every recorded event to the State and returns it with the
// set of Services whose model changed. The returned Changes is never Full;
// the sync loop decides when a sync is full.
func (t *Tracker) Drain() (*State, Changes) {
	t.mu.Lock()
	dirty := t.dirty
	t.dirty = map[ServiceName]struct{}{}
	t.pendingEvents = 0
	nodeDirty := t.nodeDirty
	t.nodeDirty = false
	t.state.NodeZone = t.nodeZone
	t.state.NodeIPs = slices.Clone(t.nodeIPs)
	type input struct {
		ports  []*ServicePort
		slices []*discovery.EndpointSlice
	}
	inputs := make(map[ServiceName]input, len(dirty))
	for n := range dirty {
		inputs[n] = input{ports: t.services[n], slices: slices.Collect(maps.Values(t.slices[n]))}
	}
	weights := map[ServicePortName]map[netip.AddrPort]int{}
	for name, w := range t.weights {
		if _, ok := dirty[name.ServiceName]; ok {
			weights[name] = w // never modified in place: SetWeights replaces
		}
	}
	t.mu.Unlock()

	changes := Changes{Services: map[ServiceName]struct{}{}}
	for n, in := range inputs {
		// Endpoints are kept only for ports the Service has, so an
		// EndpointSlice arriving before its Service programs nothing.
		eps, problems := EndpointsFromSlices(in.slices)
		if len(problems) > 0 {
			t.mu.Lock()
			for _, p := range problems {
				t.report(p)
			}
			t.mu.Unlock()
		}
		if t.replaceService(n, in.ports, eps) {
			changes.Services[n] = struct{}{}
		}
		if t.replaceWeights(n, weights) {
			changes.Services[n] = struct{}{}
		}
	}
	if nodeDirty {
		// The zone steers topology-aware routing of every Service.
		for n := range t.state.Services {
			changes.Services[n.ServiceName] = struct{}{}
		}
	}
	return t.state, changes
}

// replaceWeights sets the steering weights of Service n's ports that
// exist from weights (the ports of n with steering) and reports whether
// anything differs.
func (t *Tracker) replaceWeights(n ServiceName, weights map[ServicePortName]map[netip.AddrPort]int) bool {
	changed := false
	for name := range t.state.Weights {
		if name.ServiceName == n && (weights[name] == nil || t.state.Services[name] == nil) {
			delete(t.state.Weights, name)
			changed = true
		}
	}
	for name, w := range weights {
		if t.state.Services[name] == nil {
			continue
		}
		if !maps.Equal(t.state.Weights[name], w) {
			t.state.Weights[name] = w
			changed = true
		}
	}
	return changed
}

// replaceService swaps one Service's ports and endpoints in the State and
// reports whether anything differs.
func (t *Tracker) replaceService(n ServiceName, ports []*ServicePort, eps map[ServicePortName][]Endpoint) bool {
	changed := false
	want := map[ServicePortName]*ServicePort{}
	for _, p := range ports {
		want[p.Name] = p
	}
	for name := range t.state.Services {
		if name.ServiceName != n {
			continue
		}
		if _, keep := want[name]; !keep {
			delete(t.state.Services, name)
			delete(t.state.Endpoints, name)
			changed = true
		}
	}
	for name, p := range want {
		if old, ok := t.state.Services[name]; !ok || !old.Equal(p) {
			t.state.Services[name] = p
			changed = true
		}
		newEps := eps[name]
		if !slices.EqualFunc(t.state.Endpoints[name], newEps, Endpoint.Equal) {
			changed = true
		}
		if len(newEps) == 0 {
			delete(t.state.Endpoints, name)
		} else {
			t.state.Endpoints[name] = newEps
		}
	}
	return changed
}
