package main

import (
	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/dataplane/metrics"
)

// repairSources lists the parts of dp (nested Chains included) that count
// their drift repairs, for switchyard_drift_repairs_total.
func repairSources(dp dataplane.Dataplane) []metrics.RepairSource {
	if c, ok := dp.(dataplane.Chain); ok {
		var out []metrics.RepairSource
		for _, part := range c {
			out = append(out, repairSources(part)...)
		}
		return out
	}
	if r, ok := dp.(dataplane.RepairReporter); ok {
		return []metrics.RepairSource{{Dataplane: dp.Name(), Repairs: r.Repairs}}
	}
	return nil
}
