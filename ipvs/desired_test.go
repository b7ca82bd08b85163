package ipvs

import (
	"testing"
	"time"

	"github.com/switchyard/switchyard/dataplane"
)

func TestDesired(t *testing.T) {
	nodeIPs := addrs("192.168.1.10", "192.168.1.11", "fd00:1::10")
	tests := []struct {
		name  string
		cfg   Config
		build func(st *dataplane.State)
	}{{
		name: "clusterip",
		build: func(st *dataplane.State) {
			put(st, svc("default/web", "http", dataplane.TCP, 80, "10.96.0.10"),
				ready("10.244.1.5:8080"), ready("10.244.2.7:8080"), terminating("10.244.3.9:8080", true))
		},
	}, {
		name: "no-endpoints",
		build: func(st *dataplane.State) {
			put(st, svc("default/empty", "", dataplane.TCP, 80, "10.96.0.11"))
		},
	}, {
		name: "only-terminating-endpoints",
		build: func(st *dataplane.State) {
			put(st, svc("default/web", "", dataplane.TCP, 80, "10.96.0.10"),
				terminating("10.244.1.5:8080", true), terminating("10.244.2.7:8080", false))
		},
	}, {
		name: "nodeport-two-node-ips",
		build: func(st *dataplane.State) {
			sp := svc("default/np", "http", dataplane.TCP, 80, "10.96.0.20")
			sp.NodePort = 30080
			put(st, sp, ready("10.244.1.5:8080"))
		},
	}, {
		name: "externalip-and-lb",
		build: func(st *dataplane.State) {
			sp := svc("default/lb", "https", dataplane.TCP, 443, "10.96.0.30")
			sp.ExternalIPs = addrs("203.0.113.7")
			sp.LoadBalancerIPs = addrs("198.51.100.1", "198.51.100.2")
			sp.NodePort = 31443
			put(st, sp, ready("10.244.1.5:8443"))
		},
	}, {
		name: "udp-and-sctp",
		build: func(st *dataplane.State) {
			put(st, svc("kube-system/dns", "dns", dataplane.UDP, 53, "10.96.0.10"), ready("10.244.1.2:53"), ready("10.244.2.2:53"))
			put(st, svc("kube-system/dns", "dns-tcp", dataplane.TCP, 53, "10.96.0.10"), ready("10.244.1.2:53"), ready("10.244.2.2:53"))
			put(st, svc("default/sig", "", dataplane.SCTP, 3868, "10.96.0.40"), ready("10.244.1.8:3868"))
		},
	}, {
		name: "scheduler-annotation-and-default",
		cfg:  Config{Scheduler: "wrr"},
		build: func(st *dataplane.State) {
			a := svc("default/a", "", dataplane.TCP, 80, "10.96.0.50")
			a.Scheduler = "lc"
			put(st, a, ready("10.244.1.5:80"))
			put(st, svc("default/b", "", dataplane.TCP, 80, "10.96.0.51"), ready("10.244.1.6:80"))
			// Opted into rebalancing: least connections, unless annotated.
			c := svc("default/c", "", dataplane.TCP, 80, "10.96.0.52")
			c.Rebalance = &dataplane.RebalanceSpec{Tolerance: 0.1}
			put(st, c, ready("10.244.1.7:80"))
			d := svc("default/d", "", dataplane.TCP, 80, "10.96.0.53")
			d.Rebalance = &dataplane.RebalanceSpec{Tolerance: 0.1}
			d.Scheduler = "sh"
			put(st, d, ready("10.244.1.8:80"))
		},
	}, {
		name: "session-affinity",
		build: func(st *dataplane.State) {
			sp := svc("default/sticky", "", dataplane.TCP, 80, "10.96.0.60")
			sp.SessionAffinityTimeout = 10800 * time.Second
			sp.NodePort = 30060
			put(st, sp, ready("10.244.1.5:80"))
		},
	}, {
		name: "dual-stack",
		build: func(st *dataplane.State) {
			sp := svc("default/ds", "", dataplane.TCP, 80, "10.96.0.70", "fd00:96::70")
			sp.NodePort = 30070
			put(st, sp, ready("10.244.1.5:80"), ready("[fd00:244::5]:80"))
		},
	}, {
		name: "other-family-frontends-ignored",
		build: func(st *dataplane.State) {
			sp := svc("default/v4only", "", dataplane.TCP, 80, "10.96.0.90")
			sp.ExternalIPs = addrs("203.0.113.10", "2001:db8::10")
			sp.LoadBalancerIPs = addrs("2001:db8::11")
			sp.NodePort = 30090
			put(st, sp, ready("10.244.1.5:80"))
		},
	}, {
		name: "conflict-first-by-name-wins",
		build: func(st *dataplane.State) {
			a := svc("default/a", "", dataplane.TCP, 80, "10.96.0.80")
			a.ExternalIPs = addrs("203.0.113.9")
			put(st, a, ready("10.244.1.1:80"))
			b := svc("default/b", "", dataplane.TCP, 80, "10.96.0.81")
			b.ExternalIPs = addrs("203.0.113.9")
			put(st, b, ready("10.244.1.2:80"))
			// Same NodePort twice (API validation prevents it; the model
			// does not): also first by name.
			a2 := svc("other/z", "", dataplane.UDP, 53, "10.96.0.82")
			a2.NodePort = 30053
			put(st, a2, ready("10.244.1.3:53"))
			b2 := svc("other/y", "", dataplane.UDP, 54, "10.96.0.83")
			b2.NodePort = 30053
			put(st, b2, ready("10.244.1.4:53"))
		},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := dataplane.NewState()
			tc.build(st)
			ds := Desired(st, nodeIPs, tc.cfg)
			golden(t, "desired/"+tc.name, ds.Dump())
		})
	}
}

func TestDesiredIsPure(t *testing.T) {
	st := dataplane.NewState()
	sp := svc("default/web", "", dataplane.TCP, 80, "10.96.0.10")
	sp.NodePort = 30080
	put(st, sp, ready("10.244.1.5:8080"))
	a := Desired(st, addrs("192.168.1.10"), Config{}).Dump()
	b := Desired(st, addrs("192.168.1.10"), Config{}).Dump()
	if a != b {
		t.Fatalf("two calls differ:\n%s\n%s", a, b)
	}
}
