package agentapi

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/switchyard/switchyard/ebpf"
)

// fakeSocketLB is a socket load balancer with fixed counts and sockets.
type fakeSocketLB struct {
	conns []ebpf.BackendConnections
	socks []ebpf.Socket
	err   error
}

func (f *fakeSocketLB) Connections() ([]ebpf.BackendConnections, error) {
	return slices.Clone(f.conns), f.err
}

func (f *fakeSocketLB) Sockets() ([]ebpf.Socket, error) { return slices.Clone(f.socks), f.err }

var sockTime = time.Date(2026, 3, 1, 11, 59, 0, 0, time.UTC)

// testSocketLB: web's 10.244.1.2 has two sockets of this node connected
// (one translated from the ClusterIP, one dialed directly) and one
// accepted; shop's 10.244.1.4 one translated socket; a socket to a removed
// backend of web, translated before its removal.
func testSocketLB() *fakeSocketLB {
	return &fakeSocketLB{
		conns: []ebpf.BackendConnections{
			{Backend: ap("10.244.1.2:8080"), Direction: ebpf.Out, Count: 2},
			{Backend: ap("10.244.1.2:8080"), Direction: ebpf.In, Count: 1},
			{Backend: ap("10.244.1.4:9000"), Direction: ebpf.Out, Count: 1},
			{Backend: ap("10.244.3.3:8080"), Direction: ebpf.Out, Count: 1},
		},
		socks: []ebpf.Socket{
			{Cookie: 11, Direction: ebpf.Out, Local: ap("10.244.1.7:40000"), Remote: ap("10.244.1.2:8080"),
				Frontend: ap("10.96.0.10:80"), Service: webHTTP, Established: sockTime, NetnsCookie: 3},
			{Cookie: 12, Direction: ebpf.Out, Local: ap("10.244.1.7:40001"), Remote: ap("10.244.1.2:8080"),
				Established: sockTime.Add(time.Second), NetnsCookie: 3},
			{Cookie: 13, Direction: ebpf.In, Local: ap("10.244.1.2:8080"), Remote: ap("10.244.2.8:50000"),
				Established: sockTime.Add(2 * time.Second), NetnsCookie: 4},
			{Cookie: 14, Direction: ebpf.Out, Local: ap("10.244.1.7:40002"), Remote: ap("10.244.1.4:9000"),
				Frontend: ap("10.96.0.44:443"), Service: shopAPI, Established: sockTime.Add(3 * time.Second), NetnsCookie: 3},
			{Cookie: 15, Direction: ebpf.Out, Local: ap("10.244.1.7:40003"), Remote: ap("10.244.3.3:8080"),
				Frontend: ap("10.96.0.10:80"), Service: webHTTP, Established: sockTime.Add(4 * time.Second), NetnsCookie: 3},
		},
	}
}

func TestAddBPFConnections(t *testing.T) {
	st := testState()
	sl := ServicesFrom(st, SelectPorts(st, "", ""), KindNFTables, nil, nil, nil)
	AddBPFConnections(sl, testSocketLB().conns)
	want := map[string]map[string]*BPFConnections{
		"web": {"10.244.1.2:8080": {Out: 2, In: 1}, "10.244.1.9:8080": {}, "10.244.2.3:8080": {}},
		// UDP: not counted, unknown.
		"dns": {},
		"api": {"10.244.1.4:9000": {Out: 1}, "10.244.2.5:9000": {}},
	}
	for _, s := range sl.Services {
		w, ok := want[s.Name]
		if !ok {
			t.Fatalf("unexpected Service %s", s.Name)
		}
		if s.Protocol == "UDP" {
			for _, b := range s.Backends {
				if b.BPFConnections != nil {
					t.Errorf("%s %s: BPF counts %+v for a UDP port, want null", s.Name, b.Address, *b.BPFConnections)
				}
			}
			continue
		}
		if len(s.Backends) != len(w) {
			t.Errorf("%s: %d backends, want %d", s.Name, len(s.Backends), len(w))
		}
		for _, b := range s.Backends {
			if b.BPFConnections == nil || w[b.Address] == nil || *b.BPFConnections != *w[b.Address] {
				t.Errorf("%s %s: BPF counts %+v, want %+v", s.Name, b.Address, b.BPFConnections, w[b.Address])
			}
		}
	}
}

