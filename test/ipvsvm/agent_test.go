package ipvsvm

import (
	"testing"

	"github.com/switchyard/switchyard/test/agentspec"
	"github.com/switchyard/switchyard/test/vm/guest"
)

// TestVMAgent runs the agent's behavioural spec (test/agentspec) against
// the IPVS dataplane: /bin/switchyard (vm.AgentPath, put into the VM by
// `vmtest -agent`) runs as a child process in standalone mode, programs
// the VM's root namespace (the node) with IPVS, ipsets and iptables, and
// every scenario checks real traffic with the echo servers' replies
// (backend ID and the source address the backend saw). The IPVS-specific
// checks (virtual and real servers, weights, schedulers, the dummy link,
// ipsets, iptables rules, the state file) are the hooks in
// agent_helpers_test.go.
//
// Run one scenario with `make test-vm RUN=TestVMAgent/Restart`.
func TestVMAgent(t *testing.T) {
	guest.Required(t)
	for _, s := range agentspec.Scenarios() {
		t.Run(s.Name, func(t *testing.T) { s.Run(t, newIPVSEnv(t)) })
	}
}
