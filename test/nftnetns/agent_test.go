package nftnetns

import (
	"testing"

	"github.com/switchyard/switchyard/test/agentspec"
)

// TestNFTAgent runs the agent's behavioural spec (test/agentspec) against
// the nftables dataplane: the agent built by TestMain runs with
// --dataplane nftables in a node namespace created per scenario, and
// every scenario checks real traffic between namespaces. The
// nftables-specific checks (the table read back from the kernel, what to
// delete behind the agent's back, foreign tables) are in test/agentspec/nftdp.
func TestNFTAgent(t *testing.T) {
	requireAgent(t)
	probeNFTables(t)
	for _, s := range agentspec.Scenarios() {
		t.Run(s.Name, func(t *testing.T) { s.Run(t, newNFTEnv(t)) })
	}
}
