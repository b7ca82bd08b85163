package iptables

import (
	"testing"

	"github.com/switchyard/switchyard/test/netnstest"
)

// The same checks as TestFakeConformance, against the kernel.
func TestKernelConformance(t *testing.T) {
	requireKernel(t)
	t.Run("ipset", func(t *testing.T) {
		ns := netnstest.New(t, "sy-ipt-conf")
		sets, _, _ := kernelClients(t, ns, backends(t)[0])
		ipsetConformance(t, sets)
	})
	for _, bin := range backends(t) {
		t.Run("tables/"+bin, func(t *testing.T) {
			ns := netnstest.New(t, "sy-ipt-conf")
			sets, tables, _ := kernelClients(t, ns, bin)
			tablesConformance(t, tables, sets)
		})
	}
}
