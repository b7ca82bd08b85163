package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestConntrackEntries(t *testing.T) {
	var cache Cache[[]ConntrackEntries]
	cache.Store([]ConntrackEntries{
		{Service: "demo/web:http/TCP", Frontend: "10.96.0.10:80/TCP", Backend: "10.244.1.2:8080", State: "ESTABLISHED", Count: 3},
		{Service: "demo/web:http/TCP", Frontend: "10.96.0.10:80/TCP", Backend: "10.244.1.2:8080", State: "TIME_WAIT", Count: 1},
		{Service: "demo/web:http/TCP", Frontend: "192.168.1.5:30080/TCP", Backend: "10.244.1.3:8080", State: "ESTABLISHED", Count: 2},
		{Service: "kube-system/dns:dns/UDP", Frontend: "10.96.0.53:53/UDP", Backend: "10.244.1.4:53", State: "UDP", Count: 5},
	})
	m := New(nil)
	m.AddConntrackSource(cache.Load, true, 10)
	want := `
# HELP switchyard_conntrack_entries Conntrack entries DNATed to a Service port's backends, by TCP state (or UDP, SCTP), as the last background listing (every --metrics-refresh-interval) found them
# TYPE switchyard_conntrack_entries gauge
switchyard_conntrack_entries{service="demo/web:http/TCP",state="ESTABLISHED"} 5
switchyard_conntrack_entries{service="demo/web:http/TCP",state="TIME_WAIT"} 1
switchyard_conntrack_entries{service="kube-system/dns:dns/UDP",state="UDP"} 5
# HELP switchyard_backend_conntrack_entries Conntrack entries to a backend through a Service frontend, by TCP state (or UDP, SCTP), as the last background listing found them
# TYPE switchyard_backend_conntrack_entries gauge
switchyard_backend_conntrack_entries{backend="10.244.1.2:8080",frontend="10.96.0.10:80/TCP",service="demo/web:http/TCP",state="ESTABLISHED"} 3
switchyard_backend_conntrack_entries{backend="10.244.1.2:8080",frontend="10.96.0.10:80/TCP",service="demo/web:http/TCP",state="TIME_WAIT"} 1
switchyard_backend_conntrack_entries{backend="10.244.1.3:8080",frontend="192.168.1.5:30080/TCP",service="demo/web:http/TCP",state="ESTABLISHED"} 2
switchyard_backend_conntrack_entries{backend="10.244.1.4:53",frontend="10.96.0.53:53/UDP",service="kube-system/dns:dns/UDP",state="UDP"} 5
`
	if err := testutil.GatherAndCompare(m.Registry, strings.NewReader(want), "switchyard_conntrack_entries", "switchyard_backend_conntrack_entries"); err != nil {
		t.Error(err)
	}
	// Three backends over a cap of 2: per-Service only.
	capped := New(nil)
	capped.AddConntrackSource(cache.Load, true, 2)
	if n, _ := testutil.GatherAndCount(capped.Registry, "switchyard_backend_conntrack_entries"); n != 0 {
		t.Errorf("capped: %d per-backend series, want 0", n)
	}
	if n, _ := testutil.GatherAndCount(capped.Registry, "switchyard_conntrack_entries"); n != 3 {
		t.Errorf("capped: %d per-Service series, want 3", n)
	}
}
