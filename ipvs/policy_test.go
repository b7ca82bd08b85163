package ipvs

import (
	"maps"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/switchyard/switchyard/dataplane"
)

const (
	thisNode  = "node-a"
	otherNode = "node-b"
)

// on places an endpoint on a node.
func on(node string, e dataplane.Endpoint) dataplane.Endpoint { e.NodeName = node; return e }

func notReady(ap string) dataplane.Endpoint {
	return dataplane.Endpoint{Addr: addrPort(ap)}
}

// zoneHints sets an endpoint's zone and its zone hints.
func zoneHints(zone string, e dataplane.Endpoint, hints ...string) dataplane.Endpoint {
	e.Zone = zone
	e.ZoneHints = hints
	return e
}

func policyState() *dataplane.State {
	st := dataplane.NewState()
	st.NodeName = thisNode
	return st
}

// edge is a Service with every kind of frontend.
func edge(eTPLocal, iTPLocal bool) *dataplane.ServicePort {
	sp := svc("default/edge", "", dataplane.TCP, 80, "10.96.0.30")
	sp.ExternalIPs = addrs("203.0.113.7")
	sp.LoadBalancerIPs = addrs("198.51.100.1")
	sp.NodePort = 30080
	sp.ExternalPolicyLocal, sp.InternalPolicyLocal = eTPLocal, iTPLocal
	return sp
}

