// Package binaries builds the control plane's programs — kube-apiserver,
// upstream kube-proxy and etcd — from the Go modules this module pins
// (k8s.io/kubernetes and go.etcd.io/etcd/server/v3) and caches them between
// runs.
//
// The cache key covers everything that decides the output: the module build
// list (go.mod and go.sum), the etcd main, the Go version that builds and
// the build flags. A build
// happens only when no complete entry exists for the key; concurrent callers
// (go test runs packages in parallel) wait on a file lock instead of
// building twice.
package binaries

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// Paths are the built programs.
type Paths struct {
	Dir       string // the cache entry holding them
	APIServer string
	Proxy     string
	Etcd      string
}

// Packages built, by output name. The kube-* ones come from the module cache
// (go.mod's tool lines keep them in the module graph); etcd is this module's
// own tiny main around etcdmain.
var packages = []struct{ name, pkg string }{
	{"kube-apiserver", "k8s.io/kubernetes/cmd/kube-apiserver"},
	{"kube-proxy", "k8s.io/kubernetes/cmd/kube-proxy"},
	{"etcd", "./cmd/etcd"},
}

// kubeVersion is stamped into the kube binaries as a release build would be
// (without it they report v0.0.0-master). Keep it equal to go.mod's
// k8s.io/kubernetes version.
const kubeVersion = "v1.37.2"

// ldflags: no symbol tables (about a third smaller, faster to link) and the
// version fields hack/lib/version.sh sets in upstream builds.
var ldflags = strings.Join([]string{
	"-s", "-w",
	"-X k8s.io/component-base/version.gitMajor=1",
	"-X k8s.io/component-base/version.gitMinor=37",
	"-X k8s.io/component-base/version.gitVersion=" + kubeVersion,
	"-X k8s.io/component-base/version.gitTreeState=clean",
}, " ")

// buildArgs are the go build flags; part of the cache key. -mod=readonly
// proves the committed go.sum is complete (an incomplete one fails here
// instead of being patched behind our back).
var buildArgs = []string{"build", "-mod=readonly", "-trimpath", "-ldflags", ldflags}

// stamp marks a complete cache entry; its mtime is the entry's last use.
const stamp = ".complete"

// Options tune Build. The zero value builds into DefaultCacheRoot with the
// go command on PATH and discards the build's output.
type Options struct {
	// CacheRoot holds one directory per key. Empty: DefaultCacheRoot().
	CacheRoot string
	// GoCmd is the go command. Empty: "go".
	GoCmd string
	// Log receives progress lines and the go command's output.
	Log io.Writer
}

// DefaultCacheRoot is $SWITCHYARD_CLUSTER_CACHE if set, else
// switchyard-cluster under the user cache directory ($XDG_CACHE_HOME or
// ~/.cache).
func DefaultCacheRoot() (string, error) {
	if d := os.Getenv("SWITCHYARD_CLUSTER_CACHE"); d != "" {
		return d, nil
	}
	d, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("user cache dir: %w", err)
	}
	return filepath.Join(d, "switchyard-cluster"), nil
}

// ModuleDir is the directory of this module's go.mod, found from this
// source file's path (tests and `go run` see real paths).
func ModuleDir() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("cannot locate the binaries package source")
	}
	dir := filepath.Dir(filepath.Dir(file))
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		return "", fmt.Errorf("module dir of the test cluster: %w", err)
	}
	return dir, nil
}

// Build returns the cached binaries for the current module state, building
// them first when the cache has no complete entry. dir is the cache root
// (empty: DefaultCacheRoot). A cold build takes minutes; a warm call costs
// `go env` and `go list -m all` (a fraction of a second).
func Build(ctx context.Context, dir string) (Paths, error) {
	return BuildWith(ctx, Options{CacheRoot: dir})
}

