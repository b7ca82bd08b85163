package ipvs

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/switchyard/switchyard/dataplane"
)

// inspectEnv is webState synced, then changed the ways yardctl ipvs must
// show: a foreign virtual server, a draining real server, a weight changed
// behind switchyard's back, a deleted virtual server, a stale owned one and
// traffic counters.
func inspectEnv(t *testing.T) (*env, *Proxier, *dataplane.State) {
	t.Helper()
	e := newEnv(t)
	p := e.proxier(Config{})
	st := webState()
	e.sync(p, st, full)

	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	// A draining real server: np's endpoint replaced while it has
	// connections.
	npVS := key("10.96.0.20:80/TCP")
	must(e.h.SetConnections(npVS, addrPort("10.244.1.6:8080"), 2, 1))
	np := st.Services[spn("default/np", "", dataplane.TCP)]
	put(st, np, ready("10.244.1.8:8080"))
	e.sync(p, st, changed(np.Name))

	foreign := VirtualServer{Key: key("192.168.1.10:443/TCP"), Scheduler: "wlc"}
	must(e.h.AddVirtualServer(foreign))
	must(e.h.AddRealServer(foreign.Key, RealServer{Addr: addrPort("192.168.1.99:443"), Weight: 3}))
	webVS := key("10.96.0.10:80/TCP")
	must(e.h.UpdateRealServer(webVS, RealServer{Addr: addrPort("10.244.2.7:8080"), Weight: 5}))
	must(e.h.SetStats(webVS, netip.AddrPort{}, Stats{Connections: 7, PacketsIn: 70, PacketsOut: 60, BytesIn: 7000, BytesOut: 9000}))
	must(e.h.SetStats(webVS, addrPort("10.244.1.5:8080"), Stats{Connections: 4, PacketsIn: 40}))
	must(e.h.DeleteVirtualServer(key("192.168.1.11:30080/TCP")))
	must(e.l.AddAddress(addr("10.96.0.99")))
	must(e.h.AddVirtualServer(VirtualServer{Key: key("10.96.0.99:53/UDP"), Scheduler: "rr"}))
	return e, p, st
}

func TestInspectAgainstDesired(t *testing.T) {
	e, p, st := inspectEnv(t)
	e.resetCalls()
	in, err := p.Inspect(st)
	if err != nil {
		t.Fatal(err)
	}
	if m := append(e.h.Mutations(), e.l.Mutations()...); len(m) > 0 {
		t.Errorf("Inspect wrote to the kernel: %v", m)
	}
	if !in.DriftChecked || !in.Stats {
		t.Errorf("DriftChecked=%v Stats=%v, want both", in.DriftChecked, in.Stats)
	}
	expectDump(t, "inspection", in.Dump(), `
		vs 10.96.0.10:80/TCP rr owned svc=default/web:tcp conns=7 pktsIn=70 pktsOut=60 bytesIn=7000 bytesOut=9000
		  rs 10.244.1.5:8080 masq weight=1 active=0 inactive=0 want=1 conns=4 pktsIn=40 pktsOut=0 bytesIn=0 bytesOut=0
		  rs 10.244.2.7:8080 masq weight=5 active=0 inactive=0 want=1 conns=0 pktsIn=0 pktsOut=0 bytesIn=0 bytesOut=0
		  drift: real server 10.244.2.7:8080 weight 5, want 1
		vs 10.96.0.20:80/TCP rr owned svc=default/np:tcp conns=0 pktsIn=0 pktsOut=0 bytesIn=0 bytesOut=0
		  rs 10.244.1.6:8080 masq weight=0 active=2 inactive=1 unwanted draining-since=2025-01-01T00:00:00Z conns=0 pktsIn=0 pktsOut=0 bytesIn=0 bytesOut=0
		  rs 10.244.1.8:8080 masq weight=1 active=0 inactive=0 want=1 conns=0 pktsIn=0 pktsOut=0 bytesIn=0 bytesOut=0
		vs 10.96.0.99:53/UDP rr owned conns=0 pktsIn=0 pktsOut=0 bytesIn=0 bytesOut=0
		  drift: owned but no Service wants it
		vs 192.168.1.10:443/TCP wlc foreign conns=0 pktsIn=0 pktsOut=0 bytesIn=0 bytesOut=0
		  rs 192.168.1.99:443 masq weight=3 active=0 inactive=0 conns=0 pktsIn=0 pktsOut=0 bytesIn=0 bytesOut=0
		vs 192.168.1.10:30080/TCP rr owned svc=default/np:tcp conns=0 pktsIn=0 pktsOut=0 bytesIn=0 bytesOut=0
		  rs 10.244.1.8:8080 masq weight=1 active=0 inactive=0 want=1 conns=0 pktsIn=0 pktsOut=0 bytesIn=0 bytesOut=0
		vs 192.168.1.11:30080/TCP rr missing svc=default/np:tcp
		  rs 10.244.1.8:8080 masq weight=1 active=0 inactive=0 missing
		  drift: missing from the kernel
	`)
}

