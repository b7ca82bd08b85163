package ipvs

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/switchyard/switchyard/dataplane"
)

func TestSyncFromEmpty(t *testing.T) {
	e := newEnv(t)
	p := e.proxier(Config{})
	e.sync(p, webState(), full)
	expectDump(t, "ipvs", e.h.Dump(), `
		vs 10.96.0.10:80/TCP rr
		  rs 10.244.1.5:8080 masq weight=1 active=0 inactive=0
		  rs 10.244.2.7:8080 masq weight=1 active=0 inactive=0
		vs 10.96.0.20:80/TCP rr
		  rs 10.244.1.6:8080 masq weight=1 active=0 inactive=0
		vs 192.168.1.10:30080/TCP rr
		  rs 10.244.1.6:8080 masq weight=1 active=0 inactive=0
		vs 192.168.1.11:30080/TCP rr
		  rs 10.244.1.6:8080 masq weight=1 active=0 inactive=0
	`)
	expectDump(t, "links", e.l.Dump(), `
		link eth0
		  addr 192.168.1.10
		  addr 192.168.1.11
		  addr fe80::1
		link lo
		  addr 127.0.0.1
		  addr ::1
		link switchyard0
		  addr 10.96.0.10
		  addr 10.96.0.20
	`)
	golden(t, "proxier/state-from-empty.json", e.stateFile())
	expectDump(t, "sysctls", e.s.Dump(), `
		kernel/osrelease=6.1.0-56-amd64
		net/ipv4/conf/all/arp_announce=0
		net/ipv4/conf/all/arp_ignore=0
		net/ipv4/ip_forward=1
		net/ipv4/vs/conn_reuse_mode=1
		net/ipv4/vs/conntrack=1
		net/ipv4/vs/expire_nodest_conn=1
		net/ipv4/vs/expire_quiescent_template=1
	`)
	// Snapshot mirrors the kernel.
	snap := p.Snapshot()
	if len(snap) != 4 || snap[0].Service != "default/web:tcp" || len(snap[0].RealServers) != 2 {
		t.Errorf("snapshot: %+v", snap)
	}
}

func TestResyncMakesNoChanges(t *testing.T) {
	e := newEnv(t)
	p := e.proxier(Config{})
	st := webState()
	e.sync(p, st, full)
	e.resetCalls()
	e.sync(p, st, full)
	e.sync(p, st, changed(spn("default/web", "", dataplane.TCP)))
	e.expectMutations()
}

// A restarted agent (new Proxier, same kernel and state dir) whose first
// sync finds everything in place only reads.
func TestRestartAdoptsWithoutChanges(t *testing.T) {
	e := newEnv(t)
	st := webState()
	e.sync(e.proxier(Config{}), st, full)
	e.h.SetConnections(key("10.96.0.10:80/TCP"), addrPort("10.244.1.5:8080"), 3, 1)
	before := e.h.Dump()
	setsBefore := len(e.s.Sets())
	e.resetCalls()

	p2 := e.proxier(Config{})
	e.sync(p2, st, dataplane.Changes{}) // first sync is full even if not asked
	for _, c := range e.h.Calls() {
		if !strings.HasPrefix(c, "List") && !strings.HasPrefix(c, "Get") {
			t.Errorf("restart made IPVS call %q", c)
		}
	}
	e.expectMutations()
	if got := len(e.s.Sets()); got != setsBefore {
		t.Errorf("restart wrote sysctls: %v", e.s.Sets()[setsBefore:])
	}
	if e.h.Dump() != before {
		t.Errorf("kernel changed:\n%s\nwas\n%s", e.h.Dump(), before)
	}
}

