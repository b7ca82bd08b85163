package source

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/fsnotify/fsnotify"
	"k8s.io/klog/v2"
)

const (
	// Editors and `kubectl` write a file in several steps (truncate+write,
	// or temp file+rename); waiting for the burst to settle avoids
	// reading, and reporting, half-written files.
	defaultDebounce = 100 * time.Millisecond
	// A file rewritten continuously is still read at least this often.
	defaultMaxDelay = time.Second
	// The periodic rescan is a safety net for lost events (inotify queue
	// overflow) and re-establishes the watch if the directory was removed
	// and created again.
	defaultRescan = time.Minute
)

// RunManifests serves the objects defined by the manifest files in dir, for
// standalone use without an API server. It blocks until ctx is done and
// then returns nil; it returns an error only when dir cannot be watched at
// startup.
//
// Files: every *.yaml, *.yml and *.json directly in dir (subdirectories and
// dot files are ignored, so a ConfigMap volume works). YAML files may hold
// several "---" separated documents, JSON files a stream of objects; any
// document may be a List (kind List, ServiceList, EndpointSliceList, ...).
//
// Objects: Service (v1), EndpointSlice (discovery.k8s.io/v1), Node (v1;
// only this node's zone is used) and, when h also implements PodHandler,
// Pod (v1). Other kinds are ignored (logged at V(4)). Namespaced objects
// without a namespace go to "default". Objects are validated first; see
// ManifestProblem's reasons.
//
// Failures are contained the way an API server contains a rejected write:
//   - A file that cannot be read or parsed keeps its last accepted objects
//     until it parses again; other files are unaffected.
//   - An object that fails validation keeps its last accepted version from
//     the same file, or is skipped if it has none.
//   - An object defined twice is taken from the first file in name order
//     (or the first definition in a file); the other is reported.
//   - If dir itself becomes unreadable (removed), everything stays as last
//     read until it is back.
//
// Every problem is logged and passed to report (if not nil) once per
// distinct file content, not on every rescan.
//
// Changes are picked up through fsnotify on dir; bursts are debounced for
// 100ms, and writes through a temporary file and rename are seen like any
// other write; a full rescan every minute catches lost events. A removed
// file removes its objects. Only objects whose content changed are
// delivered: upserts and deletes by (kind, namespace, name). notify is
// called once per applied batch. Services and EndpointSlices (and Pods) are
// marked synced after the first full read.
func RunManifests(ctx context.Context, dir string, h Handler, notify func(), report func(ManifestProblem)) error {
	m, err := newManifestSource(dir, h, notify, report)
	if err != nil {
		return err
	}
	return m.run(ctx)
}

// manifestSource is the state of one RunManifests call; only its run
// goroutine touches it.
type manifestSource struct {
	dir    string
	h      Handler
	pods   PodHandler // nil: Pods are not read
	notify func()
	report func(ManifestProblem)

	debounce, maxDelay, rescan time.Duration

	files     map[string]*fileState // by base name
	dirErr    string                // last reported directory error
	dups      map[string]bool       // duplicate definitions reported
	delivered map[objKey]manifestObject
}

// fileState is what one file contributes.
type fileState struct {
	sum     [sha256.Size]byte // of the content last parsed
	readErr string            // last read error reported, "" if readable
	objects []manifestObject  // last accepted, in file order
}

func newManifestSource(dir string, h Handler, notify func(), report func(ManifestProblem)) (*manifestSource, error) {
	if h == nil {
		return nil, errors.New("manifests: handler is required")
	}
	if report == nil {
		report = func(ManifestProblem) {}
	}
	pods, _ := h.(PodHandler)
	return &manifestSource{
		dir:       dir,
		h:         h,
		pods:      pods,
		notify:    notifier(notify),
		report:    report,
		debounce:  defaultDebounce,
		maxDelay:  defaultMaxDelay,
		rescan:    defaultRescan,
		files:     map[string]*fileState{},
		dups:      map[string]bool{},
		delivered: map[objKey]manifestObject{},
	}, nil
}