// Without a desired state (the agent is down): ownership and drains from
// the dummy link and the state file, no Service names, no drift.
func TestInspectKernelAgentDown(t *testing.T) {
	e, _, _ := inspectEnv(t)
	in, err := InspectKernel(e.h, e.l, e.dir)
	if err != nil {
		t.Fatal(err)
	}
	if in.DriftChecked {
		t.Error("DriftChecked without a desired state")
	}
	got := in.Dump()
	if strings.Contains(got, "svc=") || strings.Contains(got, "drift") || strings.Contains(got, "missing") {
		t.Errorf("agent-down inspection names Services or drift:\n%s", got)
	}
	for _, want := range []string{
		"vs 10.96.0.99:53/UDP rr owned ",
		"vs 192.168.1.10:443/TCP wlc foreign ",
		"vs 192.168.1.10:30080/TCP rr owned ",
		"rs 10.244.1.6:8080 masq weight=0 active=2 inactive=1 draining-since=2025-01-01T00:00:00Z ",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("agent-down inspection lacks %q:\n%s", want, got)
		}
	}
}

// A Handle without TableReader: no counters, same annotations.
func TestInspectWithoutTableReader(t *testing.T) {
	e, _, st := inspectEnv(t)
	p, err := NewProxier(Config{StateDir: e.dir}, plainHandle{e.h}, e.l, e.s, WithClock(e.clock))
	if err != nil {
		t.Fatal(err)
	}
	in, err := p.Inspect(st)
	if err != nil {
		t.Fatal(err)
	}
	if in.Stats {
		t.Error("Stats without a TableReader")
	}
	got := in.Dump()
	if strings.Contains(got, "conns=") {
		t.Errorf("counters without a TableReader:\n%s", got)
	}
	if !strings.Contains(got, "drift: real server 10.244.2.7:8080 weight 5, want 1") {
		t.Errorf("drift lost without a TableReader:\n%s", got)
	}
}

func TestServiceVirtualServers(t *testing.T) {
	e, p, st := inspectEnv(t)
	np := spn("default/np", "", dataplane.TCP)
	got, err := p.ServiceVirtualServers(st, []dataplane.ServicePortName{np})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || len(got[np]) != 2 {
		t.Fatalf("got %v, want the two virtual servers of %s in the kernel", got, np)
	}
	var lines []string
	for _, vs := range got[np] {
		lines = append(lines, vs.header()+" svc="+vs.Service)
		for _, rs := range vs.RealServers {
			lines = append(lines, rs.line(true))
		}
	}
	expectDump(t, "virtual servers", strings.Join(lines, "\n")+"\n", `
		vs 10.96.0.20:80/TCP rr svc=default/np:tcp
		  rs 10.244.1.6:8080 masq weight=0 active=2 inactive=1
		  rs 10.244.1.8:8080 masq weight=1 active=0 inactive=0
		vs 192.168.1.10:30080/TCP rr svc=default/np:tcp
		  rs 10.244.1.8:8080 masq weight=1 active=0 inactive=0
	`)
	if p.DefaultScheduler() != "rr" {
		t.Errorf("DefaultScheduler %q", p.DefaultScheduler())
	}
	_ = e
}

// plainHandle hides FakeHandle's TableReader.
type plainHandle struct{ Handle }

func TestDesiredRealServers(t *testing.T) {
	e := newEnv(t)
	p := e.proxier(Config{})
	st := webState()
	got, ok, err := p.DesiredRealServers(st, key("192.168.1.11:30080/TCP"))
	if err != nil || !ok || len(got) != 1 || got[addrPort("10.244.1.6:8080")] != 1 {
		t.Errorf("NodePort virtual server: %v, %v, %v", got, ok, err)
	}
	if _, ok, err := p.DesiredRealServers(st, key("10.96.0.99:80/TCP")); ok || err != nil {
		t.Errorf("unwanted key: %v, %v", ok, err)
	}
	if m := e.h.Mutations(); len(m) > 0 {
		t.Errorf("DesiredRealServers wrote to the kernel: %v", m)
	}
}
