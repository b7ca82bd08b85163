package ipvs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/dataplane"
)

var (
	webKey = key("10.96.0.10:80/TCP")
	webSPN = spn("default/web", "", dataplane.TCP)
	oldRS  = addrPort("10.244.2.7:8080")
)

// scaleDown removes 10.244.2.7 from default/web.
func scaleDown(st *dataplane.State) {
	put(st, svc("default/web", "", dataplane.TCP, 80, "10.96.0.10"), ready("10.244.1.5:8080"))
}

func rsLine(t *testing.T, h *FakeHandle, k Key, rs string) string {
	t.Helper()
	in := false
	for _, l := range strings.Split(h.Dump(), "\n") {
		if strings.HasPrefix(l, "vs ") {
			in = strings.HasPrefix(l, "vs "+k.String()+" ")
			continue
		}
		if in && strings.HasPrefix(l, "  rs "+rs+" ") {
			return strings.TrimSpace(l)
		}
	}
	return ""
}

func TestDrainLifecycle(t *testing.T) {
	e := newEnv(t)
	p := e.proxier(Config{})
	triggered := 0
	p.SetTrigger(func() { triggered++ })
	st := webState()
	e.sync(p, st, full)
	e.h.SetConnections(webKey, oldRS, 1, 0)

	// Endpoint removed while a connection is open: weight 0, kept.
	scaleDown(st)
	e.sync(p, st, changed(webSPN))
	if got := rsLine(t, e.h, webKey, "10.244.2.7:8080"); got != "rs 10.244.2.7:8080 masq weight=0 active=1 inactive=0" {
		t.Fatalf("draining real server: %q", got)
	}
	if !strings.Contains(e.stateFile(), `"realServer": "10.244.2.7:8080"`) {
		t.Errorf("drain not recorded:\n%s", e.stateFile())
	}
	// A sync is requested later.
	if e.clock.Pending() != 1 {
		t.Fatalf("want one drain check timer, have %d", e.clock.Pending())
	}
	e.clock.Advance(DefaultDrainCheckInterval)
	if e.clock.FireDue() != 1 || triggered != 1 {
		t.Fatalf("trigger not called")
	}
	// Still connected: the sweep (a partial sync with no changes) keeps it
	// and asks again.
	e.resetCalls()
	e.sync(p, st, changed())
	e.expectMutations()
	if got := strings.Join(e.h.Calls(), ","); got != "GetVirtualServer 10.96.0.10:80/TCP,ListRealServers 10.96.0.10:80/TCP" {
		t.Errorf("sweep read more than the draining virtual server: %s", got)
	}
	if e.clock.Pending() != 1 {
		t.Errorf("no new drain check armed")
	}
	// The connection ends (TIME_WAIT counts as inactive): still kept.
	e.h.SetConnections(webKey, oldRS, 0, 1)
	e.sync(p, st, changed())
	e.expectMutations()
	// Connection entry expired: deleted by the next sweep.
	e.h.SetConnections(webKey, oldRS, 0, 0)
	e.sync(p, st, changed())
	e.expectMutations("DeleteRealServer 10.96.0.10:80/TCP 10.244.2.7:8080")
	if strings.Contains(e.stateFile(), "10.244.2.7") {
		t.Errorf("drain still recorded:\n%s", e.stateFile())
	}
	e.clock.Advance(time.Hour)
	e.clock.FireDue()
	e.sync(p, st, changed())
	if e.clock.Pending() != 0 {
		t.Errorf("drain check armed with nothing draining")
	}
	// Removing the endpoint, draining and the drain's end are programming.
	if n := p.Repairs(); n != 0 {
		t.Errorf("a drain counted as %d repairs", n)
	}
}

