package agentspec

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard/switchyard/test/netnstest"
)

// OtherNode is the nodeName of endpoints on another node than the agent's.
const OtherNode = "other-node"

// HealthCheckNodePort is the healthCheckNodePort of the scenarios'
// externalTrafficPolicy Local LoadBalancer Services.
const HealthCheckNodePort = 32100

// Health is one answer of a healthCheckNodePort server (kube-proxy's JSON).
type Health struct {
	Status  int
	Service struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"service"`
	// LocalEndpoints is nil when the body has no localEndpoints field.
	LocalEndpoints      *int `json:"localEndpoints"`
	ServiceProxyHealthy bool `json:"serviceProxyHealthy"`
}

func (h Health) String() string {
	n := "none"
	if h.LocalEndpoints != nil {
		n = fmt.Sprint(*h.LocalEndpoints)
	}
	return fmt.Sprintf("HTTP %d for %s/%s, localEndpoints %s, serviceProxyHealthy %v",
		h.Status, h.Service.Namespace, h.Service.Name, n, h.ServiceProxyHealthy)
}

// GetHealth asks the health check server at addr (host:port) from ns, one
// connection, bounded by 5 s.
func GetHealth(ns *netnstest.NS, addr string) (Health, error) {
	var h Health
	status, body, err := httpGet(ns, addr, "/")
	if err != nil {
		return h, err
	}
	if err := json.Unmarshal([]byte(body), &h); err != nil {
		return h, fmt.Errorf("HTTP %d, body %q: %w", status, body, err)
	}
	h.Status = status
	return h, nil
}

// WaitHealth waits (bounded) until the health check server of svc at addr
// answers status with localEndpoints, for svc, from ns.
func WaitHealth(t *testing.T, a *Agent, ns *netnstest.NS, addr string, svc Service, status, localEndpoints int) Health {
	t.Helper()
	var h Health
	a.Eventually(fmt.Sprintf("health check %s: HTTP %d with localEndpoints %d", addr, status, localEndpoints), Deadline, func() (bool, string) {
		var err error
		if h, err = GetHealth(ns, addr); err != nil {
			return false, err.Error()
		}
		ok := h.Status == status && h.LocalEndpoints != nil && *h.LocalEndpoints == localEndpoints &&
			h.Service.Namespace == Namespace && h.Service.Name == svc.Name
		return ok, h.String()
	})
	return h
}

// ExternalTrafficPolicyLocal: a LoadBalancer Service with
// externalTrafficPolicy Local and one endpoint on the node, one on another
// node. From the client, the NodePort and the load-balancer IP reach only
// the local endpoint, which sees the client's own address (no SNAT); the
// ClusterIP still reaches both (masqueraded). A pod on the node reaches
// the Service on those frontends with its own address, the node itself
// masqueraded (which endpoints answer them differs: kube-proxy's IPVS mode
// sends them to the local one, the nftables one short-circuits them to
// all). The healthCheckNodePort on the node's address answers 200 with
// localEndpoints 1.
//
// Once the local endpoint leaves the EndpointSlice the health check
// answers 503 with 0; the client's new connections to the NodePort and
// the load-balancer IP are dropped, not refused (kube-proxy: the client
// retries), while the pod still reaches the remote endpoint there with its
// own address and the node reaches it masqueraded (kube-proxy's "short
// circuit": the IPVS dataplane's external virtual servers fall back to the
// Cluster endpoints and its filter drops the other sources, the nftables
// one's ext- chain sends pods and the node to them); the ClusterIP reaches
// the remote endpoint from the client.
func ExternalTrafficPolicyLocal(t *testing.T, env *Env) {
	topo := env.NewTopology(t, 2)
	pod := env.AddPod(t, topo)
	a := env.NewAgent(t)
	local, remote := topo.Backends[0].OnNode(env.NodeName), topo.Backends[1].OnNode(OtherNode)
	lb := Service{Name: "lb", ClusterIP: lbIP, Port: 80, NodePort: NodePort, LoadBalancerIP: LoadBalancerIngress,
		ExternalLocal: true, HealthCheckNodePort: HealthCheckNodePort, Backends: []Backend{local, remote}}
	lbAddr := netip.AddrPortFrom(LoadBalancerIngress, lb.Port).String()
	hcAddr := netip.AddrPortFrom(NodeAddr, HealthCheckNodePort).String()
	a.WriteService(lb)
	a.Start()
	env.DP.WaitProgrammed(t, a, lb)
	env.DP.CheckKernel(t, []Service{lb})

	rs := Only(t, "NodePort", topo.Client, "tcp", lb.NodePortAddr(), 4, local)
	ExpectSources(t, "NodePort", topo, rs, From(ClientAddr))
	rs = Only(t, "load-balancer IP", topo.Client, "tcp", lbAddr, 4, local)
	ExpectSources(t, "load-balancer IP", topo, rs, From(ClientAddr))
	rs = env.Spread(t, "ClusterIP", topo.Client, "tcp", lb.Addr(), 4, local, remote)
	ExpectSources(t, "ClusterIP", topo, rs, Masqueraded)
	for _, fe := range []struct{ what, addr string }{{"NodePort", lb.NodePortAddr()}, {"load-balancer IP", lbAddr}} {
		rs = answeredBy(t, fe.what+" from a pod", pod, fe.addr, 4, local, remote)
		ExpectSources(t, fe.what+" from a pod", topo, rs, From(PodAddr))
		rs = answeredBy(t, fe.what+" from the node", env.Node, fe.addr, 4, local, remote)
		ExpectSources(t, fe.what+" from the node", topo, rs, Masqueraded)
	}
	if h := WaitHealth(t, a, topo.Client, hcAddr, lb, http.StatusOK, 1); !h.ServiceProxyHealthy {
		t.Errorf("health check with a local endpoint: %s, want serviceProxyHealthy", h)
	}

	// The local endpoint goes (after serving on every frontend, so IPVS
	// drains it at weight 0).
	lb.Backends, lb.Draining = []Backend{remote}, []Backend{local}
	a.WriteService(lb)
	env.DP.WaitProgrammed(t, a, lb)
	env.DP.CheckKernel(t, []Service{lb})
	WaitHealth(t, a, topo.Client, hcAddr, lb, http.StatusServiceUnavailable, 0)
	expectDropped(t, "NodePort without a local endpoint, from the client", topo.Client, lb.NodePortAddr())
	expectDropped(t, "load-balancer IP without a local endpoint, from the client", topo.Client, lbAddr)
	for _, fe := range []struct{ what, addr string }{{"NodePort", lb.NodePortAddr()}, {"load-balancer IP", lbAddr}} {
		what := fe.what + " without a local endpoint"
		rs = Only(t, what+", from a pod", pod, "tcp", fe.addr, 4, remote)
		ExpectSources(t, what+", from a pod", topo, rs, From(PodAddr))
		rs = Only(t, what+", from the node", env.Node, "tcp", fe.addr, 4, remote)
		ExpectSources(t, what+", from the node", topo, rs, Masqueraded)
	}
	Only(t, "ClusterIP without a local endpoint", topo.Client, "tcp", lb.Addr(), 2, remote)
	// The client is still dropped after all that traffic (nothing it
	// left behind, a conntrack entry say, lets it through).
	expectDropped(t, "NodePort without a local endpoint, from the client again", topo.Client, lb.NodePortAddr())
}

// answeredBy makes n TCP requests from ns to addr and checks that each is
// answered by one of bes.
func answeredBy(t *testing.T, what string, ns *netnstest.NS, addr string, n int, bes ...Backend) []Reply {
	t.Helper()
	rs := RequestAll(t, ns, "tcp", addr, n)
	for _, r := range rs {
		if !slices.ContainsFunc(bes, func(be Backend) bool { return be.ID == r.ID }) {
			t.Errorf("%s: answered by %s (%v), want one of %v", what, r.ID, CountIDs(rs), backendIDs(bes))
			break
		}
	}
	return rs
}

func backendIDs(bes []Backend) []string {
	out := make([]string, 0, len(bes))
	for _, be := range bes {
		out = append(out, be.ID)
	}
	return out
}

// expectDropped checks that a new TCP connection to addr gets no answer
// within 2 s and is not refused: dropped (both dataplanes: the IPVS one's
// filter before IPVS, the nftables one's no-local-endpoint sets), so the
// client retries, as with kube-proxy.
func expectDropped(t *testing.T, what string, ns *netnstest.NS, addr string) {
	t.Helper()
	start := time.Now()
	reply, err := netnstest.Request(ns, "tcp", addr, "x", 2*time.Second)
	d := time.Since(start).Round(time.Millisecond)
	switch {
	case err == nil:
		t.Errorf("%s: tcp %s answered %q, want no answer", what, addr, reply)
	case errors.Is(err, syscall.ECONNREFUSED):
		t.Errorf("%s: tcp %s refused after %v, want it dropped (no answer)", what, addr, d)
	default:
		t.Logf("%s: no answer (%v) after %v", what, err, d)
	}
}

// InternalTrafficPolicyLocal: a Service with internalTrafficPolicy Local
// and one endpoint on the node, one on another node: its ClusterIP reaches
// only the local endpoint, from the client (masqueraded), a pod (source
// kept) and the node; its NodePort (externalTrafficPolicy Cluster) still
// reaches both.
func InternalTrafficPolicyLocal(t *testing.T, env *Env) {
	topo := env.NewTopology(t, 2)
	pod := env.AddPod(t, topo)
	a := env.NewAgent(t)
	local, remote := topo.Backends[0].OnNode(env.NodeName), topo.Backends[1].OnNode(OtherNode)
	web := Service{Name: "web", ClusterIP: webIP, Port: 80, NodePort: NodePort, InternalLocal: true, Backends: []Backend{local, remote}}
	a.WriteService(web)
	a.Start()
	env.DP.WaitProgrammed(t, a, web)
	env.DP.CheckKernel(t, []Service{web})

	rs := Only(t, "ClusterIP from the client", topo.Client, "tcp", web.Addr(), 4, local)
	ExpectSources(t, "ClusterIP from the client", topo, rs, Masqueraded)
	rs = Only(t, "ClusterIP from a pod", pod, "tcp", web.Addr(), 4, local)
	ExpectSources(t, "ClusterIP from a pod", topo, rs, From(PodAddr))
	Only(t, "ClusterIP from the node", env.Node, "tcp", web.Addr(), 2, local)
	env.Spread(t, "NodePort", topo.Client, "tcp", web.NodePortAddr(), 4, local, remote)
}

// SessionAffinityClientIP: with sessionAffinity ClientIP, every new
// connection of one client lands on the backend its first one did, on the
// ClusterIP (from the client and from a pod) and on the NodePort; a
// Service without affinity on the same backends answers from both.
func SessionAffinityClientIP(t *testing.T, env *Env) {
	topo := env.NewTopology(t, 2)
	pod := env.AddPod(t, topo)
	a := env.NewAgent(t)
	bes := topo.Backends
	sticky := Service{Name: "sticky", ClusterIP: webIP, Port: 80, NodePort: NodePort, AffinityClientIP: true, Backends: bes}
	plain := Service{Name: "plain", ClusterIP: npIP, Port: 80, Backends: bes}
	a.WriteService(sticky, plain)
	a.Start()
	env.DP.WaitProgrammed(t, a, sticky, plain)
	env.DP.CheckKernel(t, []Service{sticky, plain})

	expectSticky := func(what string, ns *netnstest.NS, addr string) {
		t.Helper()
		rs := RequestAll(t, ns, "tcp", addr, 8)
		if got := CountIDs(rs); len(got) != 1 {
			t.Errorf("%s: replies %v, want all from one backend (session affinity)", what, got)
		}
	}
	expectSticky("ClusterIP from the client", topo.Client, sticky.Addr())
	expectSticky("ClusterIP from a pod", pod, sticky.Addr())
	expectSticky("NodePort from the client", topo.Client, sticky.NodePortAddr())
	env.Spread(t, "without affinity", topo.Client, "tcp", plain.Addr(), 4, bes...)
}
