package agentspec

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"

	"github.com/switchyard/switchyard/agentapi"
)

// AgentAPI: the agent binary serves yardctl's API on its --api-socket.
// Status names the dataplane and counts syncs; services lists the Service
// port with its backends, their weights and states, and an open
// connection on the backend it reached (IPVS counters or conntrack);
// sync asks for a full sync, which then happens.
func AgentAPI(t *testing.T, env *Env) {
	topo := env.NewTopology(t, 2)
	a := env.NewAgent(t)
	web := Service{Name: "web", ClusterIP: ip("10.96.0.70"), Port: 80, Backends: topo.Backends}
	a.WriteService(web)
	a.Start()
	env.DP.WaitProgrammed(t, a, web)
	c := agentapi.NewClient(filepath.Join(a.StateDir, "api.sock"))
	ctx := context.Background()

	var st *agentapi.Status
	a.Eventually("API status after a sync", Deadline, func() (bool, string) {
		var err error
		if st, err = c.Status(ctx); err != nil {
			return false, err.Error()
		}
		return st.Syncs > 0 && st.LastSync != nil, fmt.Sprintf("%+v", *st)
	})
	if st.Dataplane != env.DP.Name() || st.NodeName != env.NodeName || st.ServicePorts != 1+len(env.Ambient) || st.Endpoints != 2 || st.LastError != "" {
		t.Errorf("status %+v, want dataplane %s, node %s, %d Service ports, 2 endpoints, no error", *st, env.DP.Name(), env.NodeName, 1+len(env.Ambient))
	}

	held, _ := HoldConnection(t, topo, topo.Client, web.Addr())
	heldAddr := netip.AddrPortFrom(held.Addr, TargetPort).String()
	a.Eventually("the held connection in the API's services", Deadline, func() (bool, string) {
		sl, err := c.Services(ctx, Namespace, "web")
		if err != nil {
			return false, err.Error()
		}
		if len(sl.Services) != 1 {
			return false, fmt.Sprintf("%d Service ports", len(sl.Services))
		}
		s := sl.Services[0]
		if s.Port != 80 || !slices.Equal(s.ClusterIPs, []string{web.ClusterIP.String()}) || len(s.Backends) != 2 {
			return false, fmt.Sprintf("%+v", s)
		}
		for _, b := range s.Backends {
			if b.State != "ready" || b.Weight != 1 {
				return false, fmt.Sprintf("backend %+v", b)
			}
			if b.Address == heldAddr && (b.Connections == nil || b.Connections.Active != 1) {
				return false, fmt.Sprintf("held backend %s connections %+v", b.Address, b.Connections)
			}
		}
		return true, ""
	})

	before := st.Syncs
	if _, err := c.Sync(ctx); err != nil {
		t.Fatalf("API sync: %v", err)
	}
	a.Eventually("a sync after the API asked for one", Deadline, func() (bool, string) {
		st, err := c.Status(ctx)
		if err != nil {
			return false, err.Error()
		}
		return st.Syncs > before, fmt.Sprintf("syncs %d", st.Syncs)
	})
	a.WaitLog(`Full sync requested through the agent api`)
}
