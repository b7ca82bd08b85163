package binaries

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// fakeModule writes a module without dependencies shaped like this one.
func fakeModule(t *testing.T, gomod, etcdMain string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "cmd", "etcd"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{"go.mod": gomod, "cmd/etcd/main.go": etcdMain} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestKey(t *testing.T) {
	ctx := context.Background()
	const gomod = "module example.com/fake\n\ngo 1.26.0\n"
	key := func(dir string) string {
		t.Helper()
		k, err := Key(ctx, "go", dir)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	base := key(fakeModule(t, gomod, "package main\n"))
	if again := key(fakeModule(t, gomod, "package main\n")); again != base {
		t.Errorf("same inputs, keys %s and %s", base, again)
	}
	if c := key(fakeModule(t, gomod+"// a comment\n", "package main\n")); c != base {
		t.Errorf("a comment in go.mod changed the key: %s -> %s", base, c)
	}
	if c := key(fakeModule(t, gomod, "package main\n\nfunc init() {}\n")); c == base {
		t.Error("a different etcd main kept the key")
	}
	// A dependency (a local one: no download) changes the build list.
	dep := fakeModule(t, gomod+"\nrequire example.com/x v0.0.0\n\nreplace example.com/x => ./x\n", "package main\n")
	if err := os.MkdirAll(filepath.Join(dep, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dep, "x", "go.mod"), []byte("module example.com/x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if c := key(dep); c == base {
		t.Error("a new dependency kept the key")
	}
}

func TestPrune(t *testing.T) {
	root := t.TempDir()
	old := time.Now().Add(-unusedFor - time.Hour)
	mk := func(name string, complete bool, mtime time.Time) string {
		dir := filepath.Join(root, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		f := dir
		if complete {
			f = filepath.Join(dir, stamp)
			if err := os.WriteFile(f, nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Chtimes(f, mtime, mtime); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	keep := mk("aaaa", true, old)          // the current key, however old
	recent := mk("bbbb", true, time.Now()) // another key, used lately
	stale := mk("cccc", true, old)
	scratch := mk("dddd.tmp-1", false, old)
	prune(root, "aaaa", io.Discard)
	for dir, want := range map[string]bool{keep: true, recent: true, stale: false, scratch: false} {
		_, err := os.Stat(dir)
		if got := err == nil; got != want {
			t.Errorf("%s exists = %v, want %v", filepath.Base(dir), got, want)
		}
	}
}
