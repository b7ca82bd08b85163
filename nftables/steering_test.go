package nftables

import (
	"net/netip"
	"testing"
)

// TestKernelSteeringWeights: the rebalancer's weights (State.Weights)
// decide where new connections go; an endpoint at weight 0 gets none, and
// clearing the weights in a partial sync spreads them again.
func TestKernelSteeringWeights(t *testing.T) {
	requireKernel(t)
	topo := newTrafficTopology(t)
	p := topo.k.proxier(t, Config{ClusterCIDRs: clusterCIDR, ConntrackDropInvalid: true})
	web, _, _, _, _ := trafficServices()
	st := newState(web)
	name := web.portName()
	be1, be2 := netip.MustParseAddrPort(be1Addr+":8080"), netip.MustParseAddrPort(be2Addr+":8080")
	st.Weights[name] = map[netip.AddrPort]int{be1: 0, be2: 3}
	mustSync(t, p, st, full)

	for _, addr := range []string{webIP + ":80", webExtIP + ":80", nodeAddr + ":" + webNodePort} {
		for range 20 {
			if id, _ := ask(t, topo.client, "tcp", addr); id != "be2" {
				t.Fatalf("%s: %s answered with all the weight on be2", addr, id)
			}
		}
	}
	// Weights on both: both answer.
	st.Weights[name] = map[netip.AddrPort]int{be1: 1, be2: 3}
	mustSync(t, p, st, changed(name.ServiceName))
	reachAll(t, topo.client, "tcp", webIP+":80", "be1", "be2")

	// Only be1 now, in a partial sync.
	st.Weights[name] = map[netip.AddrPort]int{be1: 5}
	mustSync(t, p, st, changed(name.ServiceName))
	for range 20 {
		if id, _ := ask(t, topo.client, "tcp", webIP+":80"); id != "be1" {
			t.Fatalf("%s answered with all the weight on be1", id)
		}
	}
	// Cleared: equal shares again.
	delete(st.Weights, name)
	mustSync(t, p, st, changed(name.ServiceName))
	reachAll(t, topo.client, "tcp", webIP+":80", "be1", "be2")
}
