package ipvs

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/dataplane"
)

func TestNodePortIPs(t *testing.T) {
	node := addrs("127.0.0.1", "::1", "192.168.1.10", "10.0.0.5", "fe80::1", "2001:db8::10", "169.254.1.1")
	tests := []struct {
		prefixes []string
		want     string
	}{
		{nil, "10.0.0.5 169.254.1.1 192.168.1.10 2001:db8::10"},
		{[]string{"192.168.0.0/16"}, "192.168.1.10"},
		{[]string{"0.0.0.0/0"}, "10.0.0.5 127.0.0.1 169.254.1.1 192.168.1.10"},
		{[]string{"127.0.0.0/8", "2001:db8::/64"}, "127.0.0.1 2001:db8::10"},
		{[]string{"fe80::/10"}, ""},
	}
	for _, tc := range tests {
		var ps []netip.Prefix
		for _, p := range tc.prefixes {
			ps = append(ps, mustPrefix(p))
		}
		var got []string
		for _, a := range NodePortIPs(node, ps) {
			got = append(got, a.String())
		}
		if strings.Join(got, " ") != tc.want {
			t.Errorf("prefixes %v: got %v, want %s", tc.prefixes, got, tc.want)
		}
	}
}

func TestParseKey(t *testing.T) {
	for _, s := range []string{"10.96.0.1:80/TCP", "[fd00::1]:53/UDP", "1.2.3.4:3868/SCTP"} {
		k, err := ParseKey(s)
		if err != nil || k.String() != s {
			t.Errorf("ParseKey(%q) = %v, %v", s, k, err)
		}
	}
	for _, s := range []string{"10.96.0.1:80", "10.96.0.1/TCP", "10.96.0.1:80/ICMP", "x:1/TCP"} {
		if _, err := ParseKey(s); err == nil {
			t.Errorf("ParseKey(%q) succeeded", s)
		}
	}
}

func TestStateFileRoundTrip(t *testing.T) {
	dir := t.TempDir()
	f := newStateFile(dir)
	s, err := f.load()
	if err != nil || len(s.HostVS) != 0 {
		t.Fatalf("empty load: %v %v", s, err)
	}
	s.HostVS[key("192.168.1.10:30080/TCP")] = true
	since := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	s.Drains[drainKey{key("[fd00::1]:80/TCP"), addrPort("[fd00:244::5]:8080")}] = since
	if err := f.save(s); err != nil {
		t.Fatal(err)
	}
	got, err := newStateFile(dir).load()
	if err != nil {
		t.Fatal(err)
	}
	if !got.HostVS[key("192.168.1.10:30080/TCP")] || !got.Drains[drainKey{key("[fd00::1]:80/TCP"), addrPort("[fd00:244::5]:8080")}].Equal(since) {
		t.Errorf("round trip lost data: %+v", got)
	}
	// No temporary files left behind.
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("dir holds %d entries", len(entries))
	}
	// A corrupt file loads as empty with an error.
	if err := os.WriteFile(filepath.Join(dir, StateFileName), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err = newStateFile(dir).load()
	if err == nil || len(s.HostVS) != 0 {
		t.Errorf("corrupt file: %v %v", s, err)
	}
}

