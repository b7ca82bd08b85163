package metrics

import (
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestDriftRepairs(t *testing.T) {
	var ipvs, ipt atomic.Uint64
	m := New(nil)
	m.AddRepairSources(RepairSource{"iptables", ipt.Load}, RepairSource{"ipvs", ipvs.Load})
	ipvs.Add(2)
	want := `
# HELP switchyard_drift_repairs_total Syncs in which a dataplane part found the kernel differing from what the agent had programmed, with no model change behind it, and rewrote it (objects deleted or edited behind the agent's back)
# TYPE switchyard_drift_repairs_total counter
switchyard_drift_repairs_total{dataplane="iptables"} 0
switchyard_drift_repairs_total{dataplane="ipvs"} 2
`
	if err := testutil.GatherAndCompare(m.Registry, strings.NewReader(want), "switchyard_drift_repairs_total"); err != nil {
		t.Error(err)
	}
	ipt.Add(1)
	if n, err := testutil.GatherAndCount(m.Registry, "switchyard_drift_repairs_total"); err != nil || n != 2 {
		t.Errorf("%d series (%v), want 2", n, err)
	}
	if v := testutil.ToFloat64(repairCollector{{"iptables", ipt.Load}}); v != 1 {
		t.Errorf("iptables after a repair: %v, want 1", v)
	}
}