// BuildWith is Build with options.
func BuildWith(ctx context.Context, opts Options) (Paths, error) {
	if opts.GoCmd == "" {
		opts.GoCmd = "go"
	}
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	if opts.CacheRoot == "" {
		root, err := DefaultCacheRoot()
		if err != nil {
			return Paths{}, err
		}
		opts.CacheRoot = root
	}
	mod, err := ModuleDir()
	if err != nil {
		return Paths{}, err
	}
	key, err := Key(ctx, opts.GoCmd, mod)
	if err != nil {
		return Paths{}, err
	}
	entry := filepath.Join(opts.CacheRoot, key)
	paths := Paths{
		Dir:       entry,
		APIServer: filepath.Join(entry, "kube-apiserver"),
		Proxy:     filepath.Join(entry, "kube-proxy"),
		Etcd:      filepath.Join(entry, "etcd"),
	}
	if complete(entry) {
		touch(entry)
		return paths, nil
	}

	if err := os.MkdirAll(opts.CacheRoot, 0o755); err != nil {
		return Paths{}, fmt.Errorf("cache root: %w", err)
	}
	unlock, err := lock(ctx, filepath.Join(opts.CacheRoot, key+".lock"))
	if err != nil {
		return Paths{}, err
	}
	defer unlock()
	if complete(entry) { // built by whoever held the lock before us
		return paths, nil
	}

	// Build into a scratch directory and rename it into place, so an
	// interrupted build never leaves a half entry under the key.
	tmp, err := os.MkdirTemp(opts.CacheRoot, key+".tmp-")
	if err != nil {
		return Paths{}, fmt.Errorf("build dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o755); err != nil { // MkdirTemp makes it 0700
		return Paths{}, fmt.Errorf("build dir: %w", err)
	}
	args := append([]string{}, buildArgs...)
	args = append(args, "-o", tmp+string(filepath.Separator))
	for _, p := range packages {
		args = append(args, p.pkg)
	}
	start := time.Now()
	fmt.Fprintf(opts.Log, "binaries: building kube-apiserver, kube-proxy and etcd into %s (a cold build takes minutes)\n", entry)
	cmd := exec.CommandContext(ctx, opts.GoCmd, args...)
	cmd.Dir = mod
	cmd.Env = append(os.Environ(), "GOWORK=off", "CGO_ENABLED=0")
	cmd.Stdout = opts.Log
	var stderr bytes.Buffer
	cmd.Stderr = io.MultiWriter(opts.Log, &stderr)
	if err := cmd.Run(); err != nil {
		return Paths{}, fmt.Errorf("go build: %w: %s", err, lastLines(stderr.String(), 20))
	}
	if err := os.WriteFile(filepath.Join(tmp, stamp), []byte(key+"\n"), 0o644); err != nil {
		return Paths{}, fmt.Errorf("stamp: %w", err)
	}
	_ = os.RemoveAll(entry) // an incomplete leftover under the key, if any
	if err := os.Rename(tmp, entry); err != nil {
		return Paths{}, fmt.Errorf("install build: %w", err)
	}
	fmt.Fprintf(opts.Log, "binaries: built in %s\n", time.Since(start).Round(time.Second))
	prune(opts.CacheRoot, key, opts.Log)
	return paths, nil
}

// unusedFor is how long an entry of another key stays in the cache after
// its last use: long enough for switching branches back and forth, short
// enough that each dependency bump's ~220 MB goes away.
const unusedFor = 14 * 24 * time.Hour

// prune removes the entries of other keys unused for unusedFor, with their
// lock files, and scratch directories of builds that were killed.
func prune(root, keep string, log io.Writer) {
	des, err := os.ReadDir(root)
	if err != nil {
		return
	}
	for _, de := range des {
		name := de.Name()
		if !de.IsDir() || strings.HasPrefix(name, keep) {
			continue
		}
		path := filepath.Join(root, name)
		used := time.Time{}
		if st, err := os.Stat(filepath.Join(path, stamp)); err == nil {
			used = st.ModTime()
		} else if st, err := os.Stat(path); err == nil {
			used = st.ModTime() // scratch or incomplete: when it was made
		}
		if time.Since(used) < unusedFor {
			continue
		}
		fmt.Fprintf(log, "binaries: removing %s (unused since %s)\n", path, used.Format(time.DateOnly))
		_ = os.RemoveAll(path)
		_ = os.Remove(path + ".lock")
	}
}

// Key is the cache key of the module at mod built by goCmd: a hash of the
// Go version and target, the build flags, the etcd main and the module
// build list (`go list -m all`: every module's selected version and
// replacement, whose content the module cache verifies against go.sum).
// Editing go.mod or go.sum without changing a version (a new test-only
// import already in the graph, a comment) keeps the key.
func Key(ctx context.Context, goCmd, mod string) (string, error) {
	env, err := goOutput(ctx, goCmd, mod, "env", "GOVERSION", "GOOS", "GOARCH")
	if err != nil {
		return "", err
	}
	list, err := goOutput(ctx, goCmd, mod, "list", "-mod=readonly", "-m", "all")
	if err != nil {
		return "", err
	}
	etcdMain, err := os.ReadFile(filepath.Join(mod, "cmd", "etcd", "main.go"))
	if err != nil {
		return "", fmt.Errorf("cache key: %w", err)
	}
	h := sha256.New()
	fmt.Fprintf(h, "switchyard-cluster-binaries v1\n%s\n%s\n", env, strings.Join(buildArgs, "\x00"))
	for _, p := range packages {
		fmt.Fprintf(h, "%s=%s\n", p.name, p.pkg)
	}
	fmt.Fprintf(h, "build list %d\n%s\netcd main %d\n%s", len(list), list, len(etcdMain), etcdMain)
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

func goOutput(ctx context.Context, goCmd, dir string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, goCmd, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go %s: %w: %s", args[0], err, lastLines(stderr.String(), 10))
	}
	return out, nil
}

func complete(entry string) bool {
	if _, err := os.Stat(filepath.Join(entry, stamp)); err != nil {
		return false
	}
	for _, p := range packages {
		if st, err := os.Stat(filepath.Join(entry, p.name)); err != nil || st.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

// touch records the entry's last use (for whoever prunes old entries).
func touch(entry string) {
	now := time.Now()
	_ = os.Chtimes(filepath.Join(entry, stamp), now, now)
}

// lock takes an exclusive flock on path, polling so ctx can cancel the wait.
func lock(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("build lock: %w", err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil // closing releases the lock
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("build lock: %w", err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("waiting for another build: %w", ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