// Golden Desired dumps for the traffic policies and topology hints.
func TestDesiredPolicies(t *testing.T) {
	nodeIPs := addrs("192.168.1.10")
	// A local and a remote endpoint of each condition.
	mixed := []dataplane.Endpoint{
		on(thisNode, ready("10.244.1.5:8080")), on(otherNode, ready("10.244.2.7:8080")),
		on(thisNode, terminating("10.244.1.6:8080", true)), on(otherNode, notReady("10.244.2.8:8080")),
	}
	tests := []struct {
		name  string
		build func(st *dataplane.State)
	}{{
		// ClusterIP: every endpoint; external frontends: local only.
		name:  "etp-local",
		build: func(st *dataplane.State) { put(st, edge(true, false), mixed...) },
	}, {
		// No local endpoint: the external virtual servers fall back to
		// the Cluster endpoints, as kube-proxy's IPVS mode (package
		// iptables drops outside traffic to them; pods and the node
		// reach them).
		name: "etp-local-no-local-endpoint",
		build: func(st *dataplane.State) {
			put(st, edge(true, false), on(otherNode, ready("10.244.2.7:8080")), on(otherNode, ready("10.244.2.9:8080")))
		},
	}, {
		// A local endpoint that is not ready (nor serving): the Local set
		// is empty, so the external virtual servers use the Cluster set,
		// weighed over the Cluster pool: the local one at 0, like the
		// not-ready remote one.
		name: "etp-local-local-endpoint-not-ready",
		build: func(st *dataplane.State) {
			put(st, edge(true, false), on(thisNode, notReady("10.244.1.5:8080")),
				on(otherNode, ready("10.244.2.7:8080")), on(otherNode, notReady("10.244.2.8:8080")))
		},
	}, {
		// No endpoint ready or serving anywhere: nothing to fall back
		// to; the local not-ready endpoint weighs 0 on the external
		// virtual servers, the remote ones are left out there.
		name: "etp-local-nothing-ready",
		build: func(st *dataplane.State) {
			put(st, edge(true, false), on(thisNode, notReady("10.244.1.5:8080")), on(otherNode, notReady("10.244.2.8:8080")))
		},
	}, {
		// Both policies Local, no local endpoint: only the external
		// virtual servers fall back; the ClusterIP has no real server
		// (as the nftables dataplane drops that traffic; kube-proxy's
		// IPVS mode would fall back there too).
		name: "both-local-no-local-endpoint",
		build: func(st *dataplane.State) {
			put(st, edge(true, true), on(otherNode, ready("10.244.2.7:8080")), on(otherNode, ready("10.244.2.9:8080")))
		},
	}, {
		// Each family decides alone: IPv4 has a local endpoint, IPv6
		// only a remote one and falls back.
		name: "etp-local-no-local-endpoint-one-family",
		build: func(st *dataplane.State) {
			sp := svc("default/ds", "", dataplane.TCP, 80, "10.96.0.70", "fd00:96::70")
			sp.LoadBalancerIPs = addrs("198.51.100.7", "2001:db8::7")
			sp.ExternalPolicyLocal = true
			put(st, sp, on(thisNode, ready("10.244.1.5:8080")), on(otherNode, ready("10.244.2.7:8080")),
				on(otherNode, ready("[fd00:244::7]:8080")))
		},
	}, {
		// Local endpoints only terminating: they serve (KEP-1669), for
		// the Local set independently of the Cluster set.
		name: "etp-local-terminating-fallback",
		build: func(st *dataplane.State) {
			put(st, edge(true, false), on(thisNode, terminating("10.244.1.6:8080", true)), on(otherNode, ready("10.244.2.7:8080")))
		},
	}, {
		name: "itp-local-clusterip",
		build: func(st *dataplane.State) {
			sp := svc("default/internal", "", dataplane.TCP, 80, "10.96.0.40")
			sp.InternalPolicyLocal = true
			put(st, sp, mixed...)
		},
	}, {
		// internalTrafficPolicy Local with external Cluster: the opposite
		// split of etp-local.
		name:  "itp-local-etp-cluster",
		build: func(st *dataplane.State) { put(st, edge(false, true), mixed...) },
	}, {
		name:  "both-local",
		build: func(st *dataplane.State) { put(st, edge(true, true), mixed...) },
	}, {
		// Zone hints with the node's zone set: same-zone endpoints only,
		// on every frontend; a same-zone endpoint that is not ready
		// weighs 0, other zones' are left out.
		name: "topology-same-zone",
		build: func(st *dataplane.State) {
			st.NodeZone = "zone-a"
			sp := svc("default/topo", "", dataplane.TCP, 80, "10.96.0.50")
			sp.NodePort = 30050
			put(st, sp,
				zoneHints("zone-a", on(thisNode, ready("10.244.1.5:8080")), "zone-a"),
				zoneHints("zone-a", on(otherNode, ready("10.244.3.5:8080")), "zone-a"),
				zoneHints("zone-b", on("node-c", ready("10.244.2.7:8080")), "zone-b"),
				zoneHints("zone-a", on(otherNode, notReady("10.244.3.6:8080")), "zone-a"),
				zoneHints("zone-b", on("node-c", notReady("10.244.2.8:8080")), "zone-b"))
		},
	}, {
		// No endpoint hinted for this zone: hints are ignored.
		name: "topology-no-hint-for-zone",
		build: func(st *dataplane.State) {
			st.NodeZone = "zone-c"
			put(st, svc("default/topo", "", dataplane.TCP, 80, "10.96.0.50"),
				zoneHints("zone-a", ready("10.244.1.5:8080"), "zone-a"),
				zoneHints("zone-b", ready("10.244.2.7:8080"), "zone-b"))
		},
	}, {
		// The node's zone unknown: hints are ignored.
		name: "topology-node-zone-unset",
		build: func(st *dataplane.State) {
			put(st, svc("default/topo", "", dataplane.TCP, 80, "10.96.0.50"),
				zoneHints("zone-a", ready("10.244.1.5:8080"), "zone-a"),
				zoneHints("zone-b", ready("10.244.2.7:8080"), "zone-b"))
		},
	}, {
		// One ready endpoint without hints: hints are ignored.
		name: "topology-partial-hints",
		build: func(st *dataplane.State) {
			st.NodeZone = "zone-a"
			put(st, svc("default/topo", "", dataplane.TCP, 80, "10.96.0.50"),
				zoneHints("zone-a", ready("10.244.1.5:8080"), "zone-a"),
				ready("10.244.2.7:8080"))
		},
	}, {
		// PreferSameNode hints.
		name: "topology-same-node",
		build: func(st *dataplane.State) {
			e1 := on(thisNode, ready("10.244.1.5:8080"))
			e1.NodeHints = []string{thisNode}
			e2 := on(otherNode, ready("10.244.2.7:8080"))
			e2.NodeHints = []string{otherNode}
			put(st, svc("default/topo", "", dataplane.TCP, 80, "10.96.0.50"), e1, e2)
		},
	}, {
		// Families are categorized apart, as kube-proxy's per-family
		// proxiers do: IPv4 has no ready endpoint and falls back to its
		// serving terminating one, IPv6 uses its ready one.
		name: "dual-stack-per-family-fallback",
		build: func(st *dataplane.State) {
			put(st, svc("default/ds", "", dataplane.TCP, 80, "10.96.0.70", "fd00:96::70"),
				terminating("10.244.1.5:80", true), ready("[fd00:244::5]:80"), terminating("[fd00:244::6]:80", true))
		},
	}, {
		// A Service whose ExternalIP is its own ClusterIP: the first claim
		// (the ClusterIP) decides, so the key uses the internal policy.
		name: "etp-local-externalip-equals-clusterip",
		build: func(st *dataplane.State) {
			sp := svc("default/same", "", dataplane.TCP, 80, "10.96.0.80")
			sp.ExternalIPs = addrs("10.96.0.80", "203.0.113.8")
			sp.ExternalPolicyLocal = true
			put(st, sp, on(thisNode, ready("10.244.1.5:8080")), on(otherNode, ready("10.244.2.7:8080")))
		},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := policyState()
			tc.build(st)
			golden(t, "desired/policy-"+tc.name, Desired(st, nodeIPs, Config{}).Dump())
		})
	}
}

