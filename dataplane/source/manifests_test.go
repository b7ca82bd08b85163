package source

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func service(ns, name string, port int) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: %s, namespace: %s}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: %d}]
`, name, ns, port)
}

func slice(ns, name, svc, addr string) string {
	return fmt.Sprintf(`apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: %s
  namespace: %s
  labels: {kubernetes.io/service-name: %s}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [%q]}]
`, name, ns, svc, addr)
}

func writeFile(t *testing.T, dir, name, data string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// startManifests runs a manifest source on dir with a short debounce and
// stops it when the test ends.
func startManifests(t *testing.T, dir string, h Handler, notify func(), probs *problems) {
	t.Helper()
	m, err := newManifestSource(dir, h, notify, probs.report)
	if err != nil {
		t.Fatal(err)
	}
	m.debounce = 20 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(waitTimeout):
			t.Errorf("run did not return after cancel")
		}
	})
}

// startAndSync starts the source and waits for the first full read; it
// returns how many events that read produced.
func startAndSync(t *testing.T, dir string, rec *recorder, probs *problems) int {
	t.Helper()
	startManifests(t, dir, rec, rec.notify, probs)
	eventually(t, "initial read", func() bool { return rec.with(func(r *recorder) bool { return r.synced["slices"] }) })
	return len(rec.Events())
}

// waitEvents waits until the recorder has events beyond from and returns
// them, sorted.
func waitEvents(t *testing.T, rec *recorder, from int, want ...string) {
	t.Helper()
	eventually(t, fmt.Sprintf("events %q", want), func() bool { return len(rec.Events()) >= from+len(want) })
	got := rec.Events()[from:]
	if !slices.Equal(got, want) {
		t.Fatalf("events %q, want %q", got, want)
	}
}

// settle proves that nothing else is delivered for a while: it writes a
// marker file, waits for the marker Service to arrive (reads are in order),
// and returns the events between.
func settle(t *testing.T, dir string, rec *recorder, from int) []string {
	t.Helper()
	name := fmt.Sprintf("zz-marker-%d", from)
	writeFile(t, dir, name+".yaml", service("marker", name, 1))
	eventually(t, "marker", func() bool { return rec.with(func(r *recorder) bool { return r.services["marker/"+name] != nil }) })
	ev := rec.Events()[from:]
	return slices.DeleteFunc(ev, func(e string) bool { return strings.HasPrefix(e, "svc+ marker/") })
}

func TestManifestsInitialLoad(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "a.yaml", "---\n"+service("demo", "web", 80)+"---\n"+slice("demo", "web-1", "web", "10.244.1.10")+"---\n")
	writeFile(t, dir, "b.yml", `apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: dns}
  spec: {clusterIP: 10.96.0.53, ports: [{port: 53, protocol: UDP}]}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: ignored}