func TestMinimalOperations(t *testing.T) {
	for _, mode := range []string{"partial", "full"} {
		t.Run(mode, func(t *testing.T) {
			e := newEnv(t)
			p := e.proxier(Config{})
			st := webState()
			e.sync(p, st, full)
			ch := func(n dataplane.ServicePortName) dataplane.Changes {
				if mode == "full" {
					return full
				}
				return changed(n)
			}
			web := spn("default/web", "", dataplane.TCP)

			// Scale up: one real server added.
			e.resetCalls()
			put(st, svc("default/web", "", dataplane.TCP, 80, "10.96.0.10"), ready("10.244.1.5:8080"), ready("10.244.2.7:8080"), ready("10.244.3.3:8080"))
			e.sync(p, st, ch(web))
			e.expectMutations("AddRealServer 10.96.0.10:80/TCP 10.244.3.3:8080 weight=1")

			// Scheduler annotation: one update, real servers untouched.
			e.resetCalls()
			sp := svc("default/web", "", dataplane.TCP, 80, "10.96.0.10")
			sp.Scheduler = "lc"
			put(st, sp, st.Endpoints[web]...)
			e.sync(p, st, ch(web))
			e.expectMutations("UpdateVirtualServer 10.96.0.10:80/TCP lc")

			// Endpoint becomes not ready (still listed): weight 0, kept.
			e.resetCalls()
			eps := st.Endpoints[web]
			eps[2].Ready, eps[2].Serving = false, false
			e.sync(p, st, ch(web))
			e.expectMutations("UpdateRealServer 10.96.0.10:80/TCP 10.244.3.3:8080 weight=0")

			// New port on the Service: a new virtual server; address exists.
			e.resetCalls()
			put(st, svc("default/web", "https", dataplane.TCP, 443, "10.96.0.10"), ready("10.244.1.5:8443"))
			e.sync(p, st, ch(web))
			e.expectMutations(
				"AddVirtualServer 10.96.0.10:443/TCP rr",
				"AddRealServer 10.96.0.10:443/TCP 10.244.1.5:8443 weight=1")

			// Service deleted: its virtual servers, then its address.
			e.resetCalls()
			remove(st, web)
			remove(st, spn("default/web", "https", dataplane.TCP))
			e.sync(p, st, ch(web))
			e.expectMutations(
				"DeleteVirtualServer 10.96.0.10:80/TCP",
				"DeleteVirtualServer 10.96.0.10:443/TCP",
				"DeleteAddress 10.96.0.10")
		})
	}
}

