package rebalancebench

import (
	"testing"

	"github.com/switchyard/switchyard/test/agentspec"
	"github.com/switchyard/switchyard/test/agentspec/nftdp"
)

// newEnv makes the node namespace and the Env (nftdp.NewEnv) with the
// little of agentspec.Dataplane the benchmark needs (nftdp.Minimal): the
// agent on --dataplane nftables, programmed Services told by the agent's
// API (waitModel), and "nothing left" checked after its --cleanup. The
// namespace goes in t.Cleanup after the agent's clean-up.
func newEnv(t *testing.T) *agentspec.Env {
	t.Helper()
	return nftdp.NewEnv(t, "sy-rbnode", agentBin, nftdp.NewMinimal)
}