func (m *manifestSource) run(ctx context.Context) error {
	if fi, err := os.Stat(m.dir); err != nil {
		return fmt.Errorf("manifests: %w", err)
	} else if !fi.IsDir() {
		return fmt.Errorf("manifests: %s is not a directory", m.dir)
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("manifests: creating watcher: %w", err)
	}
	defer w.Close()
	// Watch before the first read so that no write falls between the two.
	if err := w.Add(m.dir); err != nil {
		return fmt.Errorf("manifests: watching %s: %w", m.dir, err)
	}

	m.sync()
	m.h.SetServicesSynced()
	m.h.SetEndpointSlicesSynced()
	if m.pods != nil {
		m.pods.SetPodsSynced()
	}
	m.notify()
	klog.InfoS("Manifests loaded", "dir", m.dir, "files", len(m.files), "objects", len(m.delivered))

	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	defer debounce.Stop()
	rescan := time.NewTicker(m.rescan)
	defer rescan.Stop()
	var pendingSince time.Time // zero: no read scheduled
	schedule := func() {
		now := time.Now()
		if pendingSince.IsZero() {
			pendingSince = now
		}
		// Trailing debounce, capped so a busy file is still read.
		delay := min(m.debounce, max(0, m.maxDelay-now.Sub(pendingSince)))
		debounce.Reset(delay)
	}

	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("manifests: watcher closed")
			}
			// Any name counts, not only manifest names: a rename-based save
			// starts as a temporary name, and a ConfigMap update only swaps
			// the "..data" link. Attribute changes alone cannot change
			// content.
			if ev.Op == fsnotify.Chmod {
				continue
			}
			klog.V(5).InfoS("Manifest directory event", "event", ev.String())
			schedule()
		case err, ok := <-w.Errors:
			if !ok {
				return errors.New("manifests: watcher closed")
			}
			// Overflow means events were lost; a read catches up.
			klog.ErrorS(err, "Watching manifest directory", "dir", m.dir)
			schedule()
		case <-debounce.C:
			pendingSince = time.Time{}
			if m.sync() {
				m.notify()
			}
		case <-rescan.C:
			m.rewatch(w)
			if m.sync() {
				m.notify()
			}
		}
	}
}

// rewatch adds the directory again when its watch is gone (the directory
// was removed; inotify drops the watch with it).
func (m *manifestSource) rewatch(w *fsnotify.Watcher) {
	if len(w.WatchList()) > 0 {
		return
	}
	if err := w.Add(m.dir); err != nil {
		klog.V(2).InfoS("Manifest directory still not watchable", "dir", m.dir, "err", err)
		return
	}
	klog.InfoS("Watching manifest directory again", "dir", m.dir)
}

// sync reads the directory, delivers what changed and reports whether
// anything was delivered.
func (m *manifestSource) sync() bool {
	if !m.readDir() {
		return false
	}
	return m.deliver(m.merge())
}

// readDir re-reads every manifest file whose content changed. When the
// directory itself cannot be read it keeps everything and returns false.
func (m *manifestSource) readDir() bool {
	entries, err := os.ReadDir(m.dir)
	if err != nil {
		if msg := err.Error(); msg != m.dirErr {
			m.dirErr = msg
			m.problem(ManifestProblem{File: m.dir, Reason: ReasonReadError, Detail: msg, KeptPrevious: len(m.delivered) > 0})
		}
		return false
	}
	m.dirErr = ""
	next := make(map[string]*fileState, len(entries))
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !isManifestName(name) {
			continue
		}
		if st := m.readFile(name); st != nil {
			next[name] = st
		}
	}
	m.files = next
	return true
}

// readFile returns the new state of one file, or nil when it is gone.
func (m *manifestSource) readFile(name string) *fileState {
	path := filepath.Join(m.dir, name)
	prev := m.files[name]
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // removed since the listing (or a dangling link)
	}
	if err != nil {
		st := &fileState{readErr: err.Error()}
		if prev != nil {
			st.sum, st.objects = prev.sum, prev.objects
		}
		if prev == nil || prev.readErr != st.readErr {
			m.problem(ManifestProblem{File: path, Reason: ReasonReadError, Detail: st.readErr, KeptPrevious: len(st.objects) > 0})
		}
		return st
	}
	sum := sha256.Sum256(data)
	if prev != nil && prev.readErr == "" && prev.sum == sum {
		return prev
	}
	var previous []manifestObject
	if prev != nil {
		previous = prev.objects
	}
	objects, problems, err := decodeFile(path, data, m.pods != nil, previous)
	if err != nil {
		m.problem(ManifestProblem{File: path, Reason: ReasonParseError, Detail: err.Error(), KeptPrevious: len(previous) > 0})
		return &fileState{sum: sum, objects: previous}
	}
	for _, p := range problems {
		m.problem(p)
	}
	klog.V(2).InfoS("Read manifest file", "file", path, "objects", len(objects), "problems", len(problems))
	return &fileState{sum: sum, objects: objects}
}

// merge combines the files' objects; the first file in name order wins.
func (m *manifestSource) merge() map[objKey]manifestObject {
	names := make([]string, 0, len(m.files))
	for name := range m.files {
		names = append(names, name)
	}
	slices.Sort(names)
	desired := map[objKey]manifestObject{}
	owner := map[objKey]string{}
	dups := map[string]bool{}
	for _, name := range names {
		for _, o := range m.files[name].objects {
			if first, taken := owner[o.key]; taken {
				id := o.key.String() + "\x00" + name
				if !m.dups[id] {
					m.problem(ManifestProblem{
						File: filepath.Join(m.dir, name), Object: o.key.String(), Reason: ReasonDuplicateObject,
						Detail: "already defined in " + first + "; that definition is used",
					})
				}
				dups[id] = true
				continue
			}
			owner[o.key] = name
			desired[o.key] = o
		}
	}
	m.dups = dups
	return desired
}

func (m *manifestSource) problem(p ManifestProblem) {
	klog.ErrorS(errors.New(p.Detail), "Manifest rejected", "file", p.File, "object", p.Object, "reason", p.Reason, "keptPrevious", p.KeptPrevious)
	m.report(p)
}
