package rebalancebench

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/nftables"

	"github.com/switchyard/switchyard/test/agentspec"
	"github.com/switchyard/switchyard/test/netnstest"
)

// benchDataplane is the little of agentspec.Dataplane the benchmark
// needs: the agent on --dataplane nftables in a node namespace made for
// the run, programmed Services told by the agent's API (waitModel), and
// "nothing left" checked after its --cleanup. The scenarios'
// full implementation, reading the ruleset back, is test/nftnetns's.
type benchDataplane struct {
	env *agentspec.Env
}

var _ agentspec.Dataplane = (*benchDataplane)(nil)

// newEnv makes the node namespace (forwarding on, no ICMP redirects) and
// the Env; the namespace goes in t.Cleanup after the agent's clean-up.
func newEnv(t *testing.T) *agentspec.Env {
	t.Helper()
	node := netnstest.New(t, "sy-rbnode")
	for name, value := range map[string]string{
		"net/ipv4/ip_forward":                    "1",
		"net/ipv4/conf/all/send_redirects":       "0",
		"net/ipv4/conf/default/send_redirects":   "0",
		"net/ipv4/conf/all/accept_redirects":     "0",
		"net/ipv4/conf/default/accept_redirects": "0",
	} {
		if err := node.Do(func() error {
			// /proc/sys/net shows the namespace of the thread that opens it.
			return os.WriteFile(filepath.Join("/proc/sys", name), []byte(value+"\n"), 0o644)
		}); err != nil {
			t.Fatalf("sysctl %s=%s in %s: %v", name, value, node.Name(), err)
		}
	}
	env := &agentspec.Env{AgentPath: agentBin, Node: node, NodeName: "node"}
	env.DP = &benchDataplane{env: env}
	return env
}

func (*benchDataplane) Name() string                    { return "nftables" }
func (*benchDataplane) StartParts() []string            { return []string{"nftables"} }
func (*benchDataplane) Args() []string                  { return []string{"--dataplane", "nftables"} }
func (*benchDataplane) Supports(agentspec.Feature) bool { return false }

func notUsed(t *testing.T, what string) {
	t.Helper()
	t.Fatalf("rebalancebench: Dataplane.%s is not used by the benchmark", what)
}

func (*benchDataplane) WaitProgrammed(t *testing.T, _ *agentspec.Agent, _ ...agentspec.Service) {
	notUsed(t, "WaitProgrammed (see waitModel)")
}
func (*benchDataplane) Absent(t *testing.T, _ agentspec.Service) (bool, string) {
	notUsed(t, "Absent")
	return false, ""
}
func (*benchDataplane) CheckKernel(t *testing.T, _ []agentspec.Service) { notUsed(t, "CheckKernel") }
func (*benchDataplane) Snapshot(t *testing.T) string                    { notUsed(t, "Snapshot"); return "" }
func (*benchDataplane) CheckAdopted(t *testing.T, _, _ string)          { notUsed(t, "CheckAdopted") }
func (*benchDataplane) DriftKinds() []string                            { return nil }
func (*benchDataplane) DeleteSomething(t *testing.T, _ string, _, _ agentspec.Service) {
	notUsed(t, "DeleteSomething")
}
func (*benchDataplane) AddForeign(t *testing.T, _ agentspec.Backend) agentspec.Foreign {
	notUsed(t, "AddForeign")
	return nil
}

// ExpectNothingLeft: no nftables table named switchyard in the node
// namespace, nothing in the state directory.
func (d *benchDataplane) ExpectNothingLeft(t *testing.T, a *agentspec.Agent, when string) {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(int(d.env.Node.NsHandle())))
	if err != nil {
		t.Errorf("%s: nftables in %s: %v", when, d.env.Node.Name(), err)
		return
	}
	defer c.CloseLasting()
	tables, err := c.ListTables()
	if err != nil {
		t.Errorf("%s: list tables: %v", when, err)
	}
	for _, tb := range tables {
		if tb.Name == "switchyard" {
			t.Errorf("%s: table %s left", when, tb.Name)
		}
	}
	if files, err := os.ReadDir(a.StateDir); err != nil || len(files) > 0 {
		t.Errorf("%s: state directory %s: %d files, %v", when, a.StateDir, len(files), err)
	}
}
