package agentspec

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/test/netnstest"
)

// Feature is behaviour only some dataplanes have.
type Feature string

const (
	// FeatureRoundRobin: new connections go to the endpoints in strict
	// turn (IPVS rr), so n requests to k endpoints give n/k each. Without
	// it the choice is random and the spec only asks that every endpoint
	// answers within a bounded number of requests.
	FeatureRoundRobin Feature = "round-robin"
	// FeatureIPVSScheduler: the switchyard.io/ipvs-scheduler annotation
	// picks a kernel scheduler per Service.
	FeatureIPVSScheduler Feature = "ipvs-scheduler"
	// FeatureGracefulDrain: a removed endpoint with open connections stays
	// in the kernel at weight 0 (and in the state file) until they close.
	// Elsewhere conntrack keeps open connections on a removed endpoint and
	// nothing of it stays in the ruleset.
	FeatureGracefulDrain Feature = "graceful-drain"
)

// Dataplane is what differs between kernel dataplanes. Each Env gets its
// own value, so implementations may keep per-scenario state (baselines,
// foreign objects). t is the scenario's test.
type Dataplane interface {
	// Name is the dataplane's name for messages ("ipvs", "nftables").
	Name() string
	// StartParts are the dataplanes that must be in the chain the agent
	// logs as dataplane="a+b+..." in "Starting switchyard" (other stages,
	// like conntrack clean-up, may be there too; the other kernel
	// dataplane must not).
	StartParts() []string
	// Args are extra agent flags (e.g. --dataplane nftables), used for
	// every start and for --cleanup.
	Args() []string
	// Supports tells whether the dataplane has a Feature.
	Supports(f Feature) bool

	// WaitProgrammed waits (bounded, through a.Eventually) until the
	// kernel serves every frontend of svcs with exactly their Backends
	// (and, with FeatureGracefulDrain, their Draining ones at weight 0),
	// and filters the load-balancer IP of each by exactly its
	// LoadBalancerSourceRanges (with the AllowFromNode exception for the
	// Env's NodeIPs), or not at all without. Frontends held by foreign
	// objects are not waited for.
	WaitProgrammed(t *testing.T, a *Agent, svcs ...Service)
	// Absent reports whether none of svc's frontends (its NodePort on any
	// node address included) is in the kernel, foreign objects aside, with
	// an explanation when one is.
	Absent(t *testing.T, svc Service) (bool, string)
	// CheckKernel checks the kernel objects svcs, and no other Service
	// (Env.Ambient aside), need (beyond what WaitProgrammed waits for),
	// with t.Errorf.
	CheckKernel(t *testing.T, svcs []Service)
	// Snapshot renders the node's whole kernel state the dataplane deals
	// in, without counters or kernel handles, deterministically: equal
	// snapshots mean nothing was changed.
	Snapshot(t *testing.T) string
	// CheckAdopted checks the log of an agent run that started on a
	// programmed node (after its first sync): it wrote nothing.
	CheckAdopted(t *testing.T, when, log string)

	// DriftKinds lists what DeleteSomething can delete.
	DriftKinds() []string
	// DeleteSomething deletes, behind the agent's back, kernel objects of
	// kind for web (a ClusterIP Service) and np (a NodePort Service), and
	// fails the test when there was nothing to delete.
	DeleteSomething(t *testing.T, kind string, web, np Service)

	// AddForeign creates objects another program on the node would own,
	// next to the agent's, using be as a backend where one is needed;
	// t.Cleanup removes them. Call it after NewAgent.
	AddForeign(t *testing.T, be Backend) Foreign
	// ExpectNothingLeft checks that no object of the agent is left on the
	// node (what --cleanup promises), with t.Errorf.
	ExpectNothingLeft(t *testing.T, a *Agent, when string)
}

// Foreign is a set of objects another program owns on the node.
type Foreign interface {
	// Snapshot renders them; it must not change while the agent runs,
	// syncs and cleans up.
	Snapshot(t *testing.T) string
	// HeldNodePort is a NodePort the foreign objects already use (a
	// Service asking for it must leave them alone), or 0.
	HeldNodePort() uint16
	// AfterFirstSync checks what the agent says about the foreign objects
	// once it synced with them present.
	AfterFirstSync(t *testing.T, a *Agent)
	// Interfere puts a foreign object where the agent's own must be (in
	// front of its hook, say) and checks that the agent restores its
	// object and keeps the foreign one; t.Cleanup or itself removes it.
	Interfere(t *testing.T, a *Agent)
}

// Env is one scenario's node: where the agent runs, which dataplane it
// programs. Make a new Env per scenario.
type Env struct {
	DP Dataplane
	// AgentPath is the switchyard binary.
	AgentPath string
	// Node is the node's network namespace; nil means the namespace this
	// process runs in (the VM's root namespace; never the host's).
	Node *netnstest.NS
	// NodeName is --hostname-override.
	NodeName string
	// NodeIPs, when set, are the node's addresses for the agent
	// (--node-ip); a scenario sets them before NewAgent. Without, the
	// agent in standalone mode knows none.
	NodeIPs []netip.Addr
	// Source, when set, gives each Agent where its objects live (a real
	// API server); nil means a manifests directory (standalone mode).
	Source func(t *testing.T) Source
	// Ambient are Services the node's source has besides the scenario's
	// (a real API server's own default/kubernetes): Dataplane.CheckKernel
	// counts them as wanted.
	Ambient []Service
}

// Require skips the test unless the dataplane has f.
func (e *Env) Require(t *testing.T, f Feature, why string) {
	t.Helper()
	if !e.DP.Supports(f) {
		t.Skipf("the %s dataplane has no %s (%s): scenario does not apply", e.DP.Name(), f, why)
	}
}

