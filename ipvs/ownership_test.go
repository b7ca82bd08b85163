package ipvs

import (
	"context"
	"strings"
	"testing"

	"github.com/switchyard/switchyard/dataplane"
)

// foreignVS adds virtual servers another program made: on a node address
// (not in the state file), on an address switchyard does not have, and one
// on a NodePort key switchyard wants.
func addForeign(t *testing.T, h *FakeHandle) {
	t.Helper()
	for _, vs := range []VirtualServer{
		{Key: key("192.168.1.10:8443/TCP"), Scheduler: "wlc"},
		{Key: key("172.16.0.1:80/TCP"), Scheduler: "rr"},
		{Key: key("192.168.1.11:30080/TCP"), Scheduler: "sh"},
	} {
		if err := h.AddVirtualServer(vs); err != nil {
			t.Fatal(err)
		}
		if err := h.AddRealServer(vs.Key, RealServer{Addr: addrPort("172.16.9.9:80"), Weight: 3}); err != nil {
			t.Fatal(err)
		}
	}
}

const foreignDump = `vs 172.16.0.1:80/TCP rr
  rs 172.16.9.9:80 masq weight=3 active=0 inactive=0
vs 192.168.1.10:8443/TCP wlc
  rs 172.16.9.9:80 masq weight=3 active=0 inactive=0
vs 192.168.1.11:30080/TCP sh
  rs 172.16.9.9:80 masq weight=3 active=0 inactive=0
`

func TestForeignVirtualServersSurviveSyncAndCleanup(t *testing.T) {
	e := newEnv(t)
	addForeign(t, e.h)
	p := e.proxier(Config{})
	st := webState()
	e.sync(p, st, full)
	dump := e.h.Dump()
	for _, line := range strings.Split(foreignDump, "\n") {
		if !strings.Contains(dump, line) {
			t.Errorf("foreign entry %q changed:\n%s", line, dump)
		}
	}
	// The wanted NodePort key held by a foreign server is not registered.
	if strings.Contains(e.stateFile(), "192.168.1.11:30080/TCP") {
		t.Errorf("foreign key recorded as switchyard's:\n%s", e.stateFile())
	}
	// Removing every Service deletes only switchyard's objects.
	e.sync(p, dataplane.NewState(), full)
	expectDump(t, "after removing all Services", e.h.Dump(), foreignDump)

	e.sync(p, st, full)
	if err := p.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	expectDump(t, "after Cleanup", e.h.Dump(), foreignDump)
	if e.l.HasLink() || e.stateFile() != "" {
		t.Errorf("Cleanup left the link (%v) or the state file (%q)", e.l.HasLink(), e.stateFile())
	}
}

func TestCleanupWithoutSync(t *testing.T) {
	e := newEnv(t)
	addForeign(t, e.h)
	e.sync(e.proxier(Config{}), webState(), full)
	// A fresh process (switchyard --cleanup) that never synced.
	p := e.proxier(Config{})
	if err := p.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	expectDump(t, "after Cleanup", e.h.Dump(), foreignDump)
	if e.l.HasLink() || e.stateFile() != "" {
		t.Errorf("Cleanup left the link or the state file")
	}
	// Idempotent: a second Cleanup has nothing to do and does not fail.
	if err := p.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(p.Snapshot()) != 0 {
		t.Errorf("snapshot not cleared: %v", p.Snapshot())
	}
}

func TestCleanupKeepsLinkWhenDeleteFails(t *testing.T) {
	e := newEnv(t)
	e.sync(e.proxier(Config{}), webState(), full)
	e.h.Fail = func(op string, k Key) error {
		if op == "DeleteVirtualServer" && k.Port == 30080 {
			return ErrExists // any error
		}
		return nil
	}
	p := e.proxier(Config{})
	if err := p.Cleanup(context.Background()); err == nil {
		t.Fatal("Cleanup succeeded despite failures")
	}
	if !e.l.HasLink() || !strings.Contains(e.stateFile(), "30080") {
		t.Fatalf("link or state file gone before every owned virtual server was deleted")
	}
	e.h.Fail = nil
	if err := p.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if e.h.Dump() != "" || e.l.HasLink() || e.stateFile() != "" {
		t.Errorf("retry left:\n%s%v %q", e.h.Dump(), e.l.HasLink(), e.stateFile())
	}
}

// The state file names a NodePort virtual server before it exists, so a
// crash right after creating it cannot orphan it.
func TestNodePortRecordedBeforeCreation(t *testing.T) {
	e := newEnv(t)
	var seen []string
	e.h.Fail = func(op string, k Key) error {
		if op == "AddVirtualServer" && k.Port == 30080 {
			seen = append(seen, k.String()+" recorded="+boolStr(strings.Contains(e.stateFile(), k.String())))
		}
		return nil
	}
	e.sync(e.proxier(Config{}), webState(), full)
	if strings.Join(seen, ",") != "192.168.1.10:30080/TCP recorded=true,192.168.1.11:30080/TCP recorded=true" {
		t.Errorf("got %v", seen)
	}
}

