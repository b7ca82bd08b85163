// Package nftdp is what the users of the agent on --dataplane nftables
// share (test/nftnetns, which runs the agent spec, and
// test/rebalancebench): the node namespace and its agentspec.Env, the
// dataplane's name and flags (Base), and Minimal, an agentspec.Dataplane
// for runs that only need the agent up and its clean-up checked; and
// NewDataplane, the spec's full implementation, reading the ruleset back
// (dataplane.go, ruleset.go), used by test/nftnetns and the e2e suite.
package nftdp

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/nftables"

	"github.com/switchyard/switchyard/test/agentspec"
	"github.com/switchyard/switchyard/test/netnstest"
)

// NewEnv makes the node namespace (named after prefix; forwarding on, no
// ICMP redirects for hairpin traffic leaving the link it came in on) and
// the Env running the agent at agentPath there, with dp(env) as its
// Dataplane. The namespace, and with it everything the agent programmed
// in it, goes in t.Cleanup after the agent's own clean-up checks.
func NewEnv(t *testing.T, prefix, agentPath string, dp func(*agentspec.Env) agentspec.Dataplane) *agentspec.Env {
	t.Helper()
	node := netnstest.New(t, prefix)
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
	env := &agentspec.Env{AgentPath: agentPath, Node: node, NodeName: "node"}
	env.DP = dp(env)
	return env
}

// Base is the part of an nftables agentspec.Dataplane that reads nothing
// back: its name, the part the agent starts, its flags, no Feature.
type Base struct{}

func (Base) Name() string                    { return "nftables" }
func (Base) StartParts() []string            { return []string{"nftables"} }
func (Base) Args() []string                  { return []string{"--dataplane", "nftables"} }
func (Base) Supports(agentspec.Feature) bool { return false }

// Minimal is an agentspec.Dataplane for runs that drive the agent
// without the spec's scenarios (the benchmark): it tells when Services
// are programmed no way of its own (a caller asks the agent's API), and
// checks only that the agent's --cleanup left nothing. The methods the
// scenarios need fail the test.
type Minimal struct {
	Base
	env *agentspec.Env
}

var _ agentspec.Dataplane = (*Minimal)(nil)

// NewMinimal is Minimal for env (a dp argument of NewEnv).
func NewMinimal(env *agentspec.Env) agentspec.Dataplane { return &Minimal{env: env} }

func notUsed(t *testing.T, what string) {
	t.Helper()
	t.Fatalf("nftdp.Minimal: Dataplane.%s is not implemented (use test/nftnetns's dataplane)", what)
}

func (*Minimal) WaitProgrammed(t *testing.T, _ *agentspec.Agent, _ ...agentspec.Service) {
	notUsed(t, "WaitProgrammed (ask the agent's API)")
}
func (*Minimal) Absent(t *testing.T, _ agentspec.Service) (bool, string) {
	notUsed(t, "Absent")
	return false, ""
}
func (*Minimal) CheckKernel(t *testing.T, _ []agentspec.Service) { notUsed(t, "CheckKernel") }
func (*Minimal) Snapshot(t *testing.T) string                    { notUsed(t, "Snapshot"); return "" }
func (*Minimal) CheckAdopted(t *testing.T, _, _ string)          { notUsed(t, "CheckAdopted") }
func (*Minimal) DriftKinds() []string                            { return nil }
func (*Minimal) DeleteSomething(t *testing.T, _ string, _, _ agentspec.Service) {
	notUsed(t, "DeleteSomething")
}
func (*Minimal) AddForeign(t *testing.T, _ agentspec.Backend) agentspec.Foreign {
	notUsed(t, "AddForeign")
	return nil
}

// ExpectNothingLeft: no nftables table named switchyard in the node
// namespace, nothing in the state directory.
func (d *Minimal) ExpectNothingLeft(t *testing.T, a *agentspec.Agent, when string) {
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
