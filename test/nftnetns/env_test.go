package nftnetns

import (
	"testing"

	"github.com/switchyard/switchyard/test/agentspec"
	"github.com/switchyard/switchyard/test/agentspec/nftdp"
)

// newNFTEnv makes the node namespace and the Env for one scenario, with
// the spec's nftables Dataplane (nftdp.NewDataplane). The namespace, and
// with it everything the agent programmed in it, goes in t.Cleanup after
// the agent's own cleanup checks.
func newNFTEnv(t *testing.T) *agentspec.Env {
	t.Helper()
	return nftdp.NewEnv(t, "sy-node", agentBin, nftdp.NewDataplane)
}
