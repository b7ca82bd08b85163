package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/switchyard/switchyard/test/agentspec"
)

// TestE2EAPIServerOutage: kube-apiserver goes away for longer than
// several full-sync periods while clients use a ClusterIP and a NodePort:
// every request is answered by the Service's backends and the kernel
// state does not change (no transient removal: the agent keeps its model
// while its watches fail). Once the API server is back, the agent's
// watches resume: an endpoint change and a new Service made then are
// programmed.
func TestE2EAPIServerOutage(t *testing.T) {
	c := newCluster(t)
	env := c.env
	topo := env.NewTopology(t, 3)
	a := env.NewAgent(t)
	web := agentspec.Service{Name: "web", ClusterIP: netip.MustParseAddr("10.96.0.50"), Port: 80, NodePort: agentspec.NodePort, Backends: topo.Backends[:2]}
	a.WriteService(web)
	a.Start()
	env.DP.WaitProgrammed(t, a, web)
	before := env.DP.Snapshot(t)

	c.cp.StopAPIServer()
	stopped := time.Now()
	// The agent's full syncs run every 2 s (agentspec's --sync-period):
	// ten rounds of requests two seconds apart cover several.
	for round := range 10 {
		for _, addr := range []string{web.Addr(), web.NodePortAddr()} {
			env.Spread(t, fmt.Sprintf("during the outage, round %d, %s", round, addr), topo.Client, "tcp", addr, 4, web.Backends...)
		}
		if got := env.DP.Snapshot(t); got != before {
			t.Fatalf("the kernel state changed %v into the API server outage:\n--- before\n%s--- now\n%s", time.Since(stopped).Round(time.Second), before, got)
		}
		time.Sleep(2 * time.Second)
	}
	if r := a.Current(); r.Exited() {
		t.Fatalf("the agent exited during the outage: %s", r.Log())
	}
	if syncs := a.Current().Syncs(); syncs < 3 {
		t.Errorf("%d syncs in all: the outage should have seen periodic full syncs", syncs)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.cp.StartAPIServer(ctx); err != nil {
		t.Fatalf("restart kube-apiserver: %v", err)
	}
	t.Logf("kube-apiserver was down %v", time.Since(stopped).Round(100*time.Millisecond))
	// Changes made after the outage reach the kernel.
	web.Backends = topo.Backends[1:]
	api := agentspec.Service{Name: "api", ClusterIP: netip.MustParseAddr("10.96.0.51"), Port: 80, Backends: topo.Backends[:1]}
	a.WriteService(web, api)
	env.DP.WaitProgrammed(t, a, web, api)
	env.Spread(t, "web after the outage", topo.Client, "tcp", web.Addr(), 4, web.Backends...)
	env.Spread(t, "api after the outage", topo.Client, "tcp", api.Addr(), 2, api.Backends...)
	env.DP.CheckKernel(t, []agentspec.Service{web, api})
}
