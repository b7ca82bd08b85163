package metrics

import "github.com/prometheus/client_golang/prometheus"

// RepairSource is one dataplane part that counts its drift repairs
// (dataplane.RepairReporter).
type RepairSource struct {
	Dataplane string // the part's Name()
	Repairs   func() uint64
}

var driftRepairsDesc = prometheus.NewDesc("switchyard_drift_repairs_total",
	"Syncs in which a dataplane part found the kernel differing from what the agent had programmed, with no model change behind it, and rewrote it (objects deleted or edited behind the agent's back)",
	[]string{"dataplane"}, nil)

// repairCollector reads the parts' counters (atomics) on each scrape.
type repairCollector []RepairSource

// AddRepairSources exposes switchyard_drift_repairs_total for each part.
func (m *Metrics) AddRepairSources(srcs ...RepairSource) {
	if len(srcs) == 0 {
		return
	}
	m.Registry.MustRegister(repairCollector(srcs))
}

func (c repairCollector) Describe(ch chan<- *prometheus.Desc) { ch <- driftRepairsDesc }

func (c repairCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c {
		ch <- prometheus.MustNewConstMetric(driftRepairsDesc, prometheus.CounterValue, float64(s.Repairs()), s.Dataplane)
	}
}
