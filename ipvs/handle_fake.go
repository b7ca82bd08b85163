package ipvs

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/switchyard/switchyard/dataplane"
)

// FakeHandle is an in-memory IPVS with the kernel's semantics for the
// operations switchyard uses: ErrNotFound for a missing virtual or real
// server, ErrExists for duplicates, unknown schedulers and protocols
// rejected, real servers of another address family rejected (masquerading
// cannot cross families), connection counts kept across weight updates and
// dropped with the real server. It records every call for tests.
type FakeHandle struct {
	mu    sync.Mutex
	vss   map[Key]*fakeVS
	calls []string
	// timeouts start at the kernel's defaults (900 s, 120 s, 300 s).
	timeouts Timeouts
	// Fail, when set, is consulted before every call; a non-nil error is
	// returned instead of performing it. op is the call name as recorded.
	Fail func(op string, k Key) error
}

type fakeVS struct {
	vs  VirtualServer
	rss map[netip.AddrPort]RealServer
	// stats are the counters SetStats set (ReadTable): the zero AddrPort
	// holds the virtual server's own.
	stats map[netip.AddrPort]Stats
}

var _ Handle = (*FakeHandle)(nil)

// fakeSchedulers are the scheduler modules the fake "kernel" can load.
var fakeSchedulers = append([]string{"dh", "lblc", "lblcr", "fo", "ovf", "twos"}, dataplane.IPVSSchedulers...)

// NewFakeHandle returns an empty fake IPVS.
func NewFakeHandle() *FakeHandle {
	return &FakeHandle{vss: map[Key]*fakeVS{}, timeouts: Timeouts{TCP: 900 * time.Second, TCPFin: 120 * time.Second, UDP: 300 * time.Second}}
}

// Calls returns every call made so far, e.g. "AddRealServer 10.96.0.1:80/TCP 10.0.0.1:8080".
func (f *FakeHandle) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// Mutations returns the calls that changed (or tried to change) state.
func (f *FakeHandle) Mutations() []string {
	var out []string
	for _, c := range f.Calls() {
		if !strings.HasPrefix(c, "List") && !strings.HasPrefix(c, "Get") {
			out = append(out, c)
		}
	}
	return out
}

// ResetCalls forgets recorded calls.
func (f *FakeHandle) ResetCalls() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = nil
}

// SetConnections sets the connection counts of a real server, as traffic
// would.
func (f *FakeHandle) SetConnections(k Key, rs netip.AddrPort, active, inactive int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.vss[k]
	if !ok {
		return fmt.Errorf("virtual server %s: %w", k, ErrNotFound)
	}
	r, ok := v.rss[rs]
	if !ok {
		return fmt.Errorf("real server %s of %s: %w", rs, k, ErrNotFound)
	}
	r.ActiveConns, r.InactiveConns = active, inactive
	v.rss[rs] = r
	return nil
}

func (f *FakeHandle) record(op string, k Key, extra string) error {
	c := op + " " + k.String()
	if extra != "" {
		c += " " + extra
	}
	f.calls = append(f.calls, c)
	if f.Fail != nil {
		return f.Fail(op, k)
	}
	return nil
}

func (f *FakeHandle) ListVirtualServers() ([]VirtualServer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "ListVirtualServers")
	if f.Fail != nil {
		if err := f.Fail("ListVirtualServers", Key{}); err != nil {
			return nil, err
		}
	}
	out := make([]VirtualServer, 0, len(f.vss))
	for _, k := range f.sortedKeys() {
		out = append(out, f.vss[k].vs)
	}
	return out, nil
}

func (f *FakeHandle) GetVirtualServer(k Key) (VirtualServer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("GetVirtualServer", k, ""); err != nil {
		return VirtualServer{}, err
	}
	v, ok := f.vss[k]
	if !ok {
		return VirtualServer{}, fmt.Errorf("get virtual server %s: %w", k, ErrNotFound)
	}
	return v.vs, nil
}

func (f *FakeHandle) ListRealServers(k Key) ([]RealServer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("ListRealServers", k, ""); err != nil {
		return nil, err
	}
	v, ok := f.vss[k]
	if !ok {
		return nil, fmt.Errorf("list real servers of %s: %w", k, ErrNotFound)
	}
	return v.sortedRS(), nil
}

func (f *FakeHandle) AddVirtualServer(vs VirtualServer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("AddVirtualServer", vs.Key, vs.Scheduler); err != nil {
		return err
	}
	if err := validateFakeVS(vs); err != nil {
		return fmt.Errorf("add virtual server %s: %w", vs.Key, err)
	}
	if _, ok := f.vss[vs.Key]; ok {
		return fmt.Errorf("add virtual server %s: %w", vs.Key, ErrExists)
	}
	f.vss[vs.Key] = &fakeVS{vs: kernelView(vs), rss: map[netip.AddrPort]RealServer{}}
	return nil
}

func (f *FakeHandle) UpdateVirtualServer(vs VirtualServer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("UpdateVirtualServer", vs.Key, vs.Scheduler); err != nil {
		return err
	}
	v, ok := f.vss[vs.Key]
	if !ok {
		return fmt.Errorf("update virtual server %s: %w", vs.Key, ErrNotFound)
	}
	if err := validateFakeVS(vs); err != nil {
		return fmt.Errorf("update virtual server %s: %w", vs.Key, err)
	}
	v.vs = kernelView(vs)
	return nil
}

func (f *FakeHandle) DeleteVirtualServer(k Key) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("DeleteVirtualServer", k, ""); err != nil {
		return err
	}
	if _, ok := f.vss[k]; !ok {
		return fmt.Errorf("delete virtual server %s: %w", k, ErrNotFound)
	}
	delete(f.vss, k)
	return nil
}

