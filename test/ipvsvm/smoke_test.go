package ipvsvm

import (
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/moby/ipvs"
	"golang.org/x/sys/unix"

	"github.com/switchyard/switchyard/test/netnstest"
	"github.com/switchyard/switchyard/test/vm/guest"
)

// TestVMSmokeIPVS proves the harness end to end: a round-robin IPVS service
// with two masquerading real servers answers real TCP from a client
// namespace and from the node itself.
func TestVMSmokeIPVS(t *testing.T) {
	guest.Required(t)
	topo := newTopology(t, 2)
	topo.startEcho(t, "tcp", 8080)
	vip := netip.MustParseAddr("10.96.0.10")
	addServiceIP(t, "sy-ipvs0", vip)

	h, err := ipvs.New("")
	if err != nil {
		t.Fatalf("ipvs handle: %v", err)
	}
	t.Cleanup(h.Close) // registered first, so it runs after DelService below
	svc := &ipvs.Service{
		Address: vip.AsSlice(), Protocol: unix.IPPROTO_TCP, Port: 80,
		SchedName: "rr", AddressFamily: unix.AF_INET, Netmask: 0xffffffff,
	}
	if err := h.NewService(svc); err != nil {
		t.Fatalf("new service: %v", err)
	}
	t.Cleanup(func() {
		if err := h.DelService(svc); err != nil {
			t.Errorf("delete service: %v", err)
		}
	})
	for _, be := range topo.Backends {
		if err := h.NewDestination(svc, &ipvs.Destination{
			Address: be.Addr.AsSlice(), Port: 8080, Weight: 1,
			ConnectionFlags: ipvs.ConnectionFlagMasq, AddressFamily: unix.AF_INET,
		}); err != nil {
			t.Fatalf("new destination %s: %v", be.Addr, err)
		}
	}

	got, err := h.GetService(svc)
	if err != nil {
		t.Fatalf("read service back: %v", err)
	}
	dests, err := h.GetDestinations(got)
	if err != nil {
		t.Fatalf("read destinations back: %v", err)
	}
	if got.SchedName != "rr" || len(dests) != 2 {
		t.Fatalf("read back scheduler %q with %d destinations, want rr with 2", got.SchedName, len(dests))
	}

	addr := net.JoinHostPort(vip.String(), "80")
	// Client namespace: the path through forwarding, source address kept.
	fromClient := requestIDs(t, topo.Client, "tcp", addr, 6, topo.ClientAddr)
	// The node itself: the local-output path.
	fromNode := requestIDs(t, nil, "tcp", addr, 6, netip.Addr{})
	for name, seen := range map[string]map[string]int{"client namespace": fromClient, "node": fromNode} {
		if seen["be0"] != 3 || seen["be1"] != 3 {
			t.Errorf("from %s: replies per backend %v, want 3 each (round robin)", name, seen)
		}
	}
}

// TestVMUserspaceTools checks that the host's iptables and ipset binaries
// copied into the VM work, on both iptables backends, inside a namespace.
func TestVMUserspaceTools(t *testing.T) {
	guest.Required(t)
	if _, err := exec.LookPath("iptables"); err != nil {
		t.Skip("iptables not in the VM (vmtest -no-host-bins)")
	}
	ns := netnstest.New(t, "tools")
	run := func(args ...string) string {
		t.Helper()
		var out []byte
		err := ns.Do(func() error {
			// A child forked from this locked thread inherits its namespace.
			var err error
			out, err = exec.Command(args[0], args[1:]...).CombinedOutput()
			return err
		})
		if err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	for _, ipt := range []string{"iptables", "iptables-legacy", "iptables-nft"} {
		run(ipt, "-t", "nat", "-N", "SY-TEST")
		run(ipt, "-t", "nat", "-A", "SY-TEST", "-p", "tcp", "-m", "comment", "--comment", "smoke", "-j", "MASQUERADE")
		if out := run(ipt+"-save", "-t", "nat"); !strings.Contains(out, "smoke") {
			t.Errorf("%s-save lacks the rule:\n%s", ipt, out)
		}
		run(ipt, "-t", "nat", "-L", "-n")
		run(ipt, "-t", "nat", "-F", "SY-TEST")
		run(ipt, "-t", "nat", "-X", "SY-TEST")
	}
	run("ipset", "create", "sy-test", "hash:ip,port")
	run("ipset", "add", "sy-test", "10.96.0.10,tcp:80")
	if out := run("ipset", "list", "sy-test"); !strings.Contains(out, "10.96.0.10,tcp:80") {
		t.Errorf("ipset list lacks the member:\n%s", out)
	}
	run("ipset", "destroy", "sy-test")
}
