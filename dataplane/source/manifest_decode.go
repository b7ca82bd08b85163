package source

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/klog/v2"
	sigsjson "sigs.k8s.io/json"
	sigsyaml "sigs.k8s.io/yaml"
)

// objKey identifies a manifest object the way the API server would.
type objKey struct {
	Kind      string
	Namespace string // "" for cluster-scoped kinds (Node)
	Name      string
}

func (k objKey) String() string {
	if k.Namespace == "" {
		return k.Kind + " " + k.Name
	}
	return k.Kind + " " + k.Namespace + "/" + k.Name
}

// manifestObject is one accepted object of a manifest file.
type manifestObject struct {
	key objKey
	obj runtime.Object // *v1.Service, *discovery.EndpointSlice, *v1.Node or *v1.Pod
}

// Kinds RunManifests understands, with the only apiVersion accepted for each.
const (
	kindService       = "Service"
	kindEndpointSlice = "EndpointSlice"
	kindNode          = "Node"
	kindPod           = "Pod"
)

// apiVersionOf returns the apiVersion RunManifests accepts for kind, and
// false for kinds it does not use.
func apiVersionOf(kind string) (string, bool) {
	switch kind {
	case kindService, kindNode, kindPod:
		return "v1", true
	case kindEndpointSlice:
		return discovery.SchemeGroupVersion.String(), true
	}
	return "", false
}

// defaultNamespace is what kubectl uses when a manifest names none.
const defaultNamespace = metav1.NamespaceDefault

// isManifestName reports whether a directory entry is read as a manifest.
// Dot files are skipped: editors keep swap and lock files there, and a
// ConfigMap volume keeps its versioned copies in "..data" directories.
func isManifestName(name string) bool {
	if strings.HasPrefix(name, ".") {
		return false
	}
	switch strings.ToLower(filepath.Ext(name)) {
	case ".yaml", ".yml", ".json":
		return true
	}
	return false
}

// manifestDecoder turns file contents into accepted objects.
type manifestDecoder struct {
	path string
	// pods is false when nobody consumes Pods; they are then skipped
	// unvalidated, like any other kind switchyard does not use.
	pods bool
	// previous holds the objects this file last contributed; an object
	// that is now invalid keeps that version, as the API server keeps an
	// object when an update is rejected.
	previous map[objKey]runtime.Object

	objects  []manifestObject
	seen     map[objKey]bool
	problems []ManifestProblem
}

// decodeFile parses one file. A returned error means the file as a whole
// is unusable (unreadable YAML or JSON); problems with single objects are
// collected in problems and the other objects are still returned.
func decodeFile(path string, data []byte, pods bool, previous []manifestObject) ([]manifestObject, []ManifestProblem, error) {
	d := &manifestDecoder{path: path, pods: pods, previous: map[objKey]runtime.Object{}, seen: map[objKey]bool{}}
	for _, o := range previous {
		d.previous[o.key] = o.obj
	}
	docs, err := splitDocuments(path, data)
	if err != nil {
		return nil, nil, err
	}
	for i, doc := range docs {
		d.decodeDocument(doc, fmt.Sprintf("document %d", i+1), "", "")
	}
	return d.objects, d.problems, nil
}

// splitDocuments returns each document of a file as JSON. YAML files may
// hold several documents separated by "---" lines; JSON files may hold a
// stream of objects. Empty documents are dropped.
func splitDocuments(path string, data []byte) ([][]byte, error) {
	var docs [][]byte
	if strings.EqualFold(filepath.Ext(path), ".json") {
		dec := json.NewDecoder(bytes.NewReader(data))
		for n := 1; ; n++ {
			var raw json.RawMessage
			if err := dec.Decode(&raw); errors.Is(err, io.EOF) {
				return docs, nil
			} else if err != nil {
				return nil, fmt.Errorf("json document %d: %w", n, err)
			}
			if !isNull(raw) {
				docs = append(docs, raw)
			}
		}
	}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for n := 1; ; n++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("yaml document %d: %w", n, err)
		}
		// Strict: a key given twice is almost always an editing mistake,
		// and which copy wins would otherwise be silent.
		js, err := sigsyaml.YAMLToJSONStrict(doc)
		if err != nil {
			return nil, fmt.Errorf("yaml document %d: %w", n, err)
		}
		if !isNull(js) {
			docs = append(docs, js)
		}
	}
}

func isNull(js []byte) bool {
	s := bytes.TrimSpace(js)
	return len(s) == 0 || string(s) == "null"
}

// typeHeader is the part of a document read before its kind is known.
type typeHeader struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
}

// listItems is read only from list kinds: other kinds may use "items" for
// something else.
type listItems struct {
	Items []json.RawMessage `json:"items"`
}

