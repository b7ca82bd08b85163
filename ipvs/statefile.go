package ipvs

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// StateFileName is the file in Config.StateDir.
const StateFileName = "ipvs-state.json"

// drainKey names one real server of one virtual server.
type drainKey struct {
	VS Key
	RS netip.AddrPort
}

// persistentState is what must survive a restart of the agent (not of the
// node): which virtual servers on node addresses switchyard created (see
// the ownership rules in doc.go), and since when each removed real server
// has been draining, so a restart neither forgets drains (kubernetes#92019)
// nor restarts their timeout.
type persistentState struct {
	HostVS map[Key]bool
	Drains map[drainKey]time.Time
}

func newPersistentState() *persistentState {
	return &persistentState{HostVS: map[Key]bool{}, Drains: map[drainKey]time.Time{}}
}

func (s *persistentState) clone() *persistentState {
	return &persistentState{HostVS: maps.Clone(s.HostVS), Drains: maps.Clone(s.Drains)}
}

type stateFileJSON struct {
	Version             int         `json:"version"`
	HostVirtualServers  []string    `json:"hostVirtualServers"`
	DrainingRealServers []drainJSON `json:"drainingRealServers"`
}

type drainJSON struct {
	VirtualServer string    `json:"virtualServer"`
	RealServer    string    `json:"realServer"`
	Since         time.Time `json:"since"`
}

// encode is deterministic, so equal states give equal bytes.
func (s *persistentState) encode() ([]byte, error) {
	f := stateFileJSON{Version: 1, HostVirtualServers: []string{}, DrainingRealServers: []drainJSON{}}
	for _, k := range slices.SortedFunc(maps.Keys(s.HostVS), Key.Compare) {
		f.HostVirtualServers = append(f.HostVirtualServers, k.String())
	}
	keys := slices.SortedFunc(maps.Keys(s.Drains), func(a, b drainKey) int {
		if c := a.VS.Compare(b.VS); c != 0 {
			return c
		}
		return a.RS.Compare(b.RS)
	})
	for _, k := range keys {
		f.DrainingRealServers = append(f.DrainingRealServers, drainJSON{VirtualServer: k.VS.String(), RealServer: k.RS.String(), Since: s.Drains[k].UTC()})
	}
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

func decodeState(b []byte) (*persistentState, error) {
	var f stateFileJSON
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, err
	}
	if f.Version != 1 {
		return nil, fmt.Errorf("unknown version %d", f.Version)
	}
	s := newPersistentState()
	for _, v := range f.HostVirtualServers {
		k, err := ParseKey(v)
		if err != nil {
			return nil, err
		}
		s.HostVS[k] = true
	}
	for _, d := range f.DrainingRealServers {
		k, err := ParseKey(d.VirtualServer)
		if err != nil {
			return nil, err
		}
		rs, err := netip.ParseAddrPort(d.RealServer)
		if err != nil {
			return nil, fmt.Errorf("real server %q: %w", d.RealServer, err)
		}
		s.Drains[drainKey{k, rs}] = d.Since
	}
	return s, nil
}

// stateFile reads and atomically writes the persistent state.
type stateFile struct {
	path    string
	written []byte // last content read or written; avoids rewriting
}

func newStateFile(dir string) *stateFile {
	return &stateFile{path: filepath.Join(dir, StateFileName)}
}

// load returns the saved state, an empty one if there is none, or an empty
// one and an error if it is unreadable (the caller logs it: with a lost
// state file NodePort virtual servers are orphaned, never wrongly deleted).
func (f *stateFile) load() (*persistentState, error) {
	b, err := os.ReadFile(f.path)
	if errors.Is(err, fs.ErrNotExist) {
		f.written = nil
		return newPersistentState(), nil
	}
	if err != nil {
		return newPersistentState(), fmt.Errorf("read %s: %w", f.path, err)
	}
	s, err := decodeState(b)
	if err != nil {
		return newPersistentState(), fmt.Errorf("parse %s: %w", f.path, err)
	}
	f.written = b
	return s, nil
}

// save writes s unless the file already holds it. The write goes to a
// temporary file that is synced and renamed over the old one, so a crash
// leaves either the old or the new state, never a torn file.
func (f *stateFile) save(s *persistentState) error {
	b, err := s.encode()
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	if bytes.Equal(b, f.written) {
		return nil
	}
	dir := filepath.Dir(f.path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	tmp, err := os.CreateTemp(dir, "."+StateFileName+".*")
	if err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("write state: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write state: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if err := os.Rename(tmp.Name(), f.path); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync() // make the rename durable; best effort
		d.Close()
	}
	f.written = b
	return nil
}

// remove deletes the file; a missing file is fine.
func (f *stateFile) remove() error {
	if err := os.Remove(f.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", f.path, err)
	}
	f.written = nil
	return nil
}
