package iptables

import (
	"os"
	"os/exec"
	"testing"

	"github.com/switchyard/switchyard/test/netnstest"
)

// Real-kernel tests program network namespaces they create, never the root
// namespace (a wrong rule there could cut the machine off). They need root
// and the iptables binaries; CI installs them with scripts/ensure-deps.sh.

// requireKernel skips unless real-kernel tests can run.
func requireKernel(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("real-kernel test skipped in -short mode")
	}
	if os.Geteuid() != 0 {
		t.Skip("real-kernel test needs root (network namespaces, iptables, ipset); run as root or in CI")
	}
}

// backends returns the iptables binaries to test with: the default one and
// the other backend, each only if installed.
func backends(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, bin := range []string{"iptables", "iptables-legacy"} {
		if _, err := exec.LookPath(bin); err == nil {
			out = append(out, bin)
		}
	}
	if len(out) == 0 {
		t.Skip("no iptables binary; run scripts/ensure-deps.sh")
	}
	return out
}

// kernelClients returns real IPSet, Tables and Sysctl bound to ns.
func kernelClients(t *testing.T, ns *netnstest.NS, binary string) (*NetlinkIPSet, *GoIPTables, *ProcSysctl) {
	t.Helper()
	sets, err := NewNetlinkIPSetAt(ns.NsHandle())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sets.Close)
	tables, err := NewTables(WithBinary(binary), WithNetNS(ns.NsHandle()))
	if err != nil {
		t.Fatal(err)
	}
	return sets, tables, NewProcSysctlAt(ns.NsHandle())
}

// countingIPSet and countingTables record the writes passing through.
type countingIPSet struct {
	IPSet
	writes []string
}

func (c *countingIPSet) Create(s SetSpec) error {
	c.writes = append(c.writes, "create "+s.Name)
	return c.IPSet.Create(s)
}
func (c *countingIPSet) Add(s string, m Member) error {
	c.writes = append(c.writes, "add "+s+" "+m.String())
	return c.IPSet.Add(s, m)
}
func (c *countingIPSet) Del(s string, m Member) error {
	c.writes = append(c.writes, "del "+s+" "+m.String())
	return c.IPSet.Del(s, m)
}
func (c *countingIPSet) Swap(a, b string) error {
	c.writes = append(c.writes, "swap "+a+" "+b)
	return c.IPSet.Swap(a, b)
}
func (c *countingIPSet) Destroy(s string) error {
	c.writes = append(c.writes, "destroy "+s)
	return c.IPSet.Destroy(s)
}

type countingTables struct {
	Tables
	writes []string
}

func (c *countingTables) NewChain(t, ch string) error {
	c.writes = append(c.writes, "new-chain "+ch)
	return c.Tables.NewChain(t, ch)
}
func (c *countingTables) ClearChain(t, ch string) error {
	c.writes = append(c.writes, "clear-chain "+ch)
	return c.Tables.ClearChain(t, ch)
}
func (c *countingTables) DeleteChain(t, ch string) error {
	c.writes = append(c.writes, "delete-chain "+ch)
	return c.Tables.DeleteChain(t, ch)
}
func (c *countingTables) Append(t, ch string, r Rule) error {
	c.writes = append(c.writes, "append "+r.Line(ch))
	return c.Tables.Append(t, ch, r)
}
func (c *countingTables) Insert(t, ch string, pos int, r Rule) error {
	c.writes = append(c.writes, "insert "+r.Line(ch))
	return c.Tables.Insert(t, ch, pos, r)
}
func (c *countingTables) Replace(t, ch string, pos int, r Rule) error {
	c.writes = append(c.writes, "replace "+r.Line(ch))
	return c.Tables.Replace(t, ch, pos, r)
}
func (c *countingTables) Delete(t, ch string, r Rule) error {
	c.writes = append(c.writes, "delete "+r.Line(ch))
	return c.Tables.Delete(t, ch, r)
}
func (c *countingTables) DeleteAt(t, ch string, pos int) error {
	c.writes = append(c.writes, "delete-at "+ch)
	return c.Tables.DeleteAt(t, ch, pos)
}
