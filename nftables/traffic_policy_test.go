package nftables

import (
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/test/netnstest"
)

// dropped checks that a request gets no answer and is not refused: the
// packets were dropped (traffic policy Local without a local endpoint, or
// a source outside loadBalancerSourceRanges).
func dropped(t *testing.T, from *netnstest.NS, proto, addr string) {
	t.Helper()
	reply, err := netnstest.Request(from, proto, addr, "hello", time.Second)
	switch {
	case err == nil:
		t.Fatalf("%s %s from %s answered %q, want it dropped", proto, addr, from.Name(), reply)
	case errors.Is(err, syscall.ECONNREFUSED):
		t.Fatalf("%s %s from %s refused, want it dropped", proto, addr, from.Name())
	}
}

// onlyFrom asks n times and checks that only id answers, seeing src.
func onlyFrom(t *testing.T, from *netnstest.NS, addr, id, src string, n int) {
	t.Helper()
	for range n {
		gotID, gotSrc := ask(t, from, "tcp", addr)
		if gotID != id || (src != "" && gotSrc != src) {
			t.Fatalf("%s from %s: %s saw %s, want only %s seeing %s", addr, from.Name(), gotID, gotSrc, id, src)
		}
	}
}

// TestKernelTrafficPolicies sends real packets through Services with
// traffic policies Local, session affinity and loadBalancerSourceRanges.
// In the traffic topology be1 is on this node (node-a) and be2 stands for
// an endpoint on another node (node-b): the node routes to it all the same.
func TestKernelTrafficPolicies(t *testing.T) {
	requireKernel(t)
	topo := newTrafficTopology(t)
	cfg := Config{ClusterCIDRs: clusterCIDR, ConntrackDropInvalid: true}
	p := topo.k.proxier(t, cfg)
	const (
		etpIP, etpLB, etpExt, etpNodePort = "10.96.1.10", "198.51.100.20", "203.0.113.20", "30180"
		remoteIP, remoteLB, remoteNP      = "10.96.1.11", "198.51.100.21", "30181"
		itpIP, itpRemoteIP                = "10.96.1.12", "10.96.1.13"
		affIP                             = "10.96.1.14"
		fwIP, fwLB                        = "10.96.1.15", "198.51.100.25"
	)
	clientAddr := "192.168.77.2"
	etp := svc{ns: "default", name: "etp-local", proto: dataplane.TCP, svcPort: 80, nodePort: 30180,
		clusterIPs: []string{etpIP}, lbIPs: []string{etpLB}, externalIPs: []string{etpExt},
		endpoints: []string{be1Addr + ":8080"}, remote: []string{be2Addr + ":8080"}, etpLocal: true}
	etpRemote := svc{ns: "default", name: "etp-remote", proto: dataplane.TCP, svcPort: 80, nodePort: 30181,
		clusterIPs: []string{remoteIP}, lbIPs: []string{remoteLB}, remote: []string{be2Addr + ":8080"}, etpLocal: true}
	itp := svc{ns: "default", name: "itp-local", proto: dataplane.TCP, svcPort: 80, clusterIPs: []string{itpIP},
		endpoints: []string{be1Addr + ":8080"}, remote: []string{be2Addr + ":8080"}, itpLocal: true}
	itpRemote := svc{ns: "default", name: "itp-remote", proto: dataplane.TCP, svcPort: 80, clusterIPs: []string{itpRemoteIP},
		remote: []string{be2Addr + ":8080"}, itpLocal: true}
	aff := svc{ns: "default", name: "sticky", proto: dataplane.TCP, svcPort: 80, clusterIPs: []string{affIP},
		endpoints: []string{be1Addr + ":8080", be2Addr + ":8080"}, affinity: time.Hour}
	fw := svc{ns: "default", name: "firewalled", proto: dataplane.TCP, svcPort: 80, clusterIPs: []string{fwIP},
		lbIPs: []string{fwLB}, endpoints: []string{be1Addr + ":8080", be2Addr + ":8080"}, sourceRanges: []string{"192.168.77.0/24"}}
	st := newState(etp, etpRemote, itp, itpRemote, aff, fw)
	mustSync(t, p, st, full)
	both := []string{"be1", "be2"}
	nodeSource := map[string]string{"be1": nodeOnBe1, "be2": nodeOnBe2}

	t.Run("external policy Local: outside clients reach only the local endpoint, unmasqueraded", func(t *testing.T) {
		for _, addr := range []string{etpLB + ":80", etpExt + ":80", nodeAddr + ":" + etpNodePort} {
			onlyFrom(t, topo.client, addr, "be1", clientAddr, 10)
		}
	})
	t.Run("external policy Local: pods short-circuit to every endpoint, unmasqueraded", func(t *testing.T) {
		for _, addr := range []string{etpLB + ":80", nodeAddr + ":" + etpNodePort} {
			for id, src := range reachAll(t, topo.pod, "tcp", addr, both...) {
				if src != podAddr {
					t.Errorf("%s via %s saw %s, want the pod's %s", id, addr, src, podAddr)
				}
			}
		}
	})
	t.Run("external policy Local: the node itself reaches every endpoint, masqueraded", func(t *testing.T) {
		for _, addr := range []string{etpLB + ":80", nodeAddr + ":" + etpNodePort} {
			for id, src := range reachAll(t, topo.node, "tcp", addr, both...) {
				if src != nodeSource[id] {
					t.Errorf("%s via %s saw %s, want %s", id, addr, src, nodeSource[id])
				}
			}
		}
	})
	t.Run("external policy Local: cluster IP still uses every endpoint", func(t *testing.T) {
		reachAll(t, topo.client, "tcp", etpIP+":80", both...)
	})
	t.Run("external policy Local without a local endpoint: outside dropped, inside served", func(t *testing.T) {
		dropped(t, topo.client, "tcp", remoteLB+":80")
		dropped(t, topo.client, "tcp", nodeAddr+":"+remoteNP)
		onlyFrom(t, topo.pod, remoteLB+":80", "be2", podAddr, 3)
		onlyFrom(t, topo.node, nodeAddr+":"+remoteNP, "be2", nodeOnBe2, 3)
		onlyFrom(t, topo.client, remoteIP+":80", "be2", nodeOnBe2, 3)
	})
	t.Run("internal policy Local: cluster IP only to the local endpoint", func(t *testing.T) {
		onlyFrom(t, topo.pod, itpIP+":80", "be1", podAddr, 10)
		onlyFrom(t, topo.client, itpIP+":80", "be1", nodeOnBe1, 5)
	})
	t.Run("internal policy Local without a local endpoint: dropped, not rejected", func(t *testing.T) {
		dropped(t, topo.pod, "tcp", itpRemoteIP+":80")
		dropped(t, topo.client, "tcp", itpRemoteIP+":80")
	})
	t.Run("local endpoint appears and goes: partial syncs follow", func(t *testing.T) {
		etpRemote.endpoints = []string{be1Addr + ":8080"}
		putService(st, etpRemote)
		itpRemote.endpoints = []string{be1Addr + ":8080"}
		putService(st, itpRemote)
		mustSync(t, p, st, changed(etpRemote.portName().ServiceName, itpRemote.portName().ServiceName))
		onlyFrom(t, topo.client, remoteLB+":80", "be1", clientAddr, 5)
		onlyFrom(t, topo.pod, itpRemoteIP+":80", "be1", podAddr, 5)
		etpRemote.endpoints, itpRemote.endpoints = nil, nil
		putService(st, etpRemote)
		putService(st, itpRemote)
		mustSync(t, p, st, changed(etpRemote.portName().ServiceName, itpRemote.portName().ServiceName))
		dropped(t, topo.client, "tcp", remoteLB+":80")
		dropped(t, topo.pod, "tcp", itpRemoteIP+":80")
		// No endpoint anywhere: rejected again.
		itpRemote.remote = nil
		putService(st, itpRemote)
		mustSync(t, p, st, changed(itpRemote.portName().ServiceName))
		refused(t, topo.pod, "tcp", itpRemoteIP+":80")
	})

	t.Run("session affinity: a client sticks to one endpoint", func(t *testing.T) {
		for _, from := range []*netnstest.NS{topo.client, topo.pod} {
			first, _ := ask(t, from, "tcp", affIP+":80")
			onlyFrom(t, from, affIP+":80", first, "", 20)
		}
		if d := topo.k.dump(t); !strings.Contains(d, "\t"+clientAddr+" : ") || !strings.Contains(d, "\t"+podAddr+" : ") {
			t.Errorf("affinity map lacks the clients:\n%s", d)
		}
	})
	t.Run("session affinity: the endpoint goes, the client moves and sticks again", func(t *testing.T) {
		first, _ := ask(t, topo.client, "tcp", affIP+":80")
		other, otherAddr := "be2", be2Addr
		if first == "be2" {
			other, otherAddr = "be1", be1Addr
		}
		aff.endpoints = []string{otherAddr + ":8080"}
		putService(st, aff)
		mustSync(t, p, st, changed(aff.portName().ServiceName))
		onlyFrom(t, topo.client, affIP+":80", other, "", 5)
		// Back: the client keeps the endpoint it has now.
		aff.endpoints = []string{be1Addr + ":8080", be2Addr + ":8080"}
		putService(st, aff)
		mustSync(t, p, st, changed(aff.portName().ServiceName))
		onlyFrom(t, topo.client, affIP+":80", other, "", 20)
	})
	t.Run("session affinity: entries expire after the timeout", func(t *testing.T) {
		aff.affinity = 2 * time.Second
		putService(st, aff)
		mustSync(t, p, st, changed(aff.portName().ServiceName))
		ask(t, topo.client, "tcp", affIP+":80")
		if !strings.Contains(topo.k.dump(t), "\t"+clientAddr+" : ") {
			t.Fatal("no affinity entry after a request")
		}
		time.Sleep(3 * time.Second)
		if d := topo.k.dump(t); strings.Contains(d, "\t"+clientAddr+" : ") {
			t.Errorf("affinity entry still there after its timeout:\n%s", d)
		}
	})
	t.Run("session affinity off: random again", func(t *testing.T) {
		aff.affinity = 0
		putService(st, aff)
		mustSync(t, p, st, changed(aff.portName().ServiceName))
		reachAll(t, topo.client, "tcp", affIP+":80", both...)
		if strings.Contains(topo.k.dump(t), "aff-") {
			t.Error("affinity map left after affinity was turned off")
		}
	})

	t.Run("load balancer source ranges", func(t *testing.T) {
		reachAll(t, topo.client, "tcp", fwLB+":80", both...)
		dropped(t, topo.pod, "tcp", fwLB+":80")
		// The node's own traffic passes (its address is in the range);
		// the cluster IP is not firewalled.
		reachAll(t, topo.node, "tcp", fwLB+":80", both...)
		reachAll(t, topo.pod, "tcp", fwIP+":80", both...)
		fw.sourceRanges = []string{"10.244.3.0/24"}
		putService(st, fw)
		mustSync(t, p, st, changed(fw.portName().ServiceName))
		dropped(t, topo.client, "tcp", fwLB+":80")
		// As kube-proxy, the node has no exemption of its own.
		dropped(t, topo.node, "tcp", fwLB+":80")
		reachAll(t, topo.pod, "tcp", fwLB+":80", both...)
		fw.sourceRanges = nil
		putService(st, fw)
		mustSync(t, p, st, changed(fw.portName().ServiceName))
		reachAll(t, topo.client, "tcp", fwLB+":80", both...)
	})

	t.Run("the partial syncs left what a full sync wants; a restart adopts it", func(t *testing.T) {
		aff.affinity = time.Hour
		putService(st, aff)
		mustSync(t, p, st, changed(aff.portName().ServiceName))
		ask(t, topo.client, "tcp", affIP+":80") // a live affinity entry
		topo.k.cnt.take()
		mustSync(t, p, st, full)
		if msgs, flushes := topo.k.cnt.take(); flushes != 0 {
			t.Errorf("full sync after partial ones sent %d messages", msgs)
		}
		k2 := &kernelNS{ns: topo.node, conn: openConn(t, topo.node)}
		mustSync(t, k2.proxier(t, cfg), st, full)
		if msgs, flushes := k2.cnt.take(); flushes != 0 {
			t.Errorf("restarted Proxier sent %d messages to a matching table", msgs)
		}
	})
}