// decodeDocument decodes one object or list. defaultAPIVersion and
// defaultKind fill in items of typed lists (ServiceList items carry no
// kind when they come from the API server).
func (d *manifestDecoder) decodeDocument(doc []byte, where, defaultAPIVersion, defaultKind string) {
	var h typeHeader
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(doc, &h); err != nil {
		d.problem(where, ReasonDecodeError, fmt.Sprintf("not a Kubernetes object: %v", err), false)
		return
	}
	if h.Kind == "" || (h.Kind == defaultKind && h.APIVersion == "") {
		h.Kind, h.APIVersion = defaultKind, defaultAPIVersion
	}
	if h.Kind == "" || h.APIVersion == "" {
		d.problem(where, ReasonDecodeError, "apiVersion and kind are required", false)
		return
	}
	if isListKind(h.Kind) {
		var list listItems
		if err := sigsjson.UnmarshalCaseSensitivePreserveInts(doc, &list); err != nil {
			d.problem(where, ReasonDecodeError, fmt.Sprintf("%s: %v", h.Kind, err), false)
			return
		}
		itemKind := ""
		if h.Kind != "List" {
			itemKind = strings.TrimSuffix(h.Kind, "List")
		}
		for i, item := range list.Items {
			d.decodeDocument(item, fmt.Sprintf("%s (%s) item %d", where, h.Kind, i+1), h.APIVersion, itemKind)
		}
		return
	}

	wantVersion, known := apiVersionOf(h.Kind)
	if !known || (h.Kind == kindPod && !d.pods) {
		klog.V(4).InfoS("Ignoring manifest object of an unused kind", "file", d.path, "document", where, "apiVersion", h.APIVersion, "kind", h.Kind, "name", h.Metadata.Name)
		return
	}
	key := objKey{Kind: h.Kind, Namespace: h.Metadata.Namespace, Name: h.Metadata.Name}
	if h.Kind == kindNode {
		key.Namespace = "" // cluster-scoped; kubectl ignores a namespace here too
	} else if key.Namespace == "" {
		key.Namespace = defaultNamespace
	}
	name := key.String()
	if key.Name == "" {
		name = where + " (" + h.Kind + ")"
	}
	if h.APIVersion != wantVersion {
		d.reject(key, name, ReasonUnsupportedVersion, fmt.Sprintf("%s %s is not supported; use %s", h.APIVersion, h.Kind, wantVersion))
		return
	}

	obj, errs := decodeTyped(doc, h.Kind)
	if errs != nil {
		d.reject(key, name, ReasonDecodeError, errs.Error())
		return
	}
	// Apply the only defaults validation and the tracker depend on; the
	// tracker already treats other absent fields like their API defaults.
	meta := obj.(metav1.Object)
	meta.SetNamespace(key.Namespace)
	obj.GetObjectKind().SetGroupVersionKind(schema.FromAPIVersionAndKind(h.APIVersion, h.Kind))

	if reason, err := validateObject(obj); err != nil {
		d.reject(key, name, reason, err.Error())
		return
	}
	if d.seen[key] {
		d.problem(name, ReasonDuplicateObject, "defined again later in the same file; the first definition is used", false)
		return
	}
	d.seen[key] = true
	d.objects = append(d.objects, manifestObject{key: key, obj: obj})
}

// isListKind reports whether kind is List or the list of a kind
// RunManifests uses (ServiceList, EndpointSliceList, ...).
func isListKind(kind string) bool {
	if kind == "List" {
		return true
	}
	item, isList := strings.CutSuffix(kind, "List")
	_, known := apiVersionOf(item)
	return isList && known
}

// decodeTyped decodes doc strictly into the Go type of kind: unknown and
// duplicate fields are errors, as with `kubectl apply --validate=strict`,
// so a misspelt field is reported instead of silently ignored.
func decodeTyped(doc []byte, kind string) (runtime.Object, error) {
	var obj runtime.Object
	switch kind {
	case kindService:
		obj = &v1.Service{}
	case kindEndpointSlice:
		obj = &discovery.EndpointSlice{}
	case kindNode:
		obj = &v1.Node{}
	case kindPod:
		obj = &v1.Pod{}
	default:
		return nil, fmt.Errorf("unsupported kind %q", kind)
	}
	strictErrs, err := sigsjson.UnmarshalStrict(doc, obj)
	if err != nil {
		return nil, err
	}
	if len(strictErrs) > 0 {
		return nil, errors.Join(strictErrs...)
	}
	return obj, nil
}

// reject reports an unusable object and, when the file contributed it
// before, keeps that version in effect.
func (d *manifestDecoder) reject(key objKey, name, reason, detail string) {
	prev, had := d.previous[key]
	kept := had && key.Name != "" && !d.seen[key]
	if kept {
		d.seen[key] = true
		d.objects = append(d.objects, manifestObject{key: key, obj: prev})
		detail += "; keeping the last accepted version"
	}
	d.problem(name, reason, detail, kept)
}

func (d *manifestDecoder) problem(object, reason, detail string, kept bool) {
	d.problems = append(d.problems, ManifestProblem{File: d.path, Object: object, Reason: reason, Detail: detail, KeptPrevious: kept})
}