// Switching externalTrafficPolicy to Local: the external virtual servers'
// remote real servers drain like removed endpoints (weight 0 while
// connected, deleted once idle); the ClusterIP keeps them. A remote
// endpoint is never added to an external virtual server.
func TestExternalPolicyLocalDrainsRemote(t *testing.T) {
	for _, mode := range []string{"partial", "full"} {
		t.Run(mode, func(t *testing.T) {
			e := newEnv(t)
			p := e.proxier(Config{})
			st := policyState()
			local, remote := on(thisNode, ready("10.244.1.5:8080")), on(otherNode, ready("10.244.2.7:8080"))
			sp := svc("default/np", "", dataplane.TCP, 80, "10.96.0.20")
			sp.NodePort = 30080
			put(st, sp, local, remote)
			e.sync(p, st, full)
			ch := changed(sp.Name)
			if mode == "full" {
				ch = full
			}
			npKey := key("192.168.1.10:30080/TCP")
			e.h.SetConnections(npKey, remote.Addr, 1, 0)

			e.resetCalls()
			sp2 := *sp
			sp2.ExternalPolicyLocal = true
			put(st, &sp2, local, remote)
			e.sync(p, st, ch)
			e.expectMutations(
				"UpdateRealServer 192.168.1.10:30080/TCP 10.244.2.7:8080 weight=0",
				"DeleteRealServer 192.168.1.11:30080/TCP 10.244.2.7:8080")
			if got := rsLine(t, e.h, key("10.96.0.20:80/TCP"), "10.244.2.7:8080"); got != "rs 10.244.2.7:8080 masq weight=1 active=0 inactive=0" {
				t.Errorf("ClusterIP real server: %q", got)
			}

			// Its connection ends: deleted.
			e.h.SetConnections(npKey, remote.Addr, 0, 0)
			e.resetCalls()
			e.sync(p, st, ch)
			e.expectMutations("DeleteRealServer 192.168.1.10:30080/TCP 10.244.2.7:8080")

			// The remote endpoint becomes not ready: still never added.
			e.resetCalls()
			put(st, &sp2, local, on(otherNode, notReady("10.244.2.7:8080")))
			e.sync(p, st, ch)
			e.expectMutations("UpdateRealServer 10.96.0.20:80/TCP 10.244.2.7:8080 weight=0")
			assertSameAsFreshFullSync(t, p, e, st)

			// Back to Cluster: added to the NodePorts at its weight.
			e.resetCalls()
			put(st, sp, local, remote)
			e.sync(p, st, ch)
			e.expectMutations(
				"UpdateRealServer 10.96.0.20:80/TCP 10.244.2.7:8080 weight=1",
				"AddRealServer 192.168.1.10:30080/TCP 10.244.2.7:8080 weight=1",
				"AddRealServer 192.168.1.11:30080/TCP 10.244.2.7:8080 weight=1")
		})
	}
}

