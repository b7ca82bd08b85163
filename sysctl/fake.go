package sysctl

import (
	"fmt"
	"io/fs"
	"maps"
	"slices"
	"strings"
	"sync"
)

// Fake is an in-memory Interface. Parameters it does not hold are missing
// (fs.ErrNotExist on Get and Set, as when a module is not loaded);
// ReadOnly ones refuse writes (fs.ErrPermission, as on a read-only mount).
// Every attempted write is recorded, failed ones included.
type Fake struct {
	mu     sync.Mutex
	values map[string]string
	// ReadOnly marks parameters whose writes fail. Set it before use or
	// through SetReadOnly.
	ReadOnly map[string]bool
	sets     []string
}

var _ Interface = (*Fake)(nil)

// NewFake returns a fake holding a copy of values.
func NewFake(values map[string]string) *Fake {
	if values == nil {
		values = map[string]string{}
	}
	return &Fake{values: maps.Clone(values), ReadOnly: map[string]bool{}}
}

// SetReadOnly makes writes to name fail.
func (f *Fake) SetReadOnly(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ReadOnly[name] = true
}

func (f *Fake) Get(name string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.values[name]
	if !ok {
		return "", fmt.Errorf("read sysctl %s: %w", name, fs.ErrNotExist)
	}
	return v, nil
}

func (f *Fake) Set(name, value string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sets = append(f.sets, name+"="+value)
	if _, ok := f.values[name]; !ok {
		return fmt.Errorf("write sysctl %s=%s: %w", name, value, fs.ErrNotExist)
	}
	if f.ReadOnly[name] {
		return fmt.Errorf("write sysctl %s=%s: %w", name, value, fs.ErrPermission)
	}
	f.values[name] = value
	return nil
}

// Sets returns every write attempted, as "name=value", in order.
func (f *Fake) Sets() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.sets)
}

// Dump lists every name=value in name order, one a line.
func (f *Fake) Dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(f.values)) {
		b.WriteString(k + "=" + f.values[k] + "\n")
	}
	return b.String()
}