// Start starts cmd in the node's namespace: it is forked from an OS thread
// switched into Node, so the child inherits that namespace (no `ip netns
// exec`: the VM has no iproute2). The caller waits for it.
func (e *Env) Start(cmd *exec.Cmd) error {
	return e.Node.Do(cmd.Start)
}

// Command runs a userspace tool (iptables, ipset, ...) in the node's
// namespace, bounded in time, and returns its combined output.
func (e *Env) Command(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := e.Start(cmd)
	if err == nil {
		err = cmd.Wait()
	}
	if err != nil {
		return out.String(), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out.Bytes()))
	}
	return out.String(), nil
}

// MustCommand is Command failing the test on error.
func (e *Env) MustCommand(t *testing.T, args ...string) string {
	t.Helper()
	out, err := e.Command(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Addresses and names shared by every scenario.
const (
	ClusterCIDR = "10.244.0.0/16"
	Namespace   = "e2e"
	// TargetPort is where every backend's echo servers listen (TCP and UDP).
	TargetPort = 8080
	// Deadline bounds every wait for the agent to converge. With
	// --sync-period 2s drift is repaired within ~2 s plus one sync; the rest
	// is slack for a TCG VM.
	Deadline = 20 * time.Second
)

var (
	// NodeAddr is the node's address on the client's link: NodePorts are
	// reached there.
	NodeAddr   = netip.MustParseAddr("10.99.0.1")
	ClientAddr = netip.MustParseAddr("10.99.0.2")
	// PodAddr is a client inside --cluster-cidr that is no backend.
	PodAddr = netip.MustParseAddr("10.244.200.2")
)

// Backend is a "pod" serving echo replies with its ID.
type Backend struct {
	ID   string // "be0", "be1", ...: what its echo servers answer
	NS   *netnstest.NS
	Addr netip.Addr
	// Node is the nodeName of its endpoints in EndpointSlices; empty
	// leaves nodeName out (an endpoint of no node: never local). See
	// OnNode.
	Node string
}

// OnNode returns b with its endpoints on node.
func (b Backend) OnNode(node string) Backend {
	b.Node = node
	return b
}

// NodeSide is the node's address on the backend's link: the source a
// backend sees for masqueraded traffic (MASQUERADE picks the address of the
// outgoing interface).
func (b Backend) NodeSide() netip.Addr {
	a := b.Addr.As4()
	a[3] = 1
	return netip.AddrFrom4(a)
}

// Topology is the node's neighbours for one scenario.
type Topology struct {
	Client   *netnstest.NS
	Pod      *netnstest.NS // nil until AddPod
	Backends []Backend
}

// NewTopology builds the client and n backends (10.244.N.2 behind the
// node's 10.244.N.1 on sy-bN), starts echo servers on every backend (TCP
// and UDP, port TargetPort), and gives the node a default route towards
// the client. Everything is removed in t.Cleanup. Link names on the node
// are fixed, so build one topology per scenario.
func (e *Env) NewTopology(t *testing.T, n int) *Topology {
	t.Helper()
	topo := &Topology{Client: netnstest.New(t, "sy-client")}
	netnstest.Veth(t, e.Node, topo.Client, "sy-c0", "eth0",
		netip.PrefixFrom(NodeAddr, 24), netip.PrefixFrom(ClientAddr, 24))
	netnstest.AddRoute(t, topo.Client, netip.MustParsePrefix("0.0.0.0/0"), NodeAddr)
	// Like a real node's uplink: traffic to a Service address no rule
	// translated is forwarded and lost (the client does not forward), not
	// refused by routing; only the dataplane can make it fail fast.
	netnstest.AddRoute(t, e.Node, netip.MustParsePrefix("0.0.0.0/0"), ClientAddr)
	for i := range n {
		be := Backend{ID: fmt.Sprintf("be%d", i), NS: netnstest.New(t, fmt.Sprintf("sy-be%d", i))}
		be.Addr = netip.AddrFrom4([4]byte{10, 244, byte(i), 2})
		netnstest.Veth(t, e.Node, be.NS, fmt.Sprintf("sy-b%d", i), "eth0",
			netip.PrefixFrom(be.NodeSide(), 24), netip.PrefixFrom(be.Addr, 24))
		netnstest.AddRoute(t, be.NS, netip.MustParsePrefix("0.0.0.0/0"), be.NodeSide())
		for _, proto := range []string{"tcp", "udp"} {
			netnstest.StartEchoServer(t, be.NS, proto, netip.AddrPortFrom(be.Addr, TargetPort).String(), be.ID)
		}
		topo.Backends = append(topo.Backends, be)
	}
	return topo
}

// AddPod adds a client inside --cluster-cidr that is no backend: PodAddr
// behind the node's 10.244.200.1 on sy-p0.
func (e *Env) AddPod(t *testing.T, topo *Topology) *netnstest.NS {
	t.Helper()
	topo.Pod = netnstest.New(t, "sy-pod")
	gw := netip.MustParseAddr("10.244.200.1")
	netnstest.Veth(t, e.Node, topo.Pod, "sy-p0", "eth0", netip.PrefixFrom(gw, 24), netip.PrefixFrom(PodAddr, 24))
	netnstest.AddRoute(t, topo.Pod, netip.MustParsePrefix("0.0.0.0/0"), gw)
	return topo.Pod
}

// Backend returns the backend with an ID.
func (topo *Topology) Backend(id string) (Backend, bool) {
	for _, be := range topo.Backends {
		if be.ID == id {
			return be, true
		}
	}
	return Backend{}, false
}