// externalTrafficPolicy Local, the local endpoint leaves: the external
// virtual servers fall back to the remote one (added at weight 1), and the
// local one drains like any removed endpoint (weight 0 while connected,
// deleted once idle). When a local endpoint comes back, the remote one
// drains from the external virtual servers the same way.
func TestExternalPolicyLocalFallbackDrains(t *testing.T) {
	for _, mode := range []string{"partial", "full"} {
		t.Run(mode, func(t *testing.T) {
			e := newEnv(t)
			p := e.proxier(Config{})
			st := policyState()
			local, remote := on(thisNode, ready("10.244.1.5:8080")), on(otherNode, ready("10.244.2.7:8080"))
			sp := svc("default/np", "", dataplane.TCP, 80, "10.96.0.20")
			sp.NodePort = 30080
			sp.ExternalPolicyLocal = true
			put(st, sp, local, remote)
			e.sync(p, st, full)
			ch := changed(sp.Name)
			if mode == "full" {
				ch = full
			}
			npKey := key("192.168.1.10:30080/TCP")
			expectDump(t, "local endpoint", e.h.Dump(), `
				vs 10.96.0.20:80/TCP rr
				  rs 10.244.1.5:8080 masq weight=1 active=0 inactive=0
				  rs 10.244.2.7:8080 masq weight=1 active=0 inactive=0
				vs 192.168.1.10:30080/TCP rr
				  rs 10.244.1.5:8080 masq weight=1 active=0 inactive=0
				vs 192.168.1.11:30080/TCP rr
				  rs 10.244.1.5:8080 masq weight=1 active=0 inactive=0
			`)

			// The local endpoint leaves with a connection on one NodePort.
			e.h.SetConnections(npKey, local.Addr, 1, 0)
			e.resetCalls()
			put(st, sp, remote)
			e.sync(p, st, ch)
			e.expectMutations(
				"DeleteRealServer 10.96.0.20:80/TCP 10.244.1.5:8080",
				"AddRealServer 192.168.1.10:30080/TCP 10.244.2.7:8080 weight=1",
				"UpdateRealServer 192.168.1.10:30080/TCP 10.244.1.5:8080 weight=0",
				"AddRealServer 192.168.1.11:30080/TCP 10.244.2.7:8080 weight=1",
				"DeleteRealServer 192.168.1.11:30080/TCP 10.244.1.5:8080")

			// Its connection ends: deleted.
			e.h.SetConnections(npKey, local.Addr, 0, 0)
			e.resetCalls()
			e.sync(p, st, ch)
			e.expectMutations("DeleteRealServer 192.168.1.10:30080/TCP 10.244.1.5:8080")
			assertSameAsFreshFullSync(t, p, e, st)

			// A local endpoint comes back while the remote one has a
			// connection through a NodePort: it drains there.
			e.h.SetConnections(npKey, remote.Addr, 1, 0)
			e.resetCalls()
			put(st, sp, local, remote)
			e.sync(p, st, ch)
			e.expectMutations(
				"AddRealServer 10.96.0.20:80/TCP 10.244.1.5:8080 weight=1",
				"AddRealServer 192.168.1.10:30080/TCP 10.244.1.5:8080 weight=1",
				"UpdateRealServer 192.168.1.10:30080/TCP 10.244.2.7:8080 weight=0",
				"AddRealServer 192.168.1.11:30080/TCP 10.244.1.5:8080 weight=1",
				"DeleteRealServer 192.168.1.11:30080/TCP 10.244.2.7:8080")
		})
	}
}

