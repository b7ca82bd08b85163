package shed

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/switchyard/switchyard/test/netnstest"
)

// fakeProc makes a directory shaped like /proc whose processes' ns/net
// links point at the given namespace paths, so a test controls exactly
// what the index scans.
func fakeProc(t *testing.T, nsPaths ...string) string {
	t.Helper()
	dir := t.TempDir()
	for i, p := range nsPaths {
		d := filepath.Join(dir, fmt.Sprint(100+i), "ns")
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(p, filepath.Join(d, "net")); err != nil {
			t.Fatal(err)
		}
	}
	// Not processes: never scanned.
	if err := os.MkdirAll(filepath.Join(dir, "sys"), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// nsFds counts this process's open file descriptors on the namespace at
// path (the netnstest.NS itself holds one).
func nsFds(t *testing.T, path string) int {
	t.Helper()
	k, err := statKey(path)
	if err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if fk, err := statKey(filepath.Join("/proc/self/fd", e.Name())); err == nil && fk == k {
			n++
		}
	}
	return n
}

func openCookie(t *testing.T, x *NetnsIndex, cookie uint64) {
	t.Helper()
	h, err := x.Open(cookie)
	if err != nil {
		t.Fatalf("open netns cookie %d: %v", cookie, err)
	}
	defer h.Close()
	got, err := NetnsCookie(h)
	if err != nil {
		t.Fatal(err)
	}
	if got != cookie {
		t.Fatalf("Open(%d) returned a handle on netns %d", cookie, got)
	}
}

func needRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces")
	}
}

// Namespaces are found by the cookie their sockets report, via pinned
// names and via processes, each once however many processes share it.
func TestNetnsIndexFindsByCookie(t *testing.T) {
	needRoot(t)
	a, b := netnstest.New(t, "sy-shi"), netnstest.New(t, "sy-shi")
	named := t.TempDir()
	if err := os.Symlink("/run/netns/"+a.Name(), filepath.Join(named, "pod-a")); err != nil {
		t.Fatal(err)
	}
	// Three "processes": two in b, one in our own namespace.
	proc := fakeProc(t, "/run/netns/"+b.Name(), "/run/netns/"+b.Name(), "/proc/self/ns/net")
	x := NewNetnsIndex(NetnsIndexConfig{ProcDir: proc, NamedDirs: []string{named}})
	defer x.Close()

	for _, ns := range []*netnstest.NS{a, b, nil} {
		openCookie(t, x, nsCookie(t, ns))
	}
	if x.Len() != 3 {
		t.Errorf("index holds %d namespaces, want 3 (a, b once, ours)", x.Len())
	}
	if _, err := x.Open(^uint64(0)); !errors.Is(err, ErrNetnsNotFound) {
		t.Errorf("unknown cookie: %v, want ErrNetnsNotFound", err)
	}
	// A hit needs no scan; the miss above rescanned once.
	scans := x.scans
	openCookie(t, x, nsCookie(t, a))
	if x.scans != scans {
		t.Errorf("a known cookie rescanned (%d -> %d scans)", scans, x.scans)
	}
}

// The index keeps at most MaxHandles namespace fds, closes the ones it
// evicts, and still opens evicted namespaces by path.
func TestNetnsIndexBounded(t *testing.T) {
	needRoot(t)
	var nss []*netnstest.NS
	var paths []string
	for range 3 {
		ns := netnstest.New(t, "sy-shb")
		nss = append(nss, ns)
		paths = append(paths, "/run/netns/"+ns.Name())
	}
	x := NewNetnsIndex(NetnsIndexConfig{ProcDir: fakeProc(t, paths...), NamedDirs: []string{}, MaxHandles: 1})
	defer x.Close()
	before := make([]int, len(paths))
	for i, p := range paths {
		before[i] = nsFds(t, p)
	}
	for round := range 2 {
		for i, ns := range nss {
			openCookie(t, x, nsCookie(t, ns))
			if x.held > 1 {
				t.Fatalf("round %d: %d handles held, bound is 1", round, x.held)
			}
			// The one just used is held, the others are closed.
			for j, p := range paths {
				want := before[j]
				if j == i {
					want++
				}
				if got := nsFds(t, p); got != want {
					t.Errorf("round %d after opening ns %d: %d fds on ns %d, want %d", round, i, got, j, want)
				}
			}
		}
	}
	if err := x.Close(); err != nil {
		t.Fatal(err)
	}
	for j, p := range paths {
		if got := nsFds(t, p); got != before[j] {
			t.Errorf("after Close: %d fds on ns %d, want %d", got, j, before[j])
		}
	}
}

// A namespace deleted after the index saw it is not found, and the index
// drops (closes) its handle rather than keeping the namespace alive.
func TestNetnsIndexForgetsDeletedNamespaces(t *testing.T) {
	needRoot(t)
	x := NewNetnsIndex(NetnsIndexConfig{})
	defer x.Close()
	live := netnstest.New(t, "sy-shl")
	openCookie(t, x, nsCookie(t, live))
	gone := goneNetnsCookie(t, x)

	hs, errs := x.OpenAll([]uint64{gone, nsCookie(t, live)})
	for _, h := range hs {
		h.Close()
	}
	if len(hs) != 1 || !errors.Is(errs[gone], ErrNetnsNotFound) || len(errs) != 1 {
		t.Fatalf("OpenAll(gone, live): %d handles, errors %v; want the live one and ErrNetnsNotFound for the gone one", len(hs), errs)
	}
	for c, e := range x.byCookie {
		if c == gone {
			t.Errorf("index still holds the deleted namespace (%+v)", e)
		}
	}
}
