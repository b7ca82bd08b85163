package e2e

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard/switchyard/test/agentspec"
	"github.com/switchyard/switchyard/test/agentspec/nftdp"
	"github.com/switchyard/switchyard/test/apisource"
	"github.com/switchyard/switchyard/test/e2e/kubeproxy"
	"github.com/switchyard/switchyard/test/netnstest"
)

// The differential check against upstream kube-proxy: one API server, two
// node namespaces with identical neighbours (a client, a pod and three
// backends at the same addresses), upstream kube-proxy in nftables mode
// on one, switchyard (nftables) on the other, both named "node". For a
// corpus of Services, every frontend is probed from the client (and the
// pod where the policy looks at it), and what each proxy does is
// compared: which backends answer, whether the backend saw the client's
// address or the node's, or whether the connection is refused or
// dropped. A difference is a bug, or listed in knownDifferences (the
// README's compatibility table).

// diffProbes is how many connections each probe makes: enough that every
// backend of a random choice among three answers (the chance one of three
// stays silent in 24 tries is 3·(2/3)^24 ≈ 0.02%).
const diffProbes = 24

// knownDifferences are the outcomes that may differ, by probe name, with
// why (see README, "Compatibility with kube-proxy"). Empty: every probe
// must agree.
var knownDifferences = map[string]string{}

// diffCase is one Service of the corpus, as YAML, and its probes.
type diffCase struct {
	name   string
	yaml   string
	probes []diffProbe
	// sticky: session affinity; a probe's backends are compared by
	// count (each proxy picks its own first backend).
	sticky bool
}

type diffProbe struct {
	name  string
	from  string // "client" or "pod"
	proto string
	addr  string
}

func svc(s agentspec.Service) string { return s.YAML() }

