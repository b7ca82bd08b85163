package metrics

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestGrafanaDashboardUsesOurMetrics: deploy/grafana-dashboard.json is
// valid JSON and every metric its queries name is one the agent exposes,
// so a renamed metric cannot leave the dashboard silently empty.
func TestGrafanaDashboardUsesOurMetrics(t *testing.T) {
	raw, err := os.ReadFile("../../deploy/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}

	m := New(nil)
	m.SetDataplane("x")
	m.SetHostPortProblems(map[string]int{"conflict": 1})
	m.syncErrors.WithLabelValues("x")
	m.objectProblems.WithLabelValues("Service", "r", "rejected")
	m.AddBackendSource(func() []BackendConns { return []BackendConns{{Service: "s", Frontend: "f", Backend: "b"}} }, true, 0)
	traffic := &TrafficCache{}
	traffic.Store([]Traffic{{Service: "s", Frontend: "f"}, {Service: "s", Frontend: "f", Backend: "b"}})
	m.AddTrafficSource(traffic.Load, true, 0)
	ct := &Cache[[]ConntrackEntries]{}
	ct.Store([]ConntrackEntries{{Service: "s", Frontend: "f", Backend: "b", State: "ESTABLISHED", Count: 1}})
	m.AddConntrackSource(ct.Load, true, 0)
	m.AddRepairSources(RepairSource{Dataplane: "x", Repairs: func() uint64 { return 0 }})
	m.SetBPFSocketLB(true, true)
	m.AddBPFSource(func() []BPFConnections {
		return []BPFConnections{{Service: "s", Backend: "b", Direction: "out", Count: 1}}
	}, true, 0)
	rb := m.AddRebalance()
	rb.ratio.WithLabelValues("s")
	rb.conns.WithLabelValues("s", "b")
	rb.resets.WithLabelValues("s", "conntrack")
	rb.errors.WithLabelValues("s", "conntrack")
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	for _, mf := range mfs {
		name := mf.GetName()
		known[name] = true
		if mf.GetType().String() == "HISTOGRAM" {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				known[name+s] = true
			}
		}
	}
	metricRE := regexp.MustCompile(`\b(kubeproxy|switchyard)_[a-z_]+`)
	if len(dash.Panels) == 0 {
		t.Fatal("no panels")
	}
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			names := metricRE.FindAllString(tg.Expr, -1)
			if len(names) == 0 {
				t.Errorf("panel %q: query %q names no metric of ours", p.Title, tg.Expr)
			}
			for _, n := range names {
				if !known[n] {
					t.Errorf("panel %q: unknown metric %s (have %s)", p.Title, n, strings.Join(sortedKeys(known), ", "))
				}
			}
		}
	}
}

func sortedKeys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
