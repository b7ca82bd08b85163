package metrics

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/switchyard/switchyard/conntrack/rebalance"
	"github.com/switchyard/switchyard/dataplane"
)

func TestRebalanceMetrics(t *testing.T) {
	m := New(nil)
	r := m.AddRebalance()
	web := dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: "ns", Name: "web"}, Port: "http", Protocol: dataplane.TCP}
	b1, b2, b3 := netip.MustParseAddrPort("10.244.0.1:80"), netip.MustParseAddrPort("10.244.0.2:80"), netip.MustParseAddrPort("10.244.0.3:80")
	plan := rebalance.Plan{Ratio: 2, Reason: "shed", Shed: make([]rebalance.Conn, 450),
		Measured: map[netip.AddrPort]int{b1: 500, b2: 500, b3: 0},
		Before:   map[netip.AddrPort]int{}, After: map[netip.AddrPort]int{}}
	r.Round(web, plan, 20, false)
	// The next round no longer has b3 (an endpoint went): its series goes.
	plan.Measured = map[netip.AddrPort]int{b1: 480, b2: 490}
	r.Closed(web, "conntrack", 18, errors.New("2 flows gone"))
	r.Round(web, plan, 0, true)
	want := `
# HELP switchyard_rebalance_backend_connections Established connections per backend of an opted-in Service port, as the last rebalancer round measured them (conntrack flows this node NATs and socket-LB sockets; connections already shed and not yet gone excluded)
# TYPE switchyard_rebalance_backend_connections gauge
switchyard_rebalance_backend_connections{backend="10.244.0.1:80",service="ns/web:http/tcp"} 480
switchyard_rebalance_backend_connections{backend="10.244.0.2:80",service="ns/web:http/tcp"} 490
# HELP switchyard_rebalance_imbalance_ratio max/mean of established connections per backend of an opted-in Service port, as the last rebalancer round measured it (reconnects in flight placed on the least-loaded backends)
# TYPE switchyard_rebalance_imbalance_ratio gauge
switchyard_rebalance_imbalance_ratio{service="ns/web:http/tcp"} 2
# HELP switchyard_rebalance_resets_total Connections the rebalancer closed, by mechanism (socketlb: sockets on this node, destroyed; conntrack: flows this node NATs, marked for the dataplane to reset at their next packet)
# TYPE switchyard_rebalance_resets_total counter
switchyard_rebalance_resets_total{mechanism="conntrack",service="ns/web:http/tcp"} 18
# HELP switchyard_rebalance_rounds_total Rebalancer rounds by outcome: balanced, shed, dry-run, settling, rate-limited, min-age, single-backend, no-connections
# TYPE switchyard_rebalance_rounds_total counter
switchyard_rebalance_rounds_total{outcome="dry-run",service="ns/web:http/tcp"} 1
switchyard_rebalance_rounds_total{outcome="shed",service="ns/web:http/tcp"} 1
`
	if err := testutil.GatherAndCompare(m.Registry, strings.NewReader(want),
		"switchyard_rebalance_backend_connections", "switchyard_rebalance_imbalance_ratio", "switchyard_rebalance_resets_total", "switchyard_rebalance_rounds_total"); err != nil {
		t.Error(err)
	}
	if got := testutil.ToFloat64(r.errors.WithLabelValues("ns/web:http/tcp", "conntrack")); got != 1 {
		t.Errorf("errors %v", got)
	}
	r.Forget(web)
	if n := testutil.CollectAndCount(r.conns) + testutil.CollectAndCount(r.ratio) + testutil.CollectAndCount(r.rounds) + testutil.CollectAndCount(r.resets); n != 0 {
		t.Errorf("%d series left after Forget", n)
	}
}