// A weight-0 draining real server set back to weight 1 behind the agent's
// back is drift; the drain itself and its end are not.
func TestDrainWeightRestoredIsARepair(t *testing.T) {
	e := newEnv(t)
	p := e.proxier(Config{})
	st := webState()
	e.sync(p, st, full)
	e.h.SetConnections(webKey, oldRS, 1, 0)
	scaleDown(st)
	e.sync(p, st, changed(webSPN))
	if err := e.h.UpdateRealServer(webKey, RealServer{Addr: oldRS, Weight: 1}); err != nil {
		t.Fatal(err)
	}
	e.sync(p, st, changed())
	if n := p.Repairs(); n != 1 {
		t.Errorf("drain weight restored: %d repairs, want 1", n)
	}
	e.h.SetConnections(webKey, oldRS, 0, 0)
	e.sync(p, st, changed())
	if n := p.Repairs(); n != 1 {
		t.Errorf("drain end counted as a repair: %d, want 1", n)
	}
}

func TestDrainTimeout(t *testing.T) {
	e := newEnv(t)
	p := e.proxier(Config{DrainTimeout: time.Minute})
	st := webState()
	e.sync(p, st, full)
	e.h.SetConnections(webKey, oldRS, 5, 2)
	scaleDown(st)
	e.sync(p, st, changed(webSPN))
	e.clock.Advance(59 * time.Second)
	e.resetCalls()
	e.sync(p, st, changed())
	e.expectMutations()
	e.clock.Advance(time.Second)
	e.sync(p, st, changed())
	e.expectMutations("DeleteRealServer 10.96.0.10:80/TCP 10.244.2.7:8080")
}

func TestEndpointReturnsWhileDraining(t *testing.T) {
	e := newEnv(t)
	p := e.proxier(Config{})
	st := webState()
	e.sync(p, st, full)
	e.h.SetConnections(webKey, oldRS, 1, 0)
	scaleDown(st)
	e.sync(p, st, changed(webSPN))
	e.resetCalls()
	st = webState()
	e.sync(p, st, changed(webSPN))
	// Back to weight 1 in place: its open connection is not cut.
	e.expectMutations("UpdateRealServer 10.96.0.10:80/TCP 10.244.2.7:8080 weight=1")
	if n := p.Repairs(); n != 0 {
		t.Errorf("an endpoint coming back counted as %d repairs", n)
	}
	if strings.Contains(e.stateFile(), "10.244.2.7") {
		t.Errorf("drain still recorded:\n%s", e.stateFile())
	}
}

func TestUDPRealServersAreDeletedAtOnce(t *testing.T) {
	e := newEnv(t)
	p := e.proxier(Config{})
	st := dataplane.NewState()
	dns := svc("kube-system/dns", "", dataplane.UDP, 53, "10.96.0.10")
	put(st, dns, ready("10.244.1.2:53"), ready("10.244.2.2:53"))
	e.sync(p, st, full)
	e.h.SetConnections(key("10.96.0.10:53/UDP"), addrPort("10.244.2.2:53"), 0, 4)
	put(st, dns, ready("10.244.1.2:53"))
	e.resetCalls()
	e.sync(p, st, changed(dns.Name))
	e.expectMutations("DeleteRealServer 10.96.0.10:53/UDP 10.244.2.2:53")
}

// Terminating endpoints the policy still lists keep weight 0 and stay, even
// without connections: they are wanted, not draining.
func TestWantedWeightZeroStays(t *testing.T) {
	e := newEnv(t)
	p := e.proxier(Config{})
	st := webState()
	e.sync(p, st, full)
	put(st, svc("default/web", "", dataplane.TCP, 80, "10.96.0.10"), ready("10.244.1.5:8080"), terminating("10.244.2.7:8080", true))
	e.sync(p, st, changed(webSPN))
	for range 3 {
		e.clock.Advance(time.Hour)
		e.sync(p, st, full)
	}
	if got := rsLine(t, e.h, webKey, "10.244.2.7:8080"); got != "rs 10.244.2.7:8080 masq weight=0 active=0 inactive=0" {
		t.Errorf("terminating real server: %q", got)
	}
	if strings.Contains(e.stateFile(), "10.244.2.7") {
		t.Errorf("wanted weight-0 server recorded as draining")
	}
}