func (f *FakeHandle) AddRealServer(k Key, rs RealServer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("AddRealServer", k, fmt.Sprintf("%s weight=%d", rs.Addr, rs.Weight)+rs.thresholds()); err != nil {
		return err
	}
	v, ok := f.vss[k]
	if !ok {
		return fmt.Errorf("add real server %s of %s: %w", rs.Addr, k, ErrNotFound)
	}
	if err := validateFakeRS(k, rs); err != nil {
		return fmt.Errorf("add real server %s of %s: %w", rs.Addr, k, err)
	}
	if _, ok := v.rss[rs.Addr]; ok {
		return fmt.Errorf("add real server %s of %s: %w", rs.Addr, k, ErrExists)
	}
	rs.ActiveConns, rs.InactiveConns = 0, 0
	v.rss[rs.Addr] = rs
	delete(v.stats, rs.Addr) // a new real server starts from zero
	return nil
}

func (f *FakeHandle) UpdateRealServer(k Key, rs RealServer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("UpdateRealServer", k, fmt.Sprintf("%s weight=%d", rs.Addr, rs.Weight)+rs.thresholds()); err != nil {
		return err
	}
	v, ok := f.vss[k]
	if !ok {
		return fmt.Errorf("update real server %s of %s: %w", rs.Addr, k, ErrNotFound)
	}
	old, ok := v.rss[rs.Addr]
	if !ok {
		return fmt.Errorf("update real server %s of %s: %w", rs.Addr, k, ErrNotFound)
	}
	if err := validateFakeRS(k, rs); err != nil {
		return fmt.Errorf("update real server %s of %s: %w", rs.Addr, k, err)
	}
	old.Weight, old.Forward, old.UpperThreshold, old.LowerThreshold = rs.Weight, rs.Forward, rs.UpperThreshold, rs.LowerThreshold
	v.rss[rs.Addr] = old
	return nil
}

func (f *FakeHandle) DeleteRealServer(k Key, addr netip.AddrPort) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("DeleteRealServer", k, addr.String()); err != nil {
		return err
	}
	v, ok := f.vss[k]
	if !ok {
		return fmt.Errorf("delete real server %s of %s: %w", addr, k, ErrNotFound)
	}
	if _, ok := v.rss[addr]; !ok {
		return fmt.Errorf("delete real server %s of %s: %w", addr, k, ErrNotFound)
	}
	delete(v.rss, addr)
	return nil
}

// Dump returns the whole table, one line per virtual and real server, in
// key order, with connection counts.
func (f *FakeHandle) Dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var b strings.Builder
	for _, k := range f.sortedKeys() {
		v := f.vss[k]
		b.WriteString(v.vs.header())
		b.WriteByte('\n')
		for _, r := range v.sortedRS() {
			b.WriteString(r.line(true))
			b.WriteByte('\n')
		}
	}
	return b.String()
}

func (f *FakeHandle) sortedKeys() []Key {
	return slices.SortedFunc(maps.Keys(f.vss), Key.Compare)
}

func (v *fakeVS) sortedRS() []RealServer {
	out := slices.Collect(maps.Values(v.rss))
	slices.SortFunc(out, func(a, b RealServer) int { return a.Addr.Compare(b.Addr) })
	return out
}

// kernelView drops what the kernel does not store.
func kernelView(vs VirtualServer) VirtualServer {
	return VirtualServer{Key: vs.Key, Scheduler: vs.Scheduler, Flags: vs.Flags &^ flagHashed, Timeout: vs.Timeout}
}

func validateFakeVS(vs VirtualServer) error {
	if !vs.IP.IsValid() || vs.IP.Is4In6() {
		return fmt.Errorf("invalid address %v", vs.IP)
	}
	if _, ok := protocolNumber(vs.Protocol); !ok {
		return fmt.Errorf("unsupported protocol %q", vs.Protocol)
	}
	if !slices.Contains(fakeSchedulers, vs.Scheduler) {
		return fmt.Errorf("scheduler %q not available", vs.Scheduler)
	}
	return nil
}

func validateFakeRS(k Key, rs RealServer) error {
	if !rs.Addr.Addr().IsValid() || rs.Addr.Port() == 0 {
		return fmt.Errorf("invalid real server address %v", rs.Addr)
	}
	if rs.Weight < 0 || rs.Weight > 65535 {
		return fmt.Errorf("invalid weight %d", rs.Weight)
	}
	if !sameFamily(k.IP, rs.Addr.Addr()) && rs.Forward == ForwardMasq {
		// The kernel allows mixed families only for tunnel forwarding.
		return fmt.Errorf("masquerading across address families is not supported")
	}
	return nil
}

func (f *FakeHandle) Timeouts() (Timeouts, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("GetTimeouts", Key{}, ""); err != nil {
		return Timeouts{}, err
	}
	return f.timeouts, nil
}

// SetTimeouts keeps the fields given as zero, as the kernel does.
func (f *FakeHandle) SetTimeouts(t Timeouts) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("SetTimeouts", Key{}, fmt.Sprintf("tcp=%v tcpfin=%v udp=%v", t.TCP, t.TCPFin, t.UDP)); err != nil {
		return err
	}
	for _, p := range []struct {
		dst *time.Duration
		v   time.Duration
	}{{&f.timeouts.TCP, t.TCP}, {&f.timeouts.TCPFin, t.TCPFin}, {&f.timeouts.UDP, t.UDP}} {
		if p.v != 0 {
			*p.dst = p.v.Truncate(time.Second)
		}
	}
	return nil
}