// diffCorpus is the Services both proxies get. Backends are be0 (on this
// node), be1 and be2 (be1 on another node where a policy asks).
func diffCorpus(bes []agentspec.Backend) []diffCase {
	ip := netip.MustParseAddr
	local, remote := bes[0].OnNode("node"), bes[1].OnNode(agentspec.OtherNode)
	np := func(port uint16) string { return netip.AddrPortFrom(agentspec.NodeAddr, port).String() }
	at := func(a netip.Addr, port uint16) string { return netip.AddrPortFrom(a, port).String() }
	client := func(name, proto, addr string) diffProbe { return diffProbe{name, "client", proto, addr} }
	pod := func(name, proto, addr string) diffProbe { return diffProbe{name, "pod", proto, addr} }
	var cs []diffCase
	add := func(s agentspec.Service, sticky bool, probes ...diffProbe) {
		cs = append(cs, diffCase{name: s.Name, yaml: svc(s), probes: probes, sticky: sticky})
	}
	plain := agentspec.Service{Name: "plain", ClusterIP: ip("10.96.1.1"), Port: 80, Backends: bes}
	add(plain, false, client("plain ClusterIP", "tcp", plain.Addr()), pod("plain ClusterIP from a pod", "tcp", plain.Addr()))
	nodePort := agentspec.Service{Name: "nodeport", ClusterIP: ip("10.96.1.2"), Port: 80, NodePort: 30081, Backends: bes}
	add(nodePort, false, client("NodePort", "tcp", np(30081)), client("NodePort's ClusterIP", "tcp", nodePort.Addr()))
	lb := agentspec.Service{Name: "lb", ClusterIP: ip("10.96.1.3"), Port: 80, NodePort: 30082, LoadBalancerIP: ip("198.51.100.20"), Backends: bes[:2]}
	add(lb, false, client("LoadBalancer IP", "tcp", at(lb.LoadBalancerIP, 80)), client("LoadBalancer NodePort", "tcp", np(30082)))
	ext := agentspec.Service{Name: "ext", ClusterIP: ip("10.96.1.4"), Port: 80, ExternalIPs: []netip.Addr{ip("203.0.113.20")}, Backends: bes[:2]}
	add(ext, false, client("external IP", "tcp", at(ip("203.0.113.20"), 80)))
	etp := agentspec.Service{Name: "etp", ClusterIP: ip("10.96.1.5"), Port: 80, NodePort: 30083, LoadBalancerIP: ip("198.51.100.21"),
		ExternalLocal: true, HealthCheckNodePort: 32101, Backends: []agentspec.Backend{local, remote}}
	add(etp, false,
		client("eTP Local NodePort", "tcp", np(30083)), client("eTP Local LoadBalancer IP", "tcp", at(etp.LoadBalancerIP, 80)),
		client("eTP Local ClusterIP", "tcp", etp.Addr()), pod("eTP Local NodePort from a pod", "tcp", np(30083)),
		pod("eTP Local LoadBalancer IP from a pod", "tcp", at(etp.LoadBalancerIP, 80)))
	etpNone := agentspec.Service{Name: "etp-none", ClusterIP: ip("10.96.1.6"), Port: 80, NodePort: 30084, ExternalLocal: true,
		Backends: []agentspec.Backend{remote}}
	add(etpNone, false, client("eTP Local NodePort, no local endpoint", "tcp", np(30084)),
		pod("eTP Local NodePort, no local endpoint, from a pod", "tcp", np(30084)))
	itp := agentspec.Service{Name: "itp", ClusterIP: ip("10.96.1.7"), Port: 80, InternalLocal: true, Backends: []agentspec.Backend{local, remote}}
	add(itp, false, client("iTP Local ClusterIP", "tcp", itp.Addr()), pod("iTP Local ClusterIP from a pod", "tcp", itp.Addr()))
	aff := agentspec.Service{Name: "affinity", ClusterIP: ip("10.96.1.8"), Port: 80, AffinityClientIP: true, Backends: bes}
	add(aff, true, client("ClientIP affinity", "tcp", aff.Addr()))
	empty := agentspec.Service{Name: "empty", ClusterIP: ip("10.96.1.9"), Port: 80, NodePort: 30085}
	add(empty, false, client("no endpoints, ClusterIP", "tcp", empty.Addr()), client("no endpoints, NodePort", "tcp", np(30085)))
	udp := agentspec.Service{Name: "udp", ClusterIP: ip("10.96.1.10"), Port: 53, Protocol: "UDP", Backends: bes[:2]}
	add(udp, false, client("UDP ClusterIP", "udp", udp.Addr()))
	ranges := agentspec.Service{Name: "ranges", ClusterIP: ip("10.96.1.11"), Port: 80, LoadBalancerIP: ip("198.51.100.22"),
		LoadBalancerSourceRanges: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}, Backends: bes[:1]}
	add(ranges, false, client("LoadBalancer IP outside its source ranges", "tcp", at(ranges.LoadBalancerIP, 80)),
		client("ClusterIP of a source-ranged LoadBalancer", "tcp", ranges.Addr()))
	// Terminating endpoints: one ready and one terminating (serving), then
	// only terminating ones (kube-proxy falls back to serving terminating
	// endpoints when none is ready).
	term := func(name, clusterIP string, ready []bool) diffCase {
		var b strings.Builder
		fmt.Fprintf(&b, "apiVersion: v1\nkind: Service\nmetadata: {name: %s, namespace: %s}\nspec:\n  clusterIP: %s\n  ports: [{name: p, protocol: TCP, port: 80, targetPort: %d}]\n",
			name, agentspec.Namespace, clusterIP, agentspec.TargetPort)
		fmt.Fprintf(&b, "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: %s-1\n  namespace: %s\n  labels: {kubernetes.io/service-name: %s}\naddressType: IPv4\nports: [{name: p, protocol: TCP, port: %d}]\nendpoints:\n",
			name, agentspec.Namespace, name, agentspec.TargetPort)
		for i, r := range ready {
			fmt.Fprintf(&b, "- addresses: [%q]\n  conditions: {ready: %v, serving: true, terminating: %v}\n", bes[i].Addr, r, !r)
		}
		addr := netip.AddrPortFrom(ip(clusterIP), 80).String()
		return diffCase{name: name, yaml: b.String(), probes: []diffProbe{client(name+" ClusterIP", "tcp", addr)}}
	}
	cs = append(cs, term("terminating", "10.96.1.12", []bool{true, false}), term("all-terminating", "10.96.1.13", []bool{false, false}))
	// Named ports: the Service's ports find their endpoints by name in the
	// EndpointSlice (target ports named, as a Deployment's containerPort
	// names resolve); a port the slice does not list has no endpoints.
	var named strings.Builder
	fmt.Fprintf(&named, "apiVersion: v1\nkind: Service\nmetadata: {name: named, namespace: %s}\nspec:\n  clusterIP: 10.96.1.14\n"+
		"  ports:\n  - {name: web, protocol: TCP, port: 80, targetPort: http}\n  - {name: admin, protocol: TCP, port: 81, targetPort: admin}\n", agentspec.Namespace)
	fmt.Fprintf(&named, "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: named-1\n  namespace: %s\n  labels: {kubernetes.io/service-name: named}\n"+
		"addressType: IPv4\nports: [{name: web, protocol: TCP, port: %d}]\nendpoints:\n", agentspec.Namespace, agentspec.TargetPort)
	for _, be := range bes[:2] {
		fmt.Fprintf(&named, "- addresses: [%q]\n  conditions: {ready: true}\n", be.Addr)
	}
	cs = append(cs, diffCase{name: "named", yaml: named.String(), probes: []diffProbe{
		client("named port with endpoints", "tcp", "10.96.1.14:80"), client("named port the slice lacks", "tcp", "10.96.1.14:81")}})
	return cs
}

