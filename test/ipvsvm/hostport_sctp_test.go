package ipvsvm

import (
	"context"
	"net/netip"
	"testing"

	"github.com/vishvananda/netns"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/switchyard/switchyard/conntrack"
	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/hostport"
	"github.com/switchyard/switchyard/test/vm/guest"
)

// TestVMHostPortSCTP: an SCTP hostPort through the real hostport.Proxier
// in the VM, whose kernel has SCTP sockets and SCTP NAT (the development
// hosts' kernel has neither, so the hostport package's own tests check
// SCTP rules only). Associations from the client namespace to the node's
// address reach the Pod and keep the client's address; the Pod's IP
// changing moves the hostPort with it.
func TestVMHostPortSCTP(t *testing.T) {
	guest.Required(t)
	requireSCTP(t)
	topo := newTopology(t, 2)
	topo.startSCTPEcho(t, 8080)

	conn, err := hostport.NewConn(0)
	if err != nil {
		t.Fatal(err)
	}
	ct, err := conntrack.NewNetlink(netns.None())
	if err != nil {
		t.Fatal(err)
	}
	p, err := hostport.NewProxier(hostport.Config{Conn: conn, Conntrack: ct})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Cleanup(context.Background()); err != nil {
			t.Errorf("hostport Cleanup: %v", err)
		}
		ct.Close()
	})
	pod := func(ip netip.Addr) *v1.Pod {
		return &v1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "sig"},
			Spec: v1.PodSpec{NodeName: "vm-node", Containers: []v1.Container{{Name: "c", Ports: []v1.ContainerPort{
				{Protocol: v1.ProtocolSCTP, HostPort: 9000, ContainerPort: 8080},
			}}}},
			Status: v1.PodStatus{Phase: v1.PodRunning, PodIP: ip.String(), PodIPs: []v1.PodIP{{IP: ip.String()}}},
		}
	}
	st := dataplane.NewState()
	st.NodeName = "vm-node"
	sync := func() {
		t.Helper()
		if err := p.Sync(context.Background(), st, dataplane.Changes{Full: true}); err != nil {
			t.Fatalf("hostport Sync: %v", err)
		}
	}
	p.OnPodUpsert(pod(topo.Backends[0].Addr))
	p.SetPodsSynced()
	sync()

	addr := netip.AddrPortFrom(nodeAddr, 9000).String()
	if seen := sctpRequestIDs(t, topo.Client, addr, 4, topo.ClientAddr); seen["be0"] != 4 {
		t.Errorf("SCTP hostPort: replies %v, want all 4 from be0", seen)
	}
	p.OnPodUpsert(pod(topo.Backends[1].Addr))
	sync()
	if seen := sctpRequestIDs(t, topo.Client, addr, 4, topo.ClientAddr); seen["be1"] != 4 {
		t.Errorf("SCTP hostPort after the Pod moved: replies %v, want all 4 from be1", seen)
	}
}
