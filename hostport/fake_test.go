package hostport

import (
	"context"
	"errors"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/switchyard/switchyard/conntrack"
	"github.com/switchyard/switchyard/test/netnstest"
)

// TestFakeConnMatchesKernel runs the same writes through FakeConn and a
// real nftables connection in a network namespace, each on a table
// programmed by a Proxier, and compares the errors and the tables after.
func TestFakeConnMatchesKernel(t *testing.T) {
	requireKernel(t)
	table := ipv4.tableRef()
	wildcard := &nftables.Set{Table: table, Name: mapWildcard}
	key := append(proto4(tcp), port4(8080)...)
	otherKey := append(proto4(tcp), port4(9090)...)
	val := []byte{10, 244, 1, 2, 0, 80, 0, 0}
	chain := &nftables.Chain{Table: table, Name: chainHostPorts}
	for _, tc := range []struct {
		name   string
		writes func(c Conn)
		errno  unix.Errno // 0: success
	}{
		{name: "element added again with the same value", writes: func(c Conn) {
			_ = c.SetAddElements(wildcard, []nftables.SetElement{{Key: key, Val: val}})
		}},
		{name: "element added again with another value", errno: unix.EEXIST, writes: func(c Conn) {
			_ = c.SetAddElements(wildcard, []nftables.SetElement{{Key: key, Val: []byte{10, 244, 1, 3, 0, 80, 0, 0}}})
		}},
		{name: "element deleted and added with another value", writes: func(c Conn) {
			_ = c.SetDeleteElements(wildcard, []nftables.SetElement{{Key: key}})
			_ = c.SetAddElements(wildcard, []nftables.SetElement{{Key: key, Val: []byte{10, 244, 1, 3, 0, 80, 0, 0}}})
		}},
		{name: "missing element deleted", errno: unix.ENOENT, writes: func(c Conn) {
			_ = c.SetDeleteElements(wildcard, []nftables.SetElement{{Key: otherKey}})
		}},
		{name: "key of the wrong length", errno: unix.EINVAL, writes: func(c Conn) {
			_ = c.SetAddElements(wildcard, []nftables.SetElement{{Key: port4(1), Val: val}})
		}},
		{name: "missing chain flushed", errno: unix.ENOENT, writes: func(c Conn) {
			c.FlushChain(&nftables.Chain{Table: table, Name: "nope"})
		}},
		{name: "rule looking up a missing set", errno: unix.ENOENT, writes: func(c Conn) {
			c.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: []expr.Any{
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg32_0},
				&expr.Lookup{SourceRegister: reg32_0, SetName: "nope"},
			}})
		}},
		{name: "rule jumping to a missing chain", errno: unix.ENOENT, writes: func(c Conn) {
			c.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: "nope"}}})
		}},
		{name: "all or nothing: a failing write undoes the ones before", errno: unix.ENOENT, writes: func(c Conn) {
			c.FlushChain(chain)
			c.AddTable(&nftables.Table{Name: "other", Family: nftables.TableFamilyIPv4})
			_ = c.SetDeleteElements(wildcard, []nftables.SetElement{{Key: otherKey}})
		}},
		{name: "table deleted and created again in one transaction", writes: func(c Conn) {
			c.DelTable(table)
			c.AddTable(table)
		}},
		{name: "missing table deleted", errno: unix.ENOENT, writes: func(c Conn) {
			c.DelTable(&nftables.Table{Name: "nope", Family: nftables.TableFamilyIPv4})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := netnstest.New(t, "sy-hp-fake")
			real, err := NewConn(int(ns.NsHandle()))
			if err != nil {
				t.Fatal(err)
			}
			var dumps [2]string
			for i, c := range []Conn{NewFakeConn(), real} {
				p, err := NewProxier(Config{Conn: c, Conntrack: conntrack.NewFake()})
				if err != nil {
					t.Fatal(err)
				}
				p.SetPodsSynced()
				p.OnPodUpsert(newPod("web", []string{"10.244.1.2"}, port("c", "", "", 8080, 80)))
				if err := p.Sync(context.Background(), newFakeEnv(t, nil, nil).st, full); err != nil {
					t.Fatal(err)
				}
				tc.writes(c)
				err = c.Flush()
				switch {
				case tc.errno == 0 && err != nil:
					t.Errorf("%T: %v, want success", c, err)
				case tc.errno != 0 && !errors.Is(err, tc.errno):
					t.Errorf("%T: %v, want %v", c, err, tc.errno)
				}
				if dumps[i], err = DumpTables(c); err != nil {
					t.Fatal(err)
				}
				if others, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4); err != nil || len(others) > 1 {
					t.Errorf("%T: tables %v, %v", c, others, err)
				}
			}
			if dumps[0] != dumps[1] {
				t.Errorf("fake:\n%s\nkernel:\n%s", dumps[0], dumps[1])
			}
		})
	}
}
