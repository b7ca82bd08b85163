package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestTrafficCounters(t *testing.T) {
	var cache TrafficCache
	m := New(nil)
	m.AddTrafficSource(cache.Load, true, 10)
	if n, err := testutil.GatherAndCount(m.Registry, "switchyard_backend_bytes_total", "switchyard_service_bytes_total"); err != nil || n != 0 {
		t.Errorf("before the first refresh: %d series (%v), want none", n, err)
	}
	cache.Store([]Traffic{
		{Service: "demo/web:http/TCP", Frontend: "10.96.0.10:80/TCP", PacketsIn: 12, PacketsOut: 10, BytesIn: 900, BytesOut: 4000},
		{Service: "demo/web:http/TCP", Frontend: "10.96.0.10:80/TCP", Backend: "10.244.1.2:8080", PacketsIn: 7, PacketsOut: 6, BytesIn: 500, BytesOut: 3000},
		{Service: "demo/web:http/TCP", Frontend: "10.96.0.10:80/TCP", Backend: "10.244.1.3:8080", PacketsIn: 5, PacketsOut: 4, BytesIn: 400, BytesOut: 1000},
	})
	want := `
# HELP switchyard_backend_bytes_total Bytes to (direction in) and from (out) a backend through a Service frontend, as the dataplane counts them (IPVS real server statistics), read every --metrics-refresh-interval
# TYPE switchyard_backend_bytes_total counter
switchyard_backend_bytes_total{backend="10.244.1.2:8080",direction="in",frontend="10.96.0.10:80/TCP",service="demo/web:http/TCP"} 500
switchyard_backend_bytes_total{backend="10.244.1.2:8080",direction="out",frontend="10.96.0.10:80/TCP",service="demo/web:http/TCP"} 3000
switchyard_backend_bytes_total{backend="10.244.1.3:8080",direction="in",frontend="10.96.0.10:80/TCP",service="demo/web:http/TCP"} 400
switchyard_backend_bytes_total{backend="10.244.1.3:8080",direction="out",frontend="10.96.0.10:80/TCP",service="demo/web:http/TCP"} 1000
# HELP switchyard_service_packets_total Packets through a Service frontend (IPVS virtual server statistics, all its backends past and present), by direction, read every --metrics-refresh-interval. 32-bit in IPVS: a wrap shows as a counter reset
# TYPE switchyard_service_packets_total counter
switchyard_service_packets_total{direction="in",frontend="10.96.0.10:80/TCP",service="demo/web:http/TCP"} 12
switchyard_service_packets_total{direction="out",frontend="10.96.0.10:80/TCP",service="demo/web:http/TCP"} 10
`
	if err := testutil.GatherAndCompare(m.Registry, strings.NewReader(want), "switchyard_backend_bytes_total", "switchyard_service_packets_total"); err != nil {
		t.Error(err)
	}
	if n, _ := testutil.GatherAndCount(m.Registry, "switchyard_backend_packets_total"); n != 4 {
		t.Errorf("%d backend packet series, want 4", n)
	}
	if n, _ := testutil.GatherAndCount(m.Registry, "switchyard_service_bytes_total"); n != 2 {
		t.Errorf("%d service byte series, want 2", n)
	}

	// Over the cap, or per-backend off: frontends only.
	for name, m := range map[string]*Metrics{"capped": New(nil), "off": New(nil)} {
		m.AddTrafficSource(cache.Load, name == "capped", 1)
		if n, _ := testutil.GatherAndCount(m.Registry, "switchyard_backend_packets_total", "switchyard_backend_bytes_total"); n != 0 {
			t.Errorf("%s: %d per-backend series, want 0", name, n)
		}
		if n, _ := testutil.GatherAndCount(m.Registry, "switchyard_service_packets_total", "switchyard_service_bytes_total"); n != 4 {
			t.Errorf("%s: %d per-frontend series, want 4", name, n)
		}
	}
}
