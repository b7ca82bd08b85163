// Package ipvsvm holds tests that need a kernel with IPVS and dummy links.
// On the host they skip; `go run ./test/vm/cmd/vmtest -pkg ./test/ipvsvm`
// (make test-vm) runs them as PID 1 of a qemu VM.
//
// To add a test: start it with guest.Required(t), build the network with
// newTopology (topology_test.go), and clean up through t.Cleanup. Tests share
// the VM's root namespace (IPVS table, link names), so do not use
// t.Parallel.
package ipvsvm

import (
	"os"
	"testing"

	"github.com/switchyard/switchyard/test/vm/guest"
)

func TestMain(m *testing.M) { os.Exit(guest.Main(m)) }