// diffNode is one node namespace with its neighbours.
type diffNode struct {
	env  *agentspec.Env
	topo *agentspec.Topology
	pod  *netnstest.NS
}

func newDiffNode(t *testing.T, prefix string, dp func(*agentspec.Env) agentspec.Dataplane) *diffNode {
	t.Helper()
	env := nftdp.NewEnv(t, prefix, agentBin, dp)
	env.NodeIPs = []netip.Addr{agentspec.NodeAddr}
	topo := env.NewTopology(t, 3)
	return &diffNode{env: env, topo: topo, pod: env.AddPod(t, topo)}
}

// outcome is what a probe saw, comparable across proxies.
func (n *diffNode) outcome(t *testing.T, p diffProbe, sticky bool) string {
	t.Helper()
	ns := n.topo.Client
	if p.from == "pod" {
		ns = n.pod
	}
	ids := map[string]bool{}
	sources := map[string]bool{}
	var fails []string
	for range diffProbes {
		reply, err := netnstest.Request(ns, p.proto, p.addr, "diff", 2*time.Second)
		if err != nil {
			if errors.Is(err, syscall.ECONNREFUSED) {
				fails = append(fails, "refused")
			} else {
				fails = append(fails, "no answer")
			}
			if len(ids) == 0 && len(fails) >= 2 {
				break // the same again: no need to wait out every try
			}
			continue
		}
		r := agentspec.ParseReply(t, reply)
		ids[r.ID] = true
		src := "node"
		switch r.Src {
		case agentspec.ClientAddr:
			src = "client"
		case agentspec.PodAddr:
			src = "pod"
		}
		sources[src] = true
	}
	if len(ids) == 0 {
		slices.Sort(fails)
		return strings.Join(slices.Compact(fails), ",")
	}
	got := keys(ids)
	if sticky {
		got = fmt.Sprintf("%d backend(s)", len(ids))
	}
	s := "backends " + got + ", source " + keys(sources)
	if len(fails) > 0 {
		s += ", some " + strings.Join(slices.Compact(fails), ",")
	}
	return s
}

func keys(m map[string]bool) string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return strings.Join(out, "+")
}

// TestE2EDifferentialKubeProxy compares switchyard with upstream
// kube-proxy (nftables mode) on the same API objects.
func TestE2EDifferentialKubeProxy(t *testing.T) {
	requireE2E(t)
	c := newCluster(t)
	// The Node carries the node's address: kube-proxy takes its NodePort
	// addresses from it.
	setNodeIP(t, c, agentspec.NodeAddr)

	kp := newDiffNode(t, "kp-diff", nftdp.NewMinimal)
	sy := &diffNode{env: c.env, topo: c.env.NewTopology(t, 3)}
	sy.env.NodeIPs = []netip.Addr{agentspec.NodeAddr}
	sy.pod = sy.env.AddPod(t, sy.topo)

	corpus := diffCorpus(sy.topo.Backends)
	src := apisource.New(c.admin)
	for _, dc := range corpus {
		src.Write(t, dc.name+".yaml", dc.yaml)
	}
	a := sy.env.NewAgent(t)
	a.Start()
	// Both proxies read the same objects and program them in one
	// transaction each: once the corpus's last Service answers through
	// one, all of it is there.
	// Upstream kube-proxy with the admin token: its own RBAC is not what
	// is tested.
	kubeproxy.Start(t, c.cp, kp.env.Node, kubeproxy.Options{Hostname: "node", Args: []string{"--cluster-cidr", agentspec.ClusterCIDR}}).
		WaitHealthy(t, agentspec.Deadline)
	last := corpus[len(corpus)-1].probes[0]
	for _, n := range []*diffNode{sy, kp} {
		a.Eventually("the last Service answers on "+n.env.Node.Name(), agentspec.Deadline, func() (bool, string) {
			o := n.outcome(t, last, false)
			return strings.HasPrefix(o, "backends"), o
		})
	}

	var table []string
	differ := 0
	for _, dc := range corpus {
		for _, p := range dc.probes {
			got, want := sy.outcome(t, p, dc.sticky), kp.outcome(t, p, dc.sticky)
			mark := "same"
			if got != want {
				if why, ok := knownDifferences[p.name]; ok {
					mark = "known: " + why
				} else {
					mark = "DIFFERENT"
					differ++
					t.Errorf("%s (%s from the %s): switchyard %q, kube-proxy %q", p.name, p.addr, p.from, got, want)
				}
			}
			table = append(table, fmt.Sprintf("| %s | %s | %s | %s | %s |", p.name, p.from, got, want, mark))
		}
	}
	t.Logf("%d probes, %d unexplained differences:\n| probe | from | switchyard | kube-proxy (nftables) | |\n|---|---|---|---|---|\n%s",
		len(table), differ, strings.Join(table, "\n"))
}
