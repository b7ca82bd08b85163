package rebalance

import (
	"net/netip"
	"testing"
	"time"

	"github.com/switchyard/switchyard/dataplane"
)

func TestRecorderKeepsTheLastRoundAndTheResets(t *testing.T) {
	web := dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: "ns", Name: "web"}, Protocol: dataplane.TCP}
	rec := NewRecorder()
	at := time.Unix(1000, 0)
	rec.now = func() time.Time { return at }
	obs := Observers{rec}
	plan := Compute(Input{Backends: []netip.AddrPort{be(1), be(2)}, Conns: conns(1, 20), Tolerance: 0.1})
	obs.Round(web, plan, 5, false)
	obs.Closed(web, "conntrack", 4, nil)
	obs.Closed(web, "socketlb", 1, nil)
	got := rec.Statuses()[web]
	if got.Reason != "shed" || got.Planned != 9 || got.Closed != 5 || got.Resets != 5 || got.Measured[be(1)] != 20 || got.Steer[be(2)] != 9 || !got.At.Equal(at) {
		t.Fatalf("after a shedding round: %+v", got)
	}
	// Statuses are copies.
	got.Steer[be(2)] = 99
	if rec.Statuses()[web].Steer[be(2)] != 9 {
		t.Error("Statuses shares its maps with the recorder")
	}
	// A dry-run round: closed resets for the round, the total stays.
	obs.Round(web, plan, 0, true)
	if got = rec.Statuses()[web]; got.Reason != "dry-run" || got.Closed != 0 || got.Resets != 5 || !got.DryRun {
		t.Errorf("after a dry run: %+v", got)
	}
	obs.Forget(web)
	if len(rec.Statuses()) != 0 {
		t.Error("a forgotten port is still reported")
	}
}
