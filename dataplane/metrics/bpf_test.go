package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestBPFConnections(t *testing.T) {
	conns := []BPFConnections{
		{Service: "demo/web:http/TCP", Backend: "10.244.1.2:8080", Direction: "out", Count: 3},
		{Service: "demo/web:http/TCP", Backend: "10.244.1.2:8080", Direction: "in", Count: 1},
		{Service: "demo/web:http/TCP", Backend: "10.244.1.3:8080", Direction: "out", Count: 2},
		// An endpoint of two Service ports counts under both.
		{Service: "demo/alt:http/TCP", Backend: "10.244.1.3:8080", Direction: "out", Count: 2},
		// A removed backend still holding a connection: per backend only.
		{Service: "", Backend: "10.244.9.9:8080", Direction: "out", Count: 1},
	}
	m := New(nil)
	m.AddBPFSource(func() []BPFConnections { return conns }, true, 10)
	want := `
# HELP switchyard_bpf_backend_connections Established TCP connections of a backend as the socket load balancer's sockops program counts them, by direction (out: a socket of this node connected to it; in: the backend on this node accepted it), read every --metrics-refresh-interval. A backend of several Service ports appears under each
# TYPE switchyard_bpf_backend_connections gauge
switchyard_bpf_backend_connections{backend="10.244.1.2:8080",direction="in",service="demo/web:http/TCP"} 1
switchyard_bpf_backend_connections{backend="10.244.1.2:8080",direction="out",service="demo/web:http/TCP"} 3
switchyard_bpf_backend_connections{backend="10.244.1.3:8080",direction="out",service="demo/alt:http/TCP"} 2
switchyard_bpf_backend_connections{backend="10.244.1.3:8080",direction="out",service="demo/web:http/TCP"} 2
switchyard_bpf_backend_connections{backend="10.244.9.9:8080",direction="out",service=""} 1
# HELP switchyard_bpf_service_connections Established TCP connections of a Service port's backends as the socket load balancer counts them, summed over its backends, by direction
# TYPE switchyard_bpf_service_connections gauge
switchyard_bpf_service_connections{direction="in",service="demo/web:http/TCP"} 1
switchyard_bpf_service_connections{direction="out",service="demo/alt:http/TCP"} 2
switchyard_bpf_service_connections{direction="out",service="demo/web:http/TCP"} 5
`
	if err := testutil.GatherAndCompare(m.Registry, strings.NewReader(want), "switchyard_bpf_backend_connections", "switchyard_bpf_service_connections"); err != nil {
		t.Error(err)
	}

	// Over the cap (4 Service and backend pairs > 3): sums only.
	capped := New(nil)
	capped.AddBPFSource(func() []BPFConnections { return conns }, true, 3)
	if n, err := testutil.GatherAndCount(capped.Registry, "switchyard_bpf_backend_connections"); err != nil || n != 0 {
		t.Errorf("capped: %d per-backend series (%v), want 0", n, err)
	}
	if n, err := testutil.GatherAndCount(capped.Registry, "switchyard_bpf_service_connections"); err != nil || n != 3 {
		t.Errorf("capped: %d per-Service series (%v), want 3", n, err)
	}
	// Per-backend off.
	off := New(nil)
	off.AddBPFSource(func() []BPFConnections { return conns }, false, 0)
	if n, _ := testutil.GatherAndCount(off.Registry, "switchyard_bpf_backend_connections"); n != 0 {
		t.Errorf("--metrics-per-backend=false: %d per-backend series", n)
	}
	if n, _ := testutil.GatherAndCount(off.Registry, "switchyard_bpf_service_connections"); n != 3 {
		t.Errorf("--metrics-per-backend=false: %d per-Service series, want 3", n)
	}
}

func TestBPFSocketLBEnabled(t *testing.T) {
	m := New(nil)
	if n, _ := testutil.GatherAndCount(m.Registry, "switchyard_bpf_socket_lb_enabled"); n != 0 {
		t.Errorf("%d series before SetBPFSocketLB, want none", n)
	}
	for _, c := range []struct {
		requested, enabled bool
		want               string
	}{
		{false, false, `switchyard_bpf_socket_lb_enabled{requested="false"} 0`},
		{true, false, `switchyard_bpf_socket_lb_enabled{requested="true"} 0`},
		{true, true, `switchyard_bpf_socket_lb_enabled{requested="true"} 1`},
	} {
		m.SetBPFSocketLB(c.requested, c.enabled)
		want := `
# HELP switchyard_bpf_socket_lb_enabled 1 when the BPF socket load balancer (--bpf-socket-lb) is attached by this agent (its programs run), else 0; requested="true" with 0 means it was asked for and the kernel or machine cannot run it (the agent logs why)
# TYPE switchyard_bpf_socket_lb_enabled gauge
` + c.want + "\n"
		if err := testutil.GatherAndCompare(m.Registry, strings.NewReader(want), "switchyard_bpf_socket_lb_enabled"); err != nil {
			t.Errorf("requested %v enabled %v: %v", c.requested, c.enabled, err)
		}
	}
}
