package main

import (
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/switchyard/switchyard/agentapi"
	"github.com/switchyard/switchyard/conntrack/rebalance"
	"github.com/switchyard/switchyard/dataplane"
)

// fixedStatuses is the rebalancer's record as the agent API reads it.
type fixedStatuses map[dataplane.ServicePortName]rebalance.Status

func (f fixedStatuses) Statuses() map[dataplane.ServicePortName]rebalance.Status { return f }

// yardctl conntrack on a node whose web Service opted in to rebalancing
// (one round shed, steering to the idle backend) and whose shop Service
// runs a dry run that has had no round yet.
func TestConntrackRebalance(t *testing.T) {
	st := testState()
	st.Services[webHTTP].Rebalance = &dataplane.RebalanceSpec{Tolerance: 0.1, MaxResetsPerS: 20, MinAge: 5 * time.Second}
	st.Services[shopAPI].Rebalance = &dataplane.RebalanceSpec{Tolerance: 0.25, MaxResetsPerS: 20, DryRun: true}
	a, b := netip.MustParseAddrPort("10.244.1.2:8080"), netip.MustParseAddrPort("10.244.2.3:8080")
	rec := fixedStatuses{webHTTP: {At: now.Add(-3 * time.Second), Reason: "shed", Ratio: 1.5, RatioAfter: 1, Planned: 1, Closed: 1, Resets: 7,
		Measured: map[netip.AddrPort]int{a: 3, b: 1}, After: map[netip.AddrPort]int{a: 2, b: 2}, Steer: map[netip.AddrPort]int{b: 1}}}
	sock := filepath.Join(t.TempDir(), "run", "switchyard.sock")
	s, err := agentapi.NewServer(agentapi.Config{Socket: sock, Version: "v0.3.0", NodeName: "node-a", SyncChain: "nftables+conntrack+healthcheck",
		StartTime: startTime, Syncer: &fakeSyncer{st: st, syncs: 3}, Inspector: nftInspector{table: nftTable()},
		Conntrack: fakeFlows(testFlows()), Rebalance: rec})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close agent api: %v", err)
		}
	})
	k := fakeKernel{n: newIPVSNode(t), nft: nftTable()}
	for _, c := range []struct {
		golden string
		args   []string
	}{
		{"conntrack_rebalance.golden", []string{"conntrack"}},
		{"conntrack_rebalance_web.json", []string{"conntrack", "default/web", "-o", "json"}},
	} {
		t.Run(c.golden, func(t *testing.T) {
			out, err := yardctl(t, sock, k, c.args...)
			if err != nil {
				t.Fatalf("yardctl %v: %v", c.args, err)
			}
			golden(t, c.golden, out)
		})
	}
}