`)
	writeFile(t, dir, "c.json", `{"apiVersion":"v1","kind":"Node","metadata":{"name":"node-a","labels":{"topology.kubernetes.io/zone":"z1"}}}`)
	writeFile(t, dir, ".hidden.yaml", service("demo", "hidden", 80))
	writeFile(t, dir, "notes.txt", service("demo", "txt", 80))
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "sub"), "nested.yaml", service("demo", "nested", 80))

	rec := newRecorder()
	var probs problems
	startAndSync(t, dir, rec, &probs)
	want := []string{
		"node+ node-a zone=z1", "slice+ demo/web-1", "svc+ default/dns", "svc+ demo/web",
		"synced services", "synced slices",
	}
	if got := rec.Events(); !slices.Equal(got, want) {
		t.Errorf("events %q, want %q", got, want)
	}
	if p := probs.List(); len(p) > 0 {
		t.Errorf("problems: %v", p)
	}
	eventually(t, "notify after the initial read", func() bool { return rec.with(func(r *recorder) bool { return r.notified == 1 }) })
}

func TestManifestsEditDeliversOnlyChanges(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "a.yaml", service("demo", "a", 80)+"---\n"+slice("demo", "a-1", "a", "10.244.1.10"))
	writeFile(t, dir, "b.yaml", service("demo", "b", 80))
	rec := newRecorder()
	var probs problems
	n := startAndSync(t, dir, rec, &probs)

	// Change the slice only; the Service in the same file is unchanged.
	writeFile(t, dir, "a.yaml", service("demo", "a", 80)+"---\n"+slice("demo", "a-1", "a", "10.244.1.11"))
	waitEvents(t, rec, n, "slice+ demo/a-1")
	if got := rec.with(func(r *recorder) bool { return r.slices["demo/a-1"].Endpoints[0].Addresses[0] == "10.244.1.11" }); !got {
		t.Error("slice not updated")
	}
	// Rewriting identical content (touch, or a no-op save) delivers nothing.
	n = len(rec.Events())
	writeFile(t, dir, "b.yaml", service("demo", "b", 80))
	if ev := settle(t, dir, rec, n); len(ev) > 0 {
		t.Errorf("identical rewrite delivered %q", ev)
	}
	// Removing an object from a file deletes just that object.
	n = len(rec.Events())
	writeFile(t, dir, "a.yaml", service("demo", "a", 81))
	waitEvents(t, rec, n, "svc+ demo/a", "slice- demo/a-1")
}

func TestManifestsDeleteFile(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "a.yaml", service("demo", "a", 80)+"---\n"+slice("demo", "a-1", "a", "10.244.1.10"))
	writeFile(t, dir, "b.yaml", service("demo", "b", 80))
	rec := newRecorder()
	var probs problems
	n := startAndSync(t, dir, rec, &probs)

	if err := os.Remove(filepath.Join(dir, "a.yaml")); err != nil {
		t.Fatal(err)
	}
	// The Service goes before its endpoints.
	waitEvents(t, rec, n, "svc- demo/a", "slice- demo/a-1")
	if !rec.with(func(r *recorder) bool { return r.services["demo/b"] != nil }) {
		t.Error("b.yaml's Service was deleted too")
	}
}

func TestManifestsBrokenFile(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "a.yaml", service("demo", "a", 80))
	writeFile(t, dir, "b.yaml", service("demo", "b", 80)+"---\n"+slice("demo", "b-1", "b", "10.244.1.10"))
	rec := newRecorder()
	var probs problems
	n := startAndSync(t, dir, rec, &probs)

	// b.yaml breaks: its objects stay as last seen.
	writeFile(t, dir, "b.yaml", "apiVersion: v1\nkind: Service\n  broken: [\n")
	eventually(t, "parse error reported", func() bool { return len(probs.List()) == 1 })
	p := probs.List()[0]
	if p.Reason != ReasonParseError || p.File != filepath.Join(dir, "b.yaml") || p.Object != "" || !p.KeptPrevious {
		t.Errorf("problem %+v", p)
	}
	// A broken new file is reported; nothing is delivered for either.
	writeFile(t, dir, "c.yaml", "{{{")
	eventually(t, "second parse error", func() bool { return len(probs.List()) == 2 })
	if p := probs.List()[1]; p.File != filepath.Join(dir, "c.yaml") || p.KeptPrevious {
		t.Errorf("problem %+v", p)
	}
	// Edits elsewhere still work and do not report the broken files again.
	writeFile(t, dir, "a.yaml", service("demo", "a", 81))
	waitEvents(t, rec, n, "svc+ demo/a")
	if ev := settle(t, dir, rec, n+1); len(ev) > 0 {
		t.Errorf("unexpected events %q", ev)
	}
	if got := len(probs.List()); got != 2 {
		t.Errorf("%d problems, want the 2 broken files reported once: %v", got, probs.List())
	}

	// Fixed: the new content replaces the kept objects.
	n = len(rec.Events())
	writeFile(t, dir, "b.yaml", service("demo", "b", 82))
	waitEvents(t, rec, n, "svc+ demo/b", "slice- demo/b-1")
}

func TestManifestsInvalidEditKeepsObject(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "a.yaml", service("demo", "a", 80)+"---\n"+service("demo", "b", 80))
	rec := newRecorder()
	var probs problems
	n := startAndSync(t, dir, rec, &probs)

	// a gets an invalid port, b a valid change: b is updated, a keeps 80.
	writeFile(t, dir, "a.yaml", service("demo", "a", 99999)+"---\n"+service("demo", "b", 81))
	waitEvents(t, rec, n, "svc+ demo/b")
	eventually(t, "problem", func() bool { return len(probs.List()) == 1 })
	if p := probs.List()[0]; p.Reason != ReasonInvalidObject || p.Object != "Service demo/a" || !p.KeptPrevious {
		t.Errorf("problem %+v", p)
	}
	if !rec.with(func(r *recorder) bool { return r.services["demo/a"].Spec.Ports[0].Port == 80 }) {
		t.Error("invalid edit changed the Service")
	}
}

func TestManifestsDuplicateObject(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "a.yaml", service("demo", "web", 80))
	writeFile(t, dir, "b.yaml", service("demo", "web", 81))
	rec := newRecorder()
	var probs problems
	n := startAndSync(t, dir, rec, &probs)

	if !rec.with(func(r *recorder) bool { return r.services["demo/web"].Spec.Ports[0].Port == 80 }) {
		t.Error("the first file by name should win")
	}
	ps := probs.List()
	if len(ps) != 1 || ps[0].Reason != ReasonDuplicateObject || ps[0].File != filepath.Join(dir, "b.yaml") || ps[0].Object != "Service demo/web" {
		t.Fatalf("problems %+v", ps)
	}
	// Without a.yaml the definition in b.yaml takes over.
	if err := os.Remove(filepath.Join(dir, "a.yaml")); err != nil {
		t.Fatal(err)
	}
	waitEvents(t, rec, n, "svc+ demo/web")
	if !rec.with(func(r *recorder) bool { return r.services["demo/web"].Spec.Ports[0].Port == 81 }) {
		t.Error("b.yaml's definition not delivered")
	}
}

// Editors (vim, kubectl edit, atomic writers) save by writing a temporary
// file and renaming it over the original.
func TestManifestsRenameWrite(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "web.yaml", service("demo", "web", 80))
	rec := newRecorder()
	var probs problems
	n := startAndSync(t, dir, rec, &probs)

	writeFile(t, dir, ".web.yaml.swp", service("demo", "web", 81))
	if err := os.Rename(filepath.Join(dir, ".web.yaml.swp"), filepath.Join(dir, "web.yaml")); err != nil {
		t.Fatal(err)
	}
	waitEvents(t, rec, n, "svc+ demo/web")
	if !rec.with(func(r *recorder) bool { return r.services["demo/web"].Spec.Ports[0].Port == 81 }) {
		t.Error("renamed-in content not delivered")
	}
	// Renaming it away from a manifest name deletes its objects.
	n = len(rec.Events())
	if err := os.Rename(filepath.Join(dir, "web.yaml"), filepath.Join(dir, "web.yaml.bak")); err != nil {
		t.Fatal(err)
	}
	waitEvents(t, rec, n, "svc- demo/web")
	if p := probs.List(); len(p) > 0 {
		t.Errorf("problems: %v", p)
	}
}

func TestManifestsPods(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "p.yaml", `apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  containers: [{name: c, ports: [{containerPort: 80, hostPort: 8080}]}]
`)
	rec := newPodRecorder()
	var probs problems
	startManifests(t, dir, rec, nil, &probs)
	eventually(t, "pods synced", func() bool { return rec.with(func(r *recorder) bool { return r.synced["pods"] }) })
	if got, want := rec.Events(), []string{"pod+ default/p", "synced services", "synced slices", "synced pods"}; !slices.Equal(got, want) {
		t.Errorf("events %q, want %q", got, want)
	}
	n := len(rec.Events())
	if err := os.Remove(filepath.Join(dir, "p.yaml")); err != nil {
		t.Fatal(err)
	}
	waitEvents(t, rec.recorder, n, "pod- default/p")
}

func TestRunManifestsErrors(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	rec := newRecorder()
	if err := RunManifests(ctx, filepath.Join(dir, "missing"), rec, nil, nil); err == nil {
		t.Error("missing directory: no error")
	}
	writeFile(t, dir, "f.yaml", "")
	if err := RunManifests(ctx, filepath.Join(dir, "f.yaml"), rec, nil, nil); err == nil {
		t.Error("file instead of directory: no error")
	}
	if err := RunManifests(ctx, dir, nil, nil, nil); err == nil {
		t.Error("nil handler: no error")
	}
	if len(rec.Events()) > 0 {
		t.Errorf("events after errors: %q", rec.Events())
	}
}

// The exported entry point with nil notify and report.
func TestRunManifestsStopsOnCancel(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "a.yaml", service("demo", "a", 80))
	rec := newRecorder()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- RunManifests(ctx, dir, rec, nil, nil) }()
	eventually(t, "initial read", func() bool { return rec.with(func(r *recorder) bool { return r.synced["services"] }) })
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("RunManifests: %v", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("RunManifests did not return")
	}
	if rec.with(func(r *recorder) bool { return r.services["demo/a"] == nil }) {
		t.Error("Service not delivered")
	}
}

// A ConfigMap volume: each key is a symlink through "..data", which the
// kubelet swaps atomically to a new timestamped directory on update.
func TestManifestsConfigMapVolume(t *testing.T) {
	dir := t.TempDir()
	mustDo(t, func() error { return os.Mkdir(filepath.Join(dir, "..v1"), 0o755) })
	writeFile(t, filepath.Join(dir, "..v1"), "web.yaml", service("demo", "web", 80))
	mustDo(t, func() error { return os.Symlink("..v1", filepath.Join(dir, "..data")) })
	mustDo(t, func() error { return os.Symlink(filepath.Join("..data", "web.yaml"), filepath.Join(dir, "web.yaml")) })
	rec := newRecorder()
	var probs problems
	n := startAndSync(t, dir, rec, &probs)
	if !rec.with(func(r *recorder) bool { return r.services["demo/web"] != nil }) {
		t.Fatalf("events %q: Service not read through the symlinks", rec.Events())
	}

	mustDo(t, func() error { return os.Mkdir(filepath.Join(dir, "..v2"), 0o755) })
	writeFile(t, filepath.Join(dir, "..v2"), "web.yaml", service("demo", "web", 81))
	mustDo(t, func() error { return os.Symlink("..v2", filepath.Join(dir, "..data_tmp")) })
	mustDo(t, func() error { return os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")) })
	mustDo(t, func() error { return os.RemoveAll(filepath.Join(dir, "..v1")) })
	waitEvents(t, rec, n, "svc+ demo/web")
	if !rec.with(func(r *recorder) bool { return r.services["demo/web"].Spec.Ports[0].Port == 81 }) {
		t.Error("update through ..data not delivered")
	}
	if p := probs.List(); len(p) > 0 {
		t.Errorf("problems: %v", p)
	}
}

// A burst of writes is read once it settles, not once per write.
func TestManifestsDebounce(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "web.yaml", service("demo", "web", 80))
	rec := newRecorder()
	var probs problems
	m, err := newManifestSource(dir, rec, rec.notify, probs.report)
	if err != nil {
		t.Fatal(err)
	}
	// Long enough that scheduling delays between the writes below cannot
	// split the burst, short enough to keep the test fast.
	m.debounce = 300 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.run(ctx) }()
	defer func() { cancel(); <-done }()
	eventually(t, "initial read", func() bool { return rec.with(func(r *recorder) bool { return r.synced["slices"] }) })
	n := len(rec.Events())

	const writes = 20
	for i := 1; i <= writes; i++ {
		writeFile(t, dir, "web.yaml", service("demo", "web", 1000+i))
	}
	eventually(t, "last write", func() bool {
		return rec.with(func(r *recorder) bool {
			// Absent for a moment if a read met a file mid-write.
			s := r.services["demo/web"]
			return s != nil && s.Spec.Ports[0].Port == 1000+writes
		})
	})
	// Normally exactly one read; a little slack for very slow machines.
	if got := len(rec.Events()) - n; got > 3 {
		t.Errorf("%d deliveries for a burst of %d writes: %q", got, writes, rec.Events()[n:])
	}
}
