package nftables

import (
	"net/netip"
	"slices"

	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/dataplane"
)

// tableState is the Service-dependent content of a table: every Service
// port's objects, which port owns each frontend key and how many ports use
// each hairpin endpoint. The Proxier keeps the last applied one as its
// cache; a full sync builds a fresh one as the desired state.
type tableState struct {
	ports map[dataplane.ServicePortName]*servicePortState
	// byService indexes ports by Service, for partial syncs.
	byService map[dataplane.ServiceName][]dataplane.ServicePortName
	owners    map[frontend]dataplane.ServicePortName
	hairpin   map[netip.Addr]int
}

func newTableState() *tableState {
	return &tableState{
		ports:     map[dataplane.ServicePortName]*servicePortState{},
		byService: map[dataplane.ServiceName][]dataplane.ServicePortName{},
		owners:    map[frontend]dataplane.ServicePortName{},
		hairpin:   map[netip.Addr]int{},
	}
}

// buildTableState computes the desired table content for st.
func buildTableState(logger klog.Logger, cfg Config, f *family, st *dataplane.State) *tableState {
	ts := newTableState()
	for _, name := range st.SortedServicePorts() {
		if ps := desiredServicePort(cfg, f, st.Services[name], st.Endpoints[name], st.Weights[name], nodeOf(st)); ps != nil {
			ts.add(logger, ps)
		}
	}
	return ts
}

// add records ps. A frontend key another port already owns stays with
// that port (the first in ServicePortName order on full syncs, the one
// programmed first on partial ones): one key can lead to one chain only.
func (ts *tableState) add(logger klog.Logger, ps *servicePortState) {
	ts.remove(ps.name)
	ts.ports[ps.name] = ps
	ts.byService[ps.name.ServiceName] = append(ts.byService[ps.name.ServiceName], ps.name)
	for _, fr := range ps.frontends {
		if owner, ok := ts.owners[fr]; ok && owner != ps.name {
			logger.Info("Frontend claimed by two Service ports; keeping the first", "frontend", fr.String(),
				"owner", owner.String(), "ignored", ps.name.String())
			continue
		}
		ts.owners[fr] = ps.name
	}
	for _, a := range ps.hairpin {
		ts.hairpin[a]++
	}
}

// remove forgets the port named n and releases its frontends.
func (ts *tableState) remove(n dataplane.ServicePortName) {
	ps := ts.ports[n]
	if ps == nil {
		return
	}
	delete(ts.ports, n)
	svc := n.ServiceName
	ts.byService[svc] = slices.DeleteFunc(ts.byService[svc], func(o dataplane.ServicePortName) bool { return o == n })
	if len(ts.byService[svc]) == 0 {
		delete(ts.byService, svc)
	}
	for _, fr := range ps.frontends {
		if ts.owners[fr] == n {
			delete(ts.owners, fr)
		}
	}
	for _, a := range ps.hairpin {
		if ts.hairpin[a]--; ts.hairpin[a] <= 0 {
			delete(ts.hairpin, a)
		}
	}
}

// element is one set or map element: its set, key and (maps) target chain.
type element struct {
	set   string
	key   string // raw key bytes
	chain string // "" in plain sets
}

// valueText is the element's value as the kernel readback renders it.
func (e element) valueText() string {
	if e.chain == "" {
		return ""
	}
	return "goto " + e.chain
}

// elementsFor returns the elements frontend fr should have: those of the
// port that owns it.
func (ts *tableState) elementsFor(fr frontend) []element {
	owner, ok := ts.owners[fr]
	if !ok {
		return nil
	}
	return ts.ports[owner].elems[fr]
}

// elements returns every element the state wants, by set and key.
func (ts *tableState) elements(specs []setSpec) map[string]map[string]string {
	out := map[string]map[string]string{}
	for _, s := range specs {
		out[s.name] = map[string]string{}
	}
	for fr := range ts.owners {
		for _, e := range ts.elementsFor(fr) {
			out[e.set][e.key] = e.valueText()
		}
	}
	for a := range ts.hairpin {
		out[setHairpin][string(hairpinKey(a))] = ""
	}
	return out
}

// portSets returns the sets of every port (session affinity maps,
// connection-count sets), by name.
func (ts *tableState) portSets() map[string]setSpec {
	out := map[string]setSpec{}
	for _, ps := range ts.ports {
		for _, s := range ps.sets {
			out[s.name] = s
		}
	}
	return out
}