func TestUnwritableStateDirSkipsOnlyNodePorts(t *testing.T) {
	e := newEnv(t)
	p := e.proxier(Config{StateDir: "/proc/switchyard-cannot-write"})
	err := p.Sync(context.Background(), webState(), full)
	if err == nil {
		t.Fatal("want an error")
	}
	d := e.h.Dump()
	if strings.Contains(d, ":30080/") || !strings.Contains(d, "vs 10.96.0.10:80/TCP") {
		t.Errorf("want ClusterIPs only:\n%s", d)
	}
}

func TestDriftIsRepairedOnFullSync(t *testing.T) {
	e := newEnv(t)
	p := e.proxier(Config{})
	st := webState()
	e.sync(p, st, full)
	e.sync(p, st, full) // periodic, nothing to do
	if n := p.Repairs(); n != 0 {
		t.Fatalf("repairs after the first and an idle full sync: %d, want 0", n)
	}
	want := e.h.Dump()
	wantLinks := e.l.Dump()

	// Someone deletes a virtual server, a real server, and an address.
	if err := e.h.DeleteVirtualServer(key("192.168.1.10:30080/TCP")); err != nil {
		t.Fatal(err)
	}
	if err := e.h.DeleteRealServer(key("10.96.0.10:80/TCP"), addrPort("10.244.2.7:8080")); err != nil {
		t.Fatal(err)
	}
	if err := e.h.UpdateVirtualServer(VirtualServer{Key: key("10.96.0.20:80/TCP"), Scheduler: "sh"}); err != nil {
		t.Fatal(err)
	}
	if err := e.l.DeleteAddress(addr("10.96.0.20")); err != nil {
		t.Fatal(err)
	}
	e.sync(p, st, full)
	if got := e.h.Dump(); got != want {
		t.Errorf("IPVS not repaired:\n%s\nwant\n%s", got, want)
	}
	if got := e.l.Dump(); got != wantLinks {
		t.Errorf("links not repaired:\n%s\nwant\n%s", got, wantLinks)
	}
	if n := p.Repairs(); n != 1 {
		t.Errorf("%d repairs counted, want 1 (one sync)", n)
	}
	// Each kind alone is a repair.
	for i, edit := range []func() error{
		func() error { return e.h.DeleteVirtualServer(key("192.168.1.10:30080/TCP")) },
		func() error { return e.h.DeleteRealServer(key("10.96.0.10:80/TCP"), addrPort("10.244.2.7:8080")) },
		func() error {
			return e.h.UpdateRealServer(key("10.96.0.10:80/TCP"), RealServer{Addr: addrPort("10.244.2.7:8080"), Weight: 5})
		},
		func() error {
			return e.h.UpdateVirtualServer(VirtualServer{Key: key("10.96.0.20:80/TCP"), Scheduler: "sh"})
		},
		func() error { return e.l.DeleteAddress(addr("10.96.0.20")) },
	} {
		if err := edit(); err != nil {
			t.Fatal(err)
		}
		e.sync(p, st, full)
		if n := p.Repairs(); n != uint64(i+2) {
			t.Errorf("edit %d: %d repairs, want %d", i, n, i+2)
		}
	}
	if got := e.h.Dump(); got != want {
		t.Errorf("IPVS not repaired:\n%s\nwant\n%s", got, want)
	}
	// A new endpoint (model change) is not a repair.
	before := p.Repairs()
	put(st, svc("default/web", "", dataplane.TCP, 80, "10.96.0.10"), ready("10.244.1.5:8080"), ready("10.244.2.7:8080"), ready("10.244.3.3:8080"))
	e.sync(p, st, changed(webSPN))
	e.sync(p, st, full)
	if n := p.Repairs(); n != before {
		t.Errorf("an endpoint change counted as %d repairs", n-before)
	}
	want = e.h.Dump()

	// Even the whole link.
	if err := e.l.DeleteLink(); err != nil {
		t.Fatal(err)
	}
	e.sync(p, st, full)
	if got := e.l.Dump(); got != wantLinks {
		t.Errorf("link not repaired:\n%s\nwant\n%s", got, wantLinks)
	}
	if got := e.h.Dump(); got != want {
		t.Errorf("IPVS changed after link repair:\n%s\nwant\n%s", got, want)
	}
	if n := p.Repairs(); n != before+1 {
		t.Errorf("link deleted: %d repairs, want 1", n-before)
	}
}

func boolStr(b bool) string {
	if b {
		return "true"
	}
	return "false"
}
