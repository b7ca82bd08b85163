package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestBackendConnections(t *testing.T) {
	conns := []BackendConns{
		{Service: "demo/web:http/TCP", Frontend: "10.96.0.10:80/TCP", Backend: "10.244.1.2:8080", Active: 3, Inactive: 1},
		{Service: "demo/web:http/TCP", Frontend: "10.96.0.10:80/TCP", Backend: "10.244.1.3:8080", Active: 1},
	}
	m := New(nil)
	m.AddBackendSource(func() []BackendConns { return conns }, true, 10)
	want := `
# HELP switchyard_backend_connections Connections to a backend through a Service frontend, as the dataplane last read them (IPVS counters; conntrack entries without IPVS), by state (active: established TCP, and UDP and SCTP entries from conntrack; inactive: other TCP states, and UDP flows in IPVS)
# TYPE switchyard_backend_connections gauge
switchyard_backend_connections{backend="10.244.1.2:8080",frontend="10.96.0.10:80/TCP",service="demo/web:http/TCP",state="active"} 3
switchyard_backend_connections{backend="10.244.1.2:8080",frontend="10.96.0.10:80/TCP",service="demo/web:http/TCP",state="inactive"} 1
switchyard_backend_connections{backend="10.244.1.3:8080",frontend="10.96.0.10:80/TCP",service="demo/web:http/TCP",state="active"} 1
switchyard_backend_connections{backend="10.244.1.3:8080",frontend="10.96.0.10:80/TCP",service="demo/web:http/TCP",state="inactive"} 0
# HELP switchyard_service_connections Connections through a Service frontend, summed over its backends, by state
# TYPE switchyard_service_connections gauge
switchyard_service_connections{frontend="10.96.0.10:80/TCP",service="demo/web:http/TCP",state="active"} 4
switchyard_service_connections{frontend="10.96.0.10:80/TCP",service="demo/web:http/TCP",state="inactive"} 1
`
	if err := testutil.GatherAndCompare(m.Registry, strings.NewReader(want), "switchyard_backend_connections", "switchyard_service_connections"); err != nil {
		t.Error(err)
	}

	// Over the cap: sums only.
	capped := New(nil)
	capped.AddBackendSource(func() []BackendConns { return conns }, true, 1)
	if n, err := testutil.GatherAndCount(capped.Registry, "switchyard_backend_connections"); err != nil || n != 0 {
		t.Errorf("capped: %d per-backend series (%v), want 0", n, err)
	}
	if n, err := testutil.GatherAndCount(capped.Registry, "switchyard_service_connections"); err != nil || n != 2 {
		t.Errorf("capped: %d per-frontend series (%v), want 2", n, err)
	}
	// Per-backend off.
	off := New(nil)
	off.AddBackendSource(func() []BackendConns { return conns }, false, 0)
	if n, _ := testutil.GatherAndCount(off.Registry, "switchyard_backend_connections"); n != 0 {
		t.Errorf("--metrics-per-backend=false: %d per-backend series", n)
	}
}