func TestSocketsFrom(t *testing.T) {
	st := testState()
	socks := testSocketLB().socks
	all := SocketsFrom(st, SelectPorts(st, "", ""), false, socks)
	goldenJSON(t, "sockets_all.json", all)
	cookies := func(ss []SocketLBSocket) []uint64 {
		var out []uint64
		for _, s := range ss {
			out = append(out, s.Cookie)
		}
		return out
	}
	if got := cookies(all); !slices.Equal(got, []uint64{11, 12, 13, 14, 15}) {
		t.Errorf("unfiltered: sockets %v, want all five in order", got)
	}
	// web: translated for it (including the removed backend's) or to and
	// of its endpoints.
	if got := cookies(SocketsFrom(st, SelectPorts(st, "default", "web"), true, socks)); !slices.Equal(got, []uint64{11, 12, 13, 15}) {
		t.Errorf("web: sockets %v, want 11 12 13 15", got)
	}
	if got := cookies(SocketsFrom(st, SelectPorts(st, "shop", ""), true, socks)); !slices.Equal(got, []uint64{14}) {
		t.Errorf("shop: sockets %v, want 14", got)
	}
	if got := SocketsFrom(st, SelectPorts(st, "nope", ""), true, socks); got == nil || len(got) != 0 {
		t.Errorf("no such namespace: %#v, want an empty list", got)
	}
}

// The server adds the socket load balancer's counts to services and its
// sockets to conntrack, and says in its status that it runs.
func TestServerSocketLB(t *testing.T) {
	lb := testSocketLB()
	sock := filepath.Join(t.TempDir(), "api.sock")
	startServer(t, Config{Socket: sock, Syncer: &fakeSyncer{st: testState(), syncs: 1},
		Inspector: &fakeInspector{kind: KindNFTables}, Conntrack: fakeFlows(testFlows()), SocketLB: lb})
	c := NewClient(sock)
	ctx := context.Background()
	if st, err := c.Status(ctx); err != nil || !st.SocketLB {
		t.Errorf("status: %+v, %v; want socketLB true", st, err)
	}
	sl, err := c.Services(ctx, "default", "web")
	if err != nil || len(sl.Services) != 1 {
		t.Fatalf("services: %+v, %v", sl, err)
	}
	// 10.244.3.3 is listed as draining from its conntrack flow, with
	// its translated socket's count.
	wantBPF := map[string]BPFConnections{"10.244.1.2:8080": {Out: 2, In: 1}, "10.244.3.3:8080": {Out: 1}}
	for _, b := range sl.Services[0].Backends {
		want := wantBPF[b.Address]
		if b.BPFConnections == nil || *b.BPFConnections != want {
			t.Errorf("backend %s: BPF counts %+v, want %+v", b.Address, b.BPFConnections, want)
		}
	}
	ct, err := c.Conntrack(ctx, "shop", "")
	if err != nil || !ct.SocketLB || len(ct.Sockets) != 1 || ct.Sockets[0].Service != "shop/api:tcp" ||
		ct.Sockets[0].Frontend != "10.96.0.44:443" || ct.Sockets[0].Remote != "10.244.1.4:9000" {
		t.Errorf("conntrack of shop: %+v, %v", ct, err)
	}

	lb.err = errors.New("map gone")
	if _, err := c.Services(ctx, "", ""); err == nil {
		t.Error("services: no error when the socket load balancer cannot be read")
	}
	if _, err := c.Conntrack(ctx, "", ""); err == nil {
		t.Error("conntrack: no error when the socket load balancer cannot be read")
	}
}

// Without a socket load balancer: status says so, counts stay null, the
// report's sockets are an empty list.
func TestServerWithoutSocketLB(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "api.sock")
	startServer(t, Config{Socket: sock, Syncer: &fakeSyncer{st: testState(), syncs: 1},
		Inspector: &fakeInspector{kind: KindNFTables}, Conntrack: fakeFlows(testFlows())})
	c := NewClient(sock)
	ctx := context.Background()
	if st, err := c.Status(ctx); err != nil || st.SocketLB {
		t.Errorf("status: %+v, %v; want socketLB false", st, err)
	}
	sl, err := c.Services(ctx, "", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sl.Services {
		for _, b := range s.Backends {
			if b.BPFConnections != nil {
				t.Errorf("%s %s: BPF counts %+v without a socket load balancer", s.Name, b.Address, *b.BPFConnections)
			}
		}
	}
	ct, err := c.Conntrack(ctx, "", "")
	if err != nil || ct.SocketLB || ct.Sockets == nil || len(ct.Sockets) != 0 {
		t.Errorf("conntrack: socketLB %v sockets %#v, %v; want false and []", ct.SocketLB, ct.Sockets, err)
	}
}
