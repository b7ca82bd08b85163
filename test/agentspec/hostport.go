package agentspec

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/switchyard/switchyard/test/netnstest"
)

// HostPortNumber is the hostPort of the HostPort scenario's Pods: the
// NodePort of a Service too, so the scenario shows the hostPort winning.
const HostPortNumber = NodePort

// HostPod is a Pod of this node with a TCP and a UDP hostPort to
// TargetPort on a backend's address, as a manifest.
func HostPod(name, node string, be Backend, hostPort uint16, created time.Time) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %[1]s
  namespace: %[2]s
  creationTimestamp: %[3]q
spec:
  nodeName: %[4]s
  containers:
  - name: echo
    image: echo
    ports:
    - {containerPort: %[5]d, hostPort: %[6]d, protocol: TCP}
    - {containerPort: %[5]d, hostPort: %[6]d, protocol: UDP}
status:
  phase: Running
  podIP: %[7]s
  podIPs: [{ip: %[7]s}]
`, name, Namespace, created.UTC().Format(time.RFC3339), node, TargetPort, hostPort, be.Addr)
}

// waitAnswer waits (bounded) until a request from ns to addr is answered
// by backend id, and returns that reply.
func waitAnswer(t *testing.T, a *Agent, ns *netnstest.NS, proto, addr, id string) Reply {
	t.Helper()
	var r Reply
	a.Eventually(fmt.Sprintf("%s %s answered by %s", proto, addr, id), Deadline, func() (bool, string) {
		reply, err := netnstest.Request(ns, proto, addr, "hp", 2*time.Second)
		if err != nil {
			return false, err.Error()
		}
		r = ParseReply(t, reply)
		return r.ID == id, "answered by " + r.ID
	})
	return r
}

// HostPort: a Pod of this node with hostPort N (TCP and UDP) while a
// NodePort Service also has port N. The client reaches the Pod at the
// node's address, keeping its own address (the hostPort wins over the
// NodePort, as the portmap chain sits before the Service rules); so does
// the node itself. The Pod moves to another address and the hostPort
// follows it. A second Pod claiming the same port later loses (logged).
// Deleting the first Pod gives the port to the second; deleting both
// gives it back to the Service.
func HostPort(t *testing.T, env *Env) {
	topo := env.NewTopology(t, 3)
	a := env.NewAgent(t)
	svcBe := topo.Backends[2]
	np := Service{Name: "np", ClusterIP: ip("10.96.0.50"), Port: 80, NodePort: HostPortNumber, Backends: []Backend{svcBe}}
	a.WriteService(np)
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	a.Write("hp-0.yaml", HostPod("hp-0", env.NodeName, topo.Backends[0], HostPortNumber, t0))
	a.Start()
	env.DP.WaitProgrammed(t, a, np)
	addr := netip.AddrPortFrom(NodeAddr, HostPortNumber).String()

	for _, proto := range []string{"tcp", "udp"} {
		r := waitAnswer(t, a, topo.Client, proto, addr, "be0")
		if r.Src != ClientAddr {
			t.Errorf("hostPort %s from the client: the Pod saw %s, want the client's %s", proto, r.Src, ClientAddr)
		}
		Only(t, "hostPort "+proto+" from the client", topo.Client, proto, addr, 3, topo.Backends[0])
	}
	Only(t, "hostPort from the node", env.Node, "tcp", addr, 2, topo.Backends[0])
	a.WaitLog(`hostPort takes the port of a Service on this node.*pod="` + Namespace + `/hp-0"`)
	// The Service itself still works through its cluster IP.
	Only(t, "the Service's cluster IP", topo.Client, "tcp", np.Addr(), 2, svcBe)

	// The Pod is recreated elsewhere (a new address).
	a.Write("hp-0.yaml", HostPod("hp-0", env.NodeName, topo.Backends[1], HostPortNumber, t0))
	for _, proto := range []string{"tcp", "udp"} {
		waitAnswer(t, a, topo.Client, proto, addr, "be1")
		Only(t, "hostPort "+proto+" after the Pod moved", topo.Client, proto, addr, 3, topo.Backends[1])
	}

	// A later Pod wants the same port: it loses, traffic stays.
	a.Write("hp-1.yaml", HostPod("hp-1", env.NodeName, topo.Backends[0], HostPortNumber, t0.Add(time.Hour)))
	a.WaitLog(`hostPort conflict: the earlier Pod keeps the port.*pod="` + Namespace + `/hp-1".*winnerPod="` + Namespace + `/hp-0"`)
	Only(t, "hostPort with a losing second Pod", topo.Client, "tcp", addr, 3, topo.Backends[1])

	a.Remove("hp-0.yaml")
	waitAnswer(t, a, topo.Client, "tcp", addr, "be0")
	a.Remove("hp-1.yaml")
	waitAnswer(t, a, topo.Client, "tcp", addr, svcBe.ID)
	Only(t, "NodePort back after the Pods left", topo.Client, "tcp", addr, 3, svcBe)
}
