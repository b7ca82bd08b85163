package source

import (
	"cmp"
	"slices"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
)

// manifestOp is one Handler call of a batch.
type manifestOp struct {
	step int // position in deliveryOrder
	obj  manifestObject
}

// Delivery order within a batch. The sync loop may drain the tracker in the
// middle of a batch, so each step must leave a state that is safe to
// program: endpoints arrive before the Service that uses them, and a Service
// goes away before its endpoints, so it is never briefly programmed without
// backends (which would reject its traffic).
const (
	stepNodeUpsert = iota
	stepSliceUpsert
	stepServiceUpsert
	stepServiceDelete
	stepSliceDelete
	stepNodeDelete
	stepPodUpsert
	stepPodDelete
)

// deliver hands the difference between the last delivered objects and
// desired to the handler, and reports whether there was any.
func (m *manifestSource) deliver(desired map[objKey]manifestObject) bool {
	var ops []manifestOp
	for k, o := range desired {
		old, had := m.delivered[k]
		// Semantic equality treats e.g. 1000m and 1 alike, as the API does.
		if had && equality.Semantic.DeepEqual(old.obj, o.obj) {
			continue
		}
		ops = append(ops, manifestOp{step: upsertStep(k.Kind), obj: o})
	}
	for k, o := range m.delivered {
		if _, keep := desired[k]; !keep {
			ops = append(ops, manifestOp{step: deleteStep(k.Kind), obj: o})
		}
	}
	m.delivered = desired
	if len(ops) == 0 {
		return false
	}
	slices.SortFunc(ops, func(a, b manifestOp) int {
		return cmp.Or(cmp.Compare(a.step, b.step),
			cmp.Compare(a.obj.key.Namespace, b.obj.key.Namespace),
			cmp.Compare(a.obj.key.Name, b.obj.key.Name))
	})
	upserts := 0
	for _, op := range ops {
		m.apply(op)
		if op.step == upsertStep(op.obj.key.Kind) {
			upserts++
		}
	}
	klog.InfoS("Applied manifest changes", "dir", m.dir, "upserts", upserts, "deletes", len(ops)-upserts)
	return true
}

func upsertStep(kind string) int {
	switch kind {
	case kindNode:
		return stepNodeUpsert
	case kindEndpointSlice:
		return stepSliceUpsert
	case kindService:
		return stepServiceUpsert
	}
	return stepPodUpsert
}

func deleteStep(kind string) int {
	switch kind {
	case kindNode:
		return stepNodeDelete
	case kindEndpointSlice:
		return stepSliceDelete
	case kindService:
		return stepServiceDelete
	}
	return stepPodDelete
}

func (m *manifestSource) apply(op manifestOp) {
	k := op.obj.key
	klog.V(2).InfoS("Manifest object changed", "object", k.String(), "step", op.step)
	switch op.step {
	case stepNodeUpsert:
		m.h.OnNodeUpsert(op.obj.obj.(*v1.Node))
	case stepNodeDelete:
		// A Node with no labels clears the zone (see Handler).
		m.h.OnNodeUpsert(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: k.Name}})
	case stepSliceUpsert:
		m.h.OnEndpointSliceUpsert(op.obj.obj.(*discovery.EndpointSlice))
	case stepSliceDelete:
		m.h.OnEndpointSliceDelete(op.obj.obj.(*discovery.EndpointSlice))
	case stepServiceUpsert:
		m.h.OnServiceUpsert(op.obj.obj.(*v1.Service))
	case stepServiceDelete:
		m.h.OnServiceDelete(k.Namespace, k.Name)
	case stepPodUpsert:
		m.pods.OnPodUpsert(op.obj.obj.(*v1.Pod))
	case stepPodDelete:
		m.pods.OnPodDelete(k.Namespace, k.Name)
	}
}
