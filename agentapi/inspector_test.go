package agentapi

import (
	"context"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/ipvs"
	"github.com/switchyard/switchyard/nftables"
)

// fakeIPVS is an ipvs.Proxier on the package's fakes, synced with
// testState.
func fakeIPVS(t *testing.T) (*ipvs.Proxier, *ipvs.FakeHandle, *dataplane.State) {
	t.Helper()
	h := ipvs.NewFakeHandle()
	l := ipvs.NewFakeLinks("")
	l.SetHostAddresses("eth0", "192.168.1.10")
	p, err := ipvs.NewProxier(ipvs.Config{StateDir: t.TempDir()}, h, l, ipvs.NewFakeIPVSSysctl())
	if err != nil {
		t.Fatal(err)
	}
	st := testState()
	if err := p.Sync(context.Background(), st, dataplane.Changes{Full: true}); err != nil {
		t.Fatal(err)
	}
	return p, h, st
}

func TestIPVSInspector(t *testing.T) {
	p, h, st := fakeIPVS(t)
	var dp dataplane.Dataplane = dataplane.Chain{dataplane.Chain{p}}
	insp := FindInspector(dp)
	if insp == nil || insp.Kind() != KindIPVS {
		t.Fatalf("FindInspector: %v", insp)
	}
	web := ipvs.Key{IP: netip.MustParseAddr("10.96.0.10"), Protocol: dataplane.TCP, Port: 80}
	np := ipvs.Key{IP: netip.MustParseAddr("192.168.1.10"), Protocol: dataplane.TCP, Port: 30080}
	if err := h.SetConnections(web, ap("10.244.1.2:8080"), 2, 1); err != nil {
		t.Fatal(err)
	}
	if err := h.SetConnections(np, ap("10.244.1.2:8080"), 1, 0); err != nil {
		t.Fatal(err)
	}
	kb, err := insp.Backends(st, []dataplane.ServicePortName{webHTTP})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, b := range kb[webHTTP] {
		got = append(got, b.Addr.String()+" w"+itoa(b.Weight)+" "+itoa(b.Active)+"/"+itoa(b.Inactive))
	}
	// Counts summed over the ClusterIP and NodePort virtual servers.
	if want := "10.244.1.2:8080 w1 3/1, 10.244.1.9:8080 w0 0/0, 10.244.2.3:8080 w1 0/0"; strings.Join(got, ", ") != want {
		t.Errorf("backends %s, want %s", strings.Join(got, ", "), want)
	}
	sched := insp.Scheduler(st.Services[webHTTP])
	if sched != "rr" {
		t.Errorf("scheduler %q", sched)
	}
	route := insp.Route(st, webHTTP, ap("10.96.0.10:80"), false)
	if want := "ipvs virtual server 10.96.0.10:80/TCP scheduler rr"; len(route) != 4 || route[0] != want ||
		route[1] != "  -> 10.244.1.2:8080 masq weight 1 active 2 inactive 1" {
		t.Errorf("route %q", route)
	}
	if route := insp.Route(st, webHTTP, ap("10.96.0.77:80"), false); len(route) != 1 || !strings.HasSuffix(route[0], "not in the kernel") {
		t.Errorf("route to a missing virtual server: %q", route)
	}
	tbl, err := insp.Table(st)
	if err != nil {
		t.Fatal(err)
	}
	it := tbl.(*IPVSTable)
	if it.Source != SourceAgent || !it.DriftChecked || !it.Stats || len(it.VirtualServers) != 6 {
		t.Errorf("table: %+v", it)
	}
	for _, vs := range it.VirtualServers {
		if len(vs.Drift) != 0 || !vs.Owned || vs.Service == "" {
			t.Errorf("virtual server right after a sync: %+v", vs)
		}
	}
}

func TestFindInspectorNone(t *testing.T) {
	p, err := nftables.NewProxier(nftables.Config{}, nopConn{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if i := FindInspector(dataplane.Chain{p}); i == nil || i.Kind() != KindNFTables || i.Scheduler(nil) != "random" {
		t.Errorf("FindInspector(nftables): %v", i)
	}
	if i := FindInspector(dataplane.Chain{}); i != nil {
		t.Errorf("FindInspector(empty chain): %v", i)
	}
}

type nopConn struct{ nftables.Conn }

func itoa(i int) string { return strconv.Itoa(i) }
