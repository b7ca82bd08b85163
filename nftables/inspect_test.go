package nftables

import (
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/switchyard/switchyard/dataplane"
)

func inspectState() *dataplane.State {
	empty := svc{ns: "default", name: "empty", port: "dns", proto: dataplane.UDP, svcPort: 53, clusterIPs: []string{"10.96.0.53"}}
	return newState(withNodePort(web(), 30080), empty)
}

// TestInspect: right after a sync the inspection shows no drift (what a
// full sync would also find); edits behind the Proxier's back show up on
// the chains and sets they touch; a rule with a counter shows its counter.
func TestInspect(t *testing.T) {
	requireKernel(t)
	k := newKernelNS(t, "sy-nft-insp")
	p := k.proxier(t, Config{ClusterCIDRs: clusterCIDR})
	st := inspectState()
	mustSync(t, p, st, full)

	in, err := p.Inspect(st)
	if err != nil {
		t.Fatal(err)
	}
	if !in.DriftChecked || in.Counters {
		t.Errorf("DriftChecked=%v Counters=%v, want true, false", in.DriftChecked, in.Counters)
	}
	golden(t, "inspect_synced", in.Dump())
	if d := in.Dump(); strings.Contains(d, "drift") {
		t.Errorf("drift right after a sync:\n%s", d)
	}

	// Agent down: the same chains, Services read from chain names.
	down, err := InspectTables(k.conn)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := down.Dump(), in.Dump(); got != want {
		t.Errorf("agent-down inspection differs from the synced one:\n--- got\n%s--- want\n%s", got, want)
	}

	// Behind the Proxier's back: a counter rule appended to web's chain,
	// web's NodePort element deleted, a stale chain.
	webChain, _, _, _ := ServicePortChains(web().portName())
	tbl := ipv4.tableRef()
	k.conn.AddRule(&nftables.Rule{Table: tbl, Chain: &nftables.Chain{Table: tbl, Name: webChain}, Exprs: []expr.Any{&expr.Counter{}}})
	k.conn.AddChain(&nftables.Chain{Table: tbl, Name: "svc-AAAAAAAA-default/gone/tcp"})
	if err := k.conn.Flush(); err != nil {
		t.Fatal(err)
	}
	mustDelElem(t, k.conn, mapServiceNodePorts, frontend{proto: protoTCP, port: 30080}.key())
	if err := k.conn.Flush(); err != nil {
		t.Fatal(err)
	}
	in, err = p.Inspect(st)
	if err != nil {
		t.Fatal(err)
	}
	if !in.Counters {
		t.Error("Counters not reported")
	}
	golden(t, "inspect_drift", in.Dump())

	// The full sync repairs exactly what Inspect reported.
	mustSync(t, p, st, full)
	if in, err = p.Inspect(st); err != nil {
		t.Fatal(err)
	}
	if d := in.Dump(); strings.Contains(d, "drift") {
		t.Errorf("drift after the repairing sync:\n%s", d)
	}
}

// TestInspectMissingTable: the desired table is listed, all missing.
func TestInspectMissingTable(t *testing.T) {
	requireKernel(t)
	k := newKernelNS(t, "sy-nft-insp0")
	p := k.proxier(t, Config{})
	st := inspectState()
	mustSync(t, p, st, full)
	k.conn.DelTable(ipv4.tableRef())
	if err := k.conn.Flush(); err != nil {
		t.Fatal(err)
	}
	in, err := p.Inspect(st)
	if err != nil {
		t.Fatal(err)
	}
	if len(in.Tables) == 0 || in.Tables[0].Exists || in.Tables[0].Drift[0] != "table missing" {
		t.Fatalf("missing ip table not reported:\n%s", in.Dump())
	}
	for _, c := range in.Tables[0].Chains {
		if !c.Missing {
			t.Errorf("chain %s not missing", c.Name)
		}
	}
	down, err := InspectTables(k.conn)
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range down.Tables {
		if tb.Family == "ip" {
			t.Errorf("agent-down inspection lists the deleted ip table")
		}
	}
}

func TestRoute(t *testing.T) {
	p, err := NewProxier(Config{ClusterCIDRs: clusterCIDR}, nopConn{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	st := inspectState()
	got := p.Route(st, web().portName(), addrPort("10.96.0.10:80"), false)
	golden(t, "route_clusterip", strings.Join(got, "\n")+"\n")
	got = p.Route(st, web().portName(), addrPort("192.168.1.1:30080"), true)
	golden(t, "route_nodeport", strings.Join(got, "\n")+"\n")
	empty := dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: "default", Name: "empty"}, Port: "dns", Protocol: dataplane.UDP}
	got = p.Route(st, empty, addrPort("10.96.0.53:53"), false)
	if want := "ip switchyard no-endpoint-services 10.96.0.53 . udp . 53"; strings.Join(got, "\n") != want {
		t.Errorf("route of a Service without endpoints: %q, want %q", got, want)
	}
}

// nopConn is a Conn for tests that never reach the kernel.
type nopConn struct{ Conn }