func TestPartialSyncReadsOnlyChangedServices(t *testing.T) {
	e := newEnv(t)
	p := e.proxier(Config{})
	st := webState()
	e.sync(p, st, full)
	e.resetCalls()
	put(st, svc("default/web", "", dataplane.TCP, 80, "10.96.0.10"), ready("10.244.1.5:8080"))
	e.sync(p, st, changed(spn("default/web", "", dataplane.TCP)))
	want := []string{
		"GetVirtualServer 10.96.0.10:80/TCP",
		"ListRealServers 10.96.0.10:80/TCP",
		"DeleteRealServer 10.96.0.10:80/TCP 10.244.2.7:8080", // no connections: deleted at once
	}
	if got := e.h.Calls(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("IPVS calls:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestNodeAddressChangeMakesSyncFull(t *testing.T) {
	e := newEnv(t)
	p := e.proxier(Config{})
	st := webState()
	e.sync(p, st, full)
	e.l.SetHostAddresses("eth0", "192.168.1.10", "192.168.1.12")
	e.resetCalls()
	e.sync(p, st, changed()) // nothing changed in the model
	e.expectMutations(
		"DeleteVirtualServer 192.168.1.11:30080/TCP",
		"AddVirtualServer 192.168.1.12:30080/TCP rr",
		"AddRealServer 192.168.1.12:30080/TCP 10.244.1.6:8080 weight=1")
	if s := e.stateFile(); strings.Contains(s, "192.168.1.11") || !strings.Contains(s, "192.168.1.12:30080/TCP") {
		t.Errorf("state file not updated:\n%s", s)
	}
}

func TestNodePortAddressesConfig(t *testing.T) {
	e := newEnv(t)
	p := e.proxier(Config{NodePortAddresses: []netip.Prefix{mustPrefix("192.168.1.11/32"), mustPrefix("127.0.0.0/8")}})
	e.sync(p, webState(), full)
	var got []string
	for _, vs := range p.Snapshot() {
		if vs.Port == 30080 {
			got = append(got, vs.Key.String())
		}
	}
	if strings.Join(got, " ") != "127.0.0.1:30080/TCP 192.168.1.11:30080/TCP" {
		t.Errorf("NodePort virtual servers: %v", got)
	}
}

func TestErrorOnOneVirtualServerDoesNotStopOthers(t *testing.T) {
	e := newEnv(t)
	boom := errors.New("boom")
	e.h.Fail = func(op string, k Key) error {
		if op == "AddVirtualServer" && k == key("10.96.0.10:80/TCP") {
			return boom
		}
		return nil
	}
	p := e.proxier(Config{})
	st := webState()
	err := p.Sync(context.Background(), st, full)
	if !errors.Is(err, boom) {
		t.Fatalf("Sync error = %v, want boom", err)
	}
	if !strings.Contains(e.h.Dump(), "vs 10.96.0.20:80/TCP") || !strings.Contains(e.h.Dump(), "vs 192.168.1.10:30080/TCP") {
		t.Errorf("other virtual servers missing:\n%s", e.h.Dump())
	}
	// The loop retries with a full sync; it succeeds once the fault is gone.
	e.h.Fail = nil
	e.sync(p, st, changed())
	if !strings.Contains(e.h.Dump(), "vs 10.96.0.10:80/TCP") {
		t.Errorf("retry did not create the failed virtual server:\n%s", e.h.Dump())
	}
}

func TestConflictingServicesKeepTheirOtherFrontends(t *testing.T) {
	e := newEnv(t)
	p := e.proxier(Config{})
	st := dataplane.NewState()
	a := svc("default/a", "", dataplane.TCP, 80, "10.96.0.80")
	a.ExternalIPs = addrs("203.0.113.9")
	put(st, a, ready("10.244.1.1:80"))
	b := svc("default/b", "", dataplane.TCP, 80, "10.96.0.81")
	b.ExternalIPs = addrs("203.0.113.9")
	put(st, b, ready("10.244.1.2:80"))
	e.sync(p, st, full)
	expectDump(t, "ipvs", e.h.Dump(), `
		vs 10.96.0.80:80/TCP rr
		  rs 10.244.1.1:80 masq weight=1 active=0 inactive=0
		vs 10.96.0.81:80/TCP rr
		  rs 10.244.1.2:80 masq weight=1 active=0 inactive=0
		vs 203.0.113.9:80/TCP rr
		  rs 10.244.1.1:80 masq weight=1 active=0 inactive=0
	`)
	// The winner goes away: the loser takes the key over.
	remove(st, a.Name)
	e.sync(p, st, changed(a.Name))
	expectDump(t, "ipvs", e.h.Dump(), `
		vs 10.96.0.81:80/TCP rr
		  rs 10.244.1.2:80 masq weight=1 active=0 inactive=0
		vs 203.0.113.9:80/TCP rr
		  rs 10.244.1.2:80 masq weight=1 active=0 inactive=0
	`)
}

func TestIPv6SkippedWhenNodeHasNone(t *testing.T) {
	e := newEnv(t)
	e.l.NoIPv6 = true
	p := e.proxier(Config{})
	st := dataplane.NewState()
	put(st, svc("default/ds", "", dataplane.TCP, 80, "10.96.0.70", "fd00:96::70"), ready("10.244.1.5:80"), ready("[fd00:244::5]:80"))
	e.sync(p, st, full) // no error
	expectDump(t, "ipvs", e.h.Dump(), `
		vs 10.96.0.70:80/TCP rr
		  rs 10.244.1.5:80 masq weight=1 active=0 inactive=0
	`)
}

func TestUnwritableSysctlsAreNotFatal(t *testing.T) {
	e := newEnv(t)
	e.s.ReadOnly[sysctlForward] = true
	e.s = NewFakeSysctl(map[string]string{sysctlOSRelease: "5.4.0", sysctlForward: "0", sysctlConnReuseMode: "1"})
	e.s.ReadOnly[sysctlForward] = true
	p := e.proxier(Config{StrictARP: true})
	e.sync(p, webState(), full)
	// ip_forward read-only, vs/* and arp keys missing: logged only.
	// 5.4 < 5.9: conn_reuse_mode set to 0 as kube-proxy does.
	expectDump(t, "sysctls", e.s.Dump(), `
		kernel/osrelease=5.4.0
		net/ipv4/ip_forward=0
		net/ipv4/vs/conn_reuse_mode=0
	`)
}

func TestStrictARP(t *testing.T) {
	e := newEnv(t)
	e.sync(e.proxier(Config{StrictARP: true}), webState(), full)
	d := e.s.Dump()
	if !strings.Contains(d, "arp_ignore=1") || !strings.Contains(d, "arp_announce=2") {
		t.Errorf("strict ARP not set:\n%s", d)
	}
}