func TestCorruptStateFileLeavesNodePortsAlone(t *testing.T) {
	e := newEnv(t)
	e.sync(e.proxier(Config{}), webState(), full)
	if err := os.WriteFile(filepath.Join(e.dir, StateFileName), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The NodePort virtual servers can no longer be proven switchyard's:
	// a Sync without the Service leaves them (never deletes a maybe-foreign
	// object), and Cleanup too.
	st := webState()
	remove(st, spn("default/np", "", dataplane.TCP))
	p := e.proxier(Config{})
	e.sync(p, st, full)
	if !strings.Contains(e.h.Dump(), "vs 192.168.1.10:30080/TCP") {
		t.Errorf("orphaned NodePort virtual server deleted:\n%s", e.h.Dump())
	}
}

func TestKernelVersion(t *testing.T) {
	for in, want := range map[string][2]int{"6.1.0-56-amd64": {6, 1}, "5.9.0": {5, 9}, "4.19.0+": {4, 19}, "5.10-rc1": {5, 10}} {
		ma, mi, ok := kernelVersion(in)
		if !ok || ma != want[0] || mi != want[1] {
			t.Errorf("kernelVersion(%q) = %d %d %v", in, ma, mi, ok)
		}
	}
	if _, _, ok := kernelVersion("garbage"); ok {
		t.Error("parsed garbage")
	}
}

func TestConnReuseMode(t *testing.T) {
	for release, want := range map[string]string{"4.0.9": "1", "4.19.0": "0", "5.8.18": "0", "5.9.0": "1", "6.1.0": "1"} {
		s := NewFakeSysctl(map[string]string{sysctlOSRelease: release, sysctlConnReuseMode: "1"})
		ensureSysctls(s, false)
		if got, _ := s.Get(sysctlConnReuseMode); got != want {
			t.Errorf("kernel %s: conn_reuse_mode=%s, want %s", release, got, want)
		}
	}
}

func TestProcSysctl(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "net/ipv4"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "net/ipv4/ip_forward"), []byte("0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := ProcSysctl{Root: root}
	if err := s.Set("net/ipv4/ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	if v, err := s.Get("net/ipv4/ip_forward"); err != nil || v != "1" {
		t.Errorf("Get = %q, %v", v, err)
	}
	if err := s.Set("net/ipv4/vs/conntrack", "1"); !IsNotFound(err) {
		t.Errorf("Set on a missing key: %v", err)
	}
}

func TestFakeHandleSemantics(t *testing.T) {
	h := NewFakeHandle()
	k := key("10.96.0.1:80/TCP")
	vs := VirtualServer{Key: k, Scheduler: "rr"}
	check := func(what string, err, want error) {
		t.Helper()
		if !errors.Is(err, want) || (want == nil) != (err == nil) {
			t.Errorf("%s: got %v, want %v", what, err, want)
		}
	}
	check("update missing vs", h.UpdateVirtualServer(vs), ErrNotFound)
	check("delete missing vs", h.DeleteVirtualServer(k), ErrNotFound)
	_, err := h.GetVirtualServer(k)
	check("get missing vs", err, ErrNotFound)
	check("add rs to missing vs", h.AddRealServer(k, RealServer{Addr: addrPort("10.0.0.1:80"), Weight: 1}), ErrNotFound)
	check("add vs", h.AddVirtualServer(vs), nil)
	check("add vs twice", h.AddVirtualServer(vs), ErrExists)
	if err := h.AddVirtualServer(VirtualServer{Key: key("10.96.0.2:80/TCP"), Scheduler: "nope"}); err == nil {
		t.Error("unknown scheduler accepted")
	}
	rs := RealServer{Addr: addrPort("10.0.0.1:80"), Weight: 1}
	check("add rs", h.AddRealServer(k, rs), nil)
	check("add rs twice", h.AddRealServer(k, rs), ErrExists)
	if err := h.AddRealServer(k, RealServer{Addr: addrPort("[fd00::1]:80"), Weight: 1}); err == nil {
		t.Error("cross-family masquerading accepted")
	}
	check("update missing rs", h.UpdateRealServer(k, RealServer{Addr: addrPort("10.0.0.2:80")}), ErrNotFound)
	check("set conns", h.SetConnections(k, rs.Addr, 2, 3), nil)
	check("update weight", h.UpdateRealServer(k, RealServer{Addr: rs.Addr, Weight: 0}), nil)
	if got := h.Dump(); got != "vs 10.96.0.1:80/TCP rr\n  rs 10.0.0.1:80 masq weight=0 active=2 inactive=3\n" {
		t.Errorf("connections not kept across an update:\n%s", got)
	}
	check("delete rs", h.DeleteRealServer(k, rs.Addr), nil)
	check("delete rs twice", h.DeleteRealServer(k, rs.Addr), ErrNotFound)
	check("delete vs", h.DeleteVirtualServer(k), nil)
	if h.Dump() != "" {
		t.Errorf("not empty: %s", h.Dump())
	}
	if !slices.Contains(h.Mutations(), "AddVirtualServer 10.96.0.1:80/TCP rr") || slices.ContainsFunc(h.Mutations(), func(s string) bool { return strings.HasPrefix(s, "Get") }) {
		t.Errorf("Mutations: %v", h.Mutations())
	}
}

func TestFakeLinksSemantics(t *testing.T) {
	l := NewFakeLinks("")
	a := addr("10.96.0.1")
	if _, err := l.Addresses(); !IsNotFound(err) {
		t.Errorf("Addresses without link: %v", err)
	}
	if err := l.AddAddress(a); !IsNotFound(err) {
		t.Errorf("AddAddress without link: %v", err)
	}
	if err := l.EnsureLink(); err != nil {
		t.Fatal(err)
	}
	if err := l.AddAddress(a); err != nil {
		t.Fatal(err)
	}
	if err := l.AddAddress(a); !IsExists(err) {
		t.Errorf("duplicate address: %v", err)
	}
	l.SetHostAddresses("eth0", "10.96.0.1", "192.168.1.10")
	got, _ := l.NodeAddresses()
	// The address on both the dummy link and eth0 is a node address
	// (kubernetes#114815); the dummy link's own addresses are not.
	if want := addrs("10.96.0.1", "127.0.0.1", "192.168.1.10", "::1"); !slices.Equal(got, want) {
		t.Errorf("NodeAddresses = %v, want %v", got, want)
	}
	if err := l.DeleteAddress(addr("10.96.0.2")); !IsNotFound(err) {
		t.Errorf("deleting a missing address: %v", err)
	}
	if err := l.DeleteLink(); err != nil || l.HasLink() {
		t.Errorf("DeleteLink: %v", err)
	}
}

func TestNewProxierValidates(t *testing.T) {
	if _, err := NewProxier(Config{}, nil, NewFakeLinks(""), NewFakeIPVSSysctl()); err == nil {
		t.Error("nil handle accepted")
	}
	if _, err := NewProxier(Config{Scheduler: "fifo"}, NewFakeHandle(), NewFakeLinks(""), NewFakeIPVSSysctl()); err == nil {
		t.Error("bad scheduler accepted")
	}
	p, err := NewProxier(Config{}, NewFakeHandle(), NewFakeLinks(""), NewFakeIPVSSysctl())
	if err != nil || p.Name() != "ipvs" || p.cfg.DrainTimeout != DefaultDrainTimeout || p.cfg.StateDir != DefaultStateDir {
		t.Errorf("defaults: %+v %v", p, err)
	}
	var _ dataplane.Dataplane = p
}
