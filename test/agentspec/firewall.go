package agentspec

import (
	"net/netip"
	"testing"

	"github.com/switchyard/switchyard/test/netnstest"
)

// Load-balancer IPs of the LoadBalancerSourceRanges scenario besides
// LoadBalancerIngress.
var (
	udpIngress  = ip("198.51.100.11")
	openIngress = ip("198.51.100.12")
)

// LoadBalancerSourceRanges: LoadBalancer Services (TCP and UDP) with
// loadBalancerSourceRanges, the agent told the node's address (--node-ip
// NodeAddr). Only sources inside the ranges reach the load-balancer IPs;
// the node's own requests pass exactly when its address is inside a range
// (the IPVS node sends them from the load-balancer IP, bound on it: passed
// by kube-proxy's allowFromNode rule; the nftables node from NodeAddr:
// passed by the range itself); pods and other sources get no answer,
// while the ClusterIP and the NodePort answer everyone and a
// LoadBalancer Service without ranges is not filtered at all. Changing the
// ranges takes effect both ways; removing them opens the load-balancer IP
// to everyone.
func LoadBalancerSourceRanges(t *testing.T, env *Env) {
	env.NodeIPs = []netip.Addr{NodeAddr}
	topo := env.NewTopology(t, 2)
	pod := env.AddPod(t, topo)
	a := env.NewAgent(t)
	bes := topo.Backends
	clientOnly := []netip.Prefix{netip.PrefixFrom(ClientAddr, 32)}
	lb := Service{Name: "lb", ClusterIP: lbIP, Port: 80, NodePort: NodePort, LoadBalancerIP: LoadBalancerIngress,
		LoadBalancerSourceRanges: clientOnly, Backends: bes}
	lbUDP := Service{Name: "lb-udp", ClusterIP: dnsIP, Port: 53, Protocol: "UDP", LoadBalancerIP: udpIngress,
		LoadBalancerSourceRanges: clientOnly, Backends: bes}
	open := Service{Name: "open", ClusterIP: webIP, Port: 80, LoadBalancerIP: openIngress, Backends: bes}
	lbAddr := netip.AddrPortFrom(LoadBalancerIngress, lb.Port).String()
	udpAddr := netip.AddrPortFrom(udpIngress, lbUDP.Port).String()
	openAddr := netip.AddrPortFrom(openIngress, open.Port).String()
	a.WriteService(lb, lbUDP, open)
	a.Start()
	env.DP.WaitProgrammed(t, a, lb, lbUDP, open)
	env.DP.CheckKernel(t, []Service{lb, lbUDP, open})

	setRanges := func(ranges ...netip.Prefix) {
		t.Helper()
		lb.LoadBalancerSourceRanges, lbUDP.LoadBalancerSourceRanges = ranges, ranges
		a.WriteService(lb, lbUDP)
		env.DP.WaitProgrammed(t, a, lb, lbUDP)
	}
	// reaches: both load-balancer IPs answer from every backend, which
	// sees the node's address (externalTrafficPolicy Cluster).
	reaches := func(what string, ns *netnstest.NS) {
		t.Helper()
		rs := env.Spread(t, what+": load-balancer IP", ns, "tcp", lbAddr, 4, bes...)
		ExpectSources(t, what+": load-balancer IP", topo, rs, Masqueraded)
		rs = env.Spread(t, what+": UDP load-balancer IP", ns, "udp", udpAddr, 4, bes...)
		ExpectSources(t, what+": UDP load-balancer IP", topo, rs, Masqueraded)
	}
	blocked := func(what string, ns *netnstest.NS) {
		t.Helper()
		ExpectNoAnswer(t, what+": load-balancer IP", ns, "tcp", lbAddr)
		ExpectNoAnswer(t, what+": UDP load-balancer IP", ns, "udp", udpAddr)
	}
	// unfiltered: what the ranges never apply to.
	unfiltered := func(what string) {
		t.Helper()
		env.Spread(t, what+": ClusterIP from the client", topo.Client, "tcp", lb.Addr(), 4, bes...)
		env.Spread(t, what+": ClusterIP from a pod", pod, "tcp", lb.Addr(), 4, bes...)
		env.Spread(t, what+": ClusterIP from the node", env.Node, "tcp", lb.Addr(), 4, bes...)
		env.Spread(t, what+": NodePort from the client", topo.Client, "tcp", lb.NodePortAddr(), 4, bes...)
		env.Spread(t, what+": UDP ClusterIP from the client", topo.Client, "udp", lbUDP.Addr(), 4, bes...)
		env.Spread(t, what+": load-balancer IP without ranges, from the client", topo.Client, "tcp", openAddr, 4, bes...)
		env.Spread(t, what+": load-balancer IP without ranges, from a pod", pod, "tcp", openAddr, 4, bes...)
	}

	// The steps depend on each other (one agent, ranges edited in turn),
	// so they are sections, not subtests; every message names its step.
	reaches("client only: the client, inside", topo.Client)
	blocked("client only: a pod, outside", pod)
	blocked("client only: the node, its address outside", env.Node)
	unfiltered("client only")

	setRanges(netip.PrefixFrom(NodeAddr, 24).Masked())
	reaches("client and node: the client, inside", topo.Client)
	reaches("client and node: the node, its address inside", env.Node)
	blocked("client and node: a pod, outside", pod)

	setRanges(netip.MustParsePrefix("192.0.2.0/24"))
	env.DP.CheckKernel(t, []Service{lb, lbUDP, open})
	blocked("nobody here: the client, outside", topo.Client)
	blocked("nobody here: the node, outside", env.Node)
	blocked("nobody here: a pod, outside", pod)
	unfiltered("nobody here")

	setRanges(clientOnly...)
	reaches("client again: the client, inside again", topo.Client)
	blocked("client again: the node, outside", env.Node)

	setRanges()
	env.DP.CheckKernel(t, []Service{lb, lbUDP, open})
	reaches("ranges removed: the client", topo.Client)
	reaches("ranges removed: a pod", pod)
	reaches("ranges removed: the node", env.Node)
}