// A zone change (the tracker reports every Service changed) moves the real
// servers to the new zone's endpoints.
func TestNodeZoneChange(t *testing.T) {
	e := newEnv(t)
	p := e.proxier(Config{})
	st := policyState()
	st.NodeZone = "zone-a"
	sp := svc("default/topo", "", dataplane.TCP, 80, "10.96.0.50")
	put(st, sp,
		zoneHints("zone-a", ready("10.244.1.5:8080"), "zone-a"),
		zoneHints("zone-b", ready("10.244.2.7:8080"), "zone-b"))
	e.sync(p, st, full)
	expectDump(t, "zone-a", e.h.Dump(), `
		vs 10.96.0.50:80/TCP rr
		  rs 10.244.1.5:8080 masq weight=1 active=0 inactive=0
	`)
	st.NodeZone = "zone-b"
	e.resetCalls()
	e.sync(p, st, changed(sp.Name))
	e.expectMutations(
		"AddRealServer 10.96.0.50:80/TCP 10.244.2.7:8080 weight=1",
		"DeleteRealServer 10.96.0.50:80/TCP 10.244.1.5:8080")
	assertSameAsFreshFullSync(t, p, e, st)
}

// TestPartialSyncMatchesFullSyncWithPolicies is TestPartialSyncMatchesFullSync
// with random traffic policies, endpoint nodes and zone hints: the index
// must carry which keys are external (their first claim decides the
// policy), including keys contested between Services.
func TestPartialSyncMatchesFullSyncWithPolicies(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	g := &modelGen{rng: rng}
	e := newEnv(t)
	p := e.proxier(Config{})
	st := policyState()
	st.NodeZone = "zone-a"
	randomize := func(s dataplane.ServiceName) {
		for _, name := range slices.Collect(maps.Keys(st.Services)) {
			if name.ServiceName != s {
				continue
			}
			sp := st.Services[name]
			sp.ExternalPolicyLocal = rng.IntN(2) == 0
			sp.InternalPolicyLocal = rng.IntN(3) == 0
			hinted := rng.IntN(2) == 0
			eps := slices.Clone(st.Endpoints[name])
			for i := range eps {
				eps[i].NodeName = []string{thisNode, otherNode, ""}[rng.IntN(3)]
				if hinted {
					eps[i].ZoneHints = []string{[]string{"zone-a", "zone-b"}[rng.IntN(2)]}
				}
			}
			put(st, sp, eps...)
		}
	}
	for _, s := range g.services() {
		g.replace(st, s, g.ports(s)...)
		randomize(s)
	}
	e.sync(p, st, full)
	steps := 300
	if testing.Short() {
		steps = 60
	}
	for step := range steps {
		ch := dataplane.Changes{Services: map[dataplane.ServiceName]struct{}{}}
		for range 1 + rng.IntN(3) {
			s := g.pick()
			ch.Services[s] = struct{}{}
			switch rng.IntN(4) {
			case 0:
				g.replace(st, s)
			case 1: // only policies, nodes and hints change
			default:
				g.replace(st, s, g.ports(s)...)
			}
			randomize(s)
		}
		if err := p.Sync(t.Context(), st, ch); err != nil {
			t.Fatalf("step %d: Sync: %v", step, err)
		}
		if !assertSameAsFreshFullSync(t, p, e, st) {
			t.Fatalf("step %d diverged; model:\n%s", step, Desired(st, p.idx.nodeIPs, p.cfg).Dump())
		}
	}
}