// kubernetes#92019: after a restart, kube-proxy left weight-0 real servers
// for ever because its drain list lived only in memory. Here a new Proxier
// finds the drain from the kernel and keeps its start time from the state
// file.
func TestDrainSurvivesRestart(t *testing.T) {
	e := newEnv(t)
	st := webState()
	p1 := e.proxier(Config{DrainTimeout: 10 * time.Minute})
	e.sync(p1, st, full)
	e.h.SetConnections(webKey, oldRS, 1, 0)
	scaleDown(st)
	e.sync(p1, st, changed(webSPN))
	// p1 dies. 4 minutes later p2 starts.
	e.clock.Advance(4 * time.Minute)
	p2 := e.proxier(Config{DrainTimeout: 10 * time.Minute})
	p2.SetTrigger(func() {})
	e.resetCalls()
	e.sync(p2, st, full)
	e.expectMutations()
	if e.clock.Pending() == 0 {
		t.Errorf("restarted proxier does not re-check the drain")
	}
	// Its connections end: the weight-0 server goes.
	e.h.SetConnections(webKey, oldRS, 0, 0)
	e.sync(p2, st, changed())
	e.expectMutations("DeleteRealServer 10.96.0.10:80/TCP 10.244.2.7:8080")
}

func TestDrainTimeoutCountsFromBeforeRestart(t *testing.T) {
	e := newEnv(t)
	st := webState()
	cfg := Config{DrainTimeout: 10 * time.Minute}
	e.sync(e.proxier(cfg), st, full)
	e.h.SetConnections(webKey, oldRS, 1, 0)
	scaleDown(st)
	e.sync(e.proxier(cfg), st, changed(webSPN))
	e.clock.Advance(10 * time.Minute)
	e.resetCalls()
	e.sync(e.proxier(cfg), st, full)
	e.expectMutations("DeleteRealServer 10.96.0.10:80/TCP 10.244.2.7:8080")
}

// Without the state file (lost, or written by nothing) a weight-0 real
// server nobody wants is still recognized as draining; its timeout starts
// at the restart.
func TestDrainRecoveredWithoutStateFile(t *testing.T) {
	e := newEnv(t)
	st := webState()
	cfg := Config{DrainTimeout: 10 * time.Minute}
	e.sync(e.proxier(cfg), st, full)
	e.h.SetConnections(webKey, oldRS, 1, 0)
	scaleDown(st)
	e.sync(e.proxier(cfg), st, changed(webSPN))
	if err := os.Remove(filepath.Join(e.dir, StateFileName)); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(time.Hour)
	p := e.proxier(cfg)
	e.resetCalls()
	e.sync(p, st, full)
	e.expectMutations()
	if !strings.Contains(e.stateFile(), "10.244.2.7:8080") {
		t.Errorf("drain not recorded again:\n%s", e.stateFile())
	}
	e.clock.Advance(10 * time.Minute)
	e.sync(p, st, changed())
	e.expectMutations("DeleteRealServer 10.96.0.10:80/TCP 10.244.2.7:8080")
}

// An unwanted virtual server goes at once, like kube-proxy, even with open
// connections; its drains are forgotten.
func TestUnwantedVirtualServerDeletedAtOnce(t *testing.T) {
	e := newEnv(t)
	p := e.proxier(Config{})
	st := webState()
	e.sync(p, st, full)
	e.h.SetConnections(webKey, oldRS, 1, 0)
	scaleDown(st)
	e.sync(p, st, changed(webSPN))
	remove(st, webSPN)
	e.resetCalls()
	e.sync(p, st, changed(webSPN))
	e.expectMutations("DeleteVirtualServer 10.96.0.10:80/TCP", "DeleteAddress 10.96.0.10")
	if strings.Contains(e.stateFile(), "10.244.2.7") {
		t.Errorf("drain of a deleted virtual server kept:\n%s", e.stateFile())
	}
}
