package ipvs

import (
	"testing"

	"github.com/switchyard/switchyard/dataplane"
)

// TestMaxConnectionsThresholds: switchyard.io/max-connections-per-backend
// becomes the upper and lower threshold of every real server of a TCP
// port's virtual servers, changed in place when the annotation changes,
// kept while a real server drains, cleared when the annotation goes; UDP
// ports are not limited. Partial and full syncs alike, and a resync or a
// restarted agent writes nothing.
func TestMaxConnectionsThresholds(t *testing.T) {
	for _, mode := range []string{"partial", "full"} {
		t.Run(mode, func(t *testing.T) {
			e := newEnv(t)
			p := e.proxier(Config{})
			web := spn("default/web", "", dataplane.TCP)
			ch := dataplane.Changes{Full: true}
			if mode == "partial" {
				ch = changed(web)
			}
			st := dataplane.NewState()
			st.NodeName = "node-a"
			limited := func(n int) *dataplane.ServicePort {
				sp := svc("default/web", "", dataplane.TCP, 80, "10.96.0.10")
				sp.MaxConnectionsPerBackend = n
				return sp
			}
			put(st, limited(2), ready("10.244.1.5:8080"))
			dns := svc("kube-system/dns", "", dataplane.UDP, 53, "10.96.0.53")
			dns.MaxConnectionsPerBackend = 2
			put(st, dns, ready("10.244.1.9:53"))
			e.sync(p, st, full)
			expectDump(t, "ipvs", e.h.Dump(), `
				vs 10.96.0.10:80/TCP rr
				  rs 10.244.1.5:8080 masq weight=1 uthreshold=2 lthreshold=2 active=0 inactive=0
				vs 10.96.0.53:53/UDP rr
				  rs 10.244.1.9:53 masq weight=1 active=0 inactive=0
			`)

			e.resetCalls()
			e.sync(p, st, full)
			e.sync(e.proxier(Config{}), st, full)
			e.expectMutations()

			// Another limit: updated in place, the new real server gets it.
			e.resetCalls()
			put(st, limited(5), ready("10.244.1.5:8080"), ready("10.244.2.7:8080"))
			e.sync(p, st, ch)
			e.expectMutations(
				"UpdateRealServer 10.96.0.10:80/TCP 10.244.1.5:8080 weight=1 uthreshold=5 lthreshold=5",
				"AddRealServer 10.96.0.10:80/TCP 10.244.2.7:8080 weight=1 uthreshold=5 lthreshold=5")

			// A removed endpoint with connections drains with its limit.
			e.h.SetConnections(key("10.96.0.10:80/TCP"), addrPort("10.244.2.7:8080"), 1, 0)
			e.resetCalls()
			put(st, limited(5), ready("10.244.1.5:8080"))
			e.sync(p, st, ch)
			e.expectMutations("UpdateRealServer 10.96.0.10:80/TCP 10.244.2.7:8080 weight=0 uthreshold=5 lthreshold=5")

			// No annotation: thresholds cleared.
			e.resetCalls()
			put(st, limited(0), ready("10.244.1.5:8080"))
			e.sync(p, st, ch)
			e.expectMutations("UpdateRealServer 10.96.0.10:80/TCP 10.244.1.5:8080 weight=1")
		})
	}
}
