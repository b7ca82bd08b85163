package ipvs

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
)

// FakeSysctl is an in-memory /proc/sys. Keys that were never set are
// missing (ErrNotFound on Get and Set, as when a module is not loaded);
// ReadOnly keys refuse writes.
type FakeSysctl struct {
	mu       sync.Mutex
	values   map[string]string
	ReadOnly map[string]bool
	sets     []string
}

var _ Sysctl = (*FakeSysctl)(nil)

// NewFakeSysctl returns a fake holding initial.
func NewFakeSysctl(initial map[string]string) *FakeSysctl {
	return &FakeSysctl{values: maps.Clone(initial), ReadOnly: map[string]bool{}}
}

// NewFakeIPVSSysctl returns a fake with the keys of a 6.1 kernel with
// ip_vs loaded, at their kernel defaults.
func NewFakeIPVSSysctl() *FakeSysctl {
	return NewFakeSysctl(map[string]string{
		sysctlOSRelease:               "6.1.0-56-amd64",
		sysctlForward:                 "0",
		sysctlVSConntrack:             "0",
		sysctlConnReuseMode:           "1",
		sysctlExpireNoDestConn:        "0",
		sysctlExpireQuiescentTemplate: "0",
		sysctlARPIgnore:               "0",
		sysctlARPAnnounce:             "0",
	})
}

func (f *FakeSysctl) Get(key string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.values[key]
	if !ok {
		return "", fmt.Errorf("sysctl %s: %w", key, ErrNotFound)
	}
	return v, nil
}

func (f *FakeSysctl) Set(key, value string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sets = append(f.sets, key+"="+value)
	if _, ok := f.values[key]; !ok {
		return fmt.Errorf("sysctl %s: %w", key, ErrNotFound)
	}
	if f.ReadOnly[key] {
		return fmt.Errorf("sysctl %s: permission denied", key)
	}
	f.values[key] = value
	return nil
}

// Sets returns every write attempted, as "key=value".
func (f *FakeSysctl) Sets() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.sets)
}

// Dump lists every key=value in key order.
func (f *FakeSysctl) Dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(f.values)) {
		b.WriteString(k + "=" + f.values[k] + "\n")
	}
	return b.String()
}
