package sysctl

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestProcRoot(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "net/ipv4"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "net/ipv4/ip_forward"), []byte("10\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := NewRoot(root)
	if err := s.Set("net/ipv4/ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	if v, err := s.Get("net/ipv4/ip_forward"); err != nil || v != "1" {
		t.Errorf("Get = %q, %v", v, err)
	}
	if err := s.Set("net/ipv4/vs/conntrack", "1"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Set on a missing key: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "net/ipv4/vs/conntrack")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Set created a missing key: %v", err)
	}
	if _, err := s.Get("net/ipv4/vs/conntrack"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Get on a missing key: %v", err)
	}
	if got := s.path("../../etc/passwd"); got != filepath.Join(root, "etc/passwd") {
		t.Errorf("path escapes root: %s", got)
	}
}

func TestProcDefaultRoot(t *testing.T) {
	if got := New().path("net/ipv4/ip_forward"); got != "/proc/sys/net/ipv4/ip_forward" {
		t.Errorf("path = %s", got)
	}
	if _, err := New().Get("kernel/osrelease"); err != nil {
		t.Errorf("Get kernel/osrelease: %v", err)
	}
}

func TestFake(t *testing.T) {
	f := NewFake(map[string]string{"a": "0", "b": "0"})
	f.SetReadOnly("b")
	if err := f.Set("a", "1"); err != nil {
		t.Error(err)
	}
	if v, err := f.Get("a"); err != nil || v != "1" {
		t.Errorf("Get a = %q, %v", v, err)
	}
	if err := f.Set("b", "1"); !errors.Is(err, fs.ErrPermission) {
		t.Errorf("Set read-only: %v", err)
	}
	if err := f.Set("c", "1"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Set missing: %v", err)
	}
	if _, err := f.Get("c"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Get missing: %v", err)
	}
	if got, want := f.Sets(), []string{"a=1", "b=1", "c=1"}; !slices.Equal(got, want) {
		t.Errorf("Sets = %v, want %v", got, want)
	}
	if got, want := f.Dump(), "a=1\nb=0\n"; got != want {
		t.Errorf("Dump = %q, want %q", got, want)
	}
}
