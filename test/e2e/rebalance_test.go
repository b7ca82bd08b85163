package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/switchyard/switchyard/test/agentspec"
	"github.com/switchyard/switchyard/test/connfleet"
)

// rebalanceClients hold long-lived connections in the Event scenario.
const rebalanceClients = 20

// scaleUpRebalance runs a small rebalancing scenario on c: 20 clients on
// 2 backends, the opted-in Service scales to 4, and the agent sheds
// connections until they even out (conntrack marks). It returns the
// Service and the agent once the clients are balanced.
func scaleUpRebalance(t *testing.T, c *cluster) (agentspec.Service, *agentspec.Agent) {
	t.Helper()
	env := c.env
	topo := env.NewTopology(t, 4)
	a := env.NewAgent(t)
	two, four := topo.Backends[:2], topo.Backends
	web := agentspec.Service{Name: "web", ClusterIP: netip.MustParseAddr("10.96.0.90"), Port: 80, Backends: two}
	ann := agentspec.RebalanceAnnotations(0.1, 50, time.Second, false)
	a.WriteAnnotated(web, ann)
	a.Start()
	a.WaitLog(`"Rebalancer ready for Services that opt in"`)
	env.DP.WaitProgrammed(t, a, web)
	clients := agentspec.NewFleet(t, connfleet.Config{Name: "web"}, topo, web, agentspec.MasqueradedSource)
	agentspec.Establish(t, clients, rebalanceClients, two)
	agentspec.Allow(t, clients, four)
	web.Backends = four
	a.WriteAnnotated(web, ann)
	env.DP.WaitProgrammed(t, a, web)
	ids := agentspec.BackendIDs(four)
	a.Eventually("the clients balanced on 4 backends", 40*time.Second, func() (bool, string) {
		s := clients.Snapshot()
		counts := s.Of(ids...)
		return s.Unconnected == 0 && connfleet.Balanced(counts, 0.1), fmt.Sprintf("%v (%v)", counts, s)
	})
	if s := clients.Snapshot(); s.Failed > 0 || s.Bad > 0 {
		t.Errorf("requests failed while rebalancing: %v", s)
	}
	return web, a
}

// TestE2ERebalanceEvent: with a cluster, each rebalancer round that closes
// connections records a Kubernetes Event (reason Rebalancing) on the
// Service, written with the DaemonSet's own RBAC.
func TestE2ERebalanceEvent(t *testing.T) {
	c := newCluster(t)
	web, a := scaleUpRebalance(t, c)
	var found string
	a.Eventually("a Rebalancing Event on the Service", agentspec.Deadline, func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		evs, err := c.admin.CoreV1().Events(agentspec.Namespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		var seen []string
		for _, e := range evs.Items {
			seen = append(seen, e.Reason+": "+e.Message)
			if e.Reason == "Rebalancing" && e.InvolvedObject.Kind == "Service" && e.InvolvedObject.Name == web.Name &&
				e.Source.Component == "switchyard" && e.Source.Host == c.env.NodeName && strings.Contains(e.Message, "closing") {
				found = e.Message
				return true, ""
			}
		}
		return false, fmt.Sprintf("events %q", seen)
	})
	t.Logf("event: %s", found)
}

// TestE2ERBACIsMinimal: deploy/rbac.yaml's ClusterRole has no rule the
// agent can do without. Each subtest removes one resource (or the events
// verbs) from the role and shows what breaks: the agent's watch of that
// resource is refused (it then never syncs the objects), or, for events,
// the rebalancer's Event is rejected. TestE2EAgentSpec, with the role as
// shipped, shows it is enough.
func TestE2ERBACIsMinimal(t *testing.T) {
	requireE2E(t)
	for _, res := range []string{"services", "nodes", "pods", "endpointslices"} {
		t.Run("without "+res, func(t *testing.T) {
			c := newClusterWithRole(t, func(r *rbacv1.ClusterRole) { r.Rules = withoutResource(r.Rules, res) })
			topo := c.env.NewTopology(t, 1)
			a := c.env.NewAgent(t)
			a.WriteService(agentspec.Service{Name: "web", ClusterIP: netip.MustParseAddr("10.96.0.50"), Port: 80, Backends: topo.Backends})
			a.Start()
			line := a.WaitLog(`[^\n]*cannot (list|watch) resource \\?"` + regexp.QuoteMeta(res) + `\\?"[^\n]*`)
			t.Logf("without %s: %.300s", res, line)
		})
	}
	t.Run("without events", func(t *testing.T) {
		c := newClusterWithRole(t, func(r *rbacv1.ClusterRole) { r.Rules = withoutResource(r.Rules, "events") })
		_, a := scaleUpRebalance(t, c)
		line := a.WaitLog(`[^\n]*events is forbidden[^\n]*`)
		t.Logf("without events: %.300s", line)
	})
}

// withoutResource drops res from every rule, and rules left empty.
func withoutResource(rules []rbacv1.PolicyRule, res string) []rbacv1.PolicyRule {
	var out []rbacv1.PolicyRule
	for _, r := range rules {
		r.Resources = slices.DeleteFunc(slices.Clone(r.Resources), func(x string) bool { return x == res })
		if len(r.Resources) > 0 {
			out = append(out, r)
		}
	}
	return out
}
