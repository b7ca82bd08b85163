package ipvs

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/dataplane"
)

// callsOn returns the IPVS calls since the last reset that name k.
func callsOn(h *FakeHandle, k Key) []string {
	var out []string
	for _, c := range h.Calls() {
		if strings.Contains(c, " "+k.String()) {
			out = append(out, c)
		}
	}
	return out
}

// A conflict's winner goes away in a partial sync that names only the
// winner: the loser, which did not change, takes the key over with its own
// real servers and NodePort flag, and keeps it when it changes later.
func TestPartialSyncConflictWinnerRemoved(t *testing.T) {
	e := newEnv(t)
	p := e.proxier(Config{})
	st := dataplane.NewState()
	shared := key("203.0.113.9:80/TCP")
	b := svc("default/b", "", dataplane.TCP, 80, "10.96.0.81")
	b.ExternalIPs = addrs("203.0.113.9")
	put(st, b, ready("10.244.1.2:80"))
	e.sync(p, st, full)

	// default/a arrives and wins the key by name; b is not part of the change.
	a := svc("default/a", "", dataplane.TCP, 80, "10.96.0.80")
	a.ExternalIPs = addrs("203.0.113.9")
	put(st, a, ready("10.244.1.1:80"))
	e.resetCalls()
	e.sync(p, st, changed(a.Name))
	e.expectMutations(
		"AddVirtualServer 10.96.0.80:80/TCP rr",
		"AddRealServer 10.96.0.80:80/TCP 10.244.1.1:80 weight=1",
		"AddRealServer 203.0.113.9:80/TCP 10.244.1.1:80 weight=1",
		"DeleteRealServer 203.0.113.9:80/TCP 10.244.1.2:80",
		"AddAddress 10.96.0.80")
	if vs := snapshotVS(p, shared); vs.Service != "default/a:tcp" {
		t.Errorf("shared key owned by %q, want default/a:tcp", vs.Service)
	}

	// The loser changes: the shared key is not its, so it is not touched.
	e.resetCalls()
	put(st, b, ready("10.244.1.2:80"), ready("10.244.1.3:80"))
	e.sync(p, st, changed(b.Name))
	if c := callsOn(e.h, shared); len(c) != 0 {
		t.Errorf("loser's change touched the winner's key: %v", c)
	}
	e.expectMutations("AddRealServer 10.96.0.81:80/TCP 10.244.1.3:80 weight=1")

	// The winner goes: the loser gets the key with its current endpoints.
	e.resetCalls()
	remove(st, a.Name)
	e.sync(p, st, changed(a.Name))
	e.expectMutations(
		"DeleteVirtualServer 10.96.0.80:80/TCP",
		"AddRealServer 203.0.113.9:80/TCP 10.244.1.2:80 weight=1",
		"AddRealServer 203.0.113.9:80/TCP 10.244.1.3:80 weight=1",
		"DeleteRealServer 203.0.113.9:80/TCP 10.244.1.1:80",
		"DeleteAddress 10.96.0.80")
	if vs := snapshotVS(p, shared); vs.Service != "default/b:tcp" {
		t.Errorf("shared key owned by %q, want default/b:tcp", vs.Service)
	}

	// It is b's now: b's next change reaches it, and its removal deletes it.
	e.resetCalls()
	put(st, b, ready("10.244.1.3:80"))
	e.sync(p, st, changed(b.Name))
	e.expectMutations(
		"DeleteRealServer 10.96.0.81:80/TCP 10.244.1.2:80",
		"DeleteRealServer 203.0.113.9:80/TCP 10.244.1.2:80")
	e.resetCalls()
	remove(st, b.Name)
	e.sync(p, st, changed(b.Name))
	e.expectMutations(
		"DeleteVirtualServer 10.96.0.81:80/TCP",
		"DeleteVirtualServer 203.0.113.9:80/TCP",
		"DeleteAddress 10.96.0.81",
		"DeleteAddress 203.0.113.9")
	if d := e.h.Dump(); d != "" {
		t.Errorf("IPVS not empty:\n%s", d)
	}
}

// The winner keeps the Service but drops the contested frontend; and a
// NodePort key contested by an ExternalIP on a node address changes hands
// with its NodePort flag.
func TestPartialSyncConflictWinnerDropsKey(t *testing.T) {
	e := newEnv(t)
	p := e.proxier(Config{})
	st := dataplane.NewState()
	a := svc("default/a", "", dataplane.TCP, 30080, "10.96.0.80")
	a.ExternalIPs = addrs("192.168.1.10") // a node address, on a's port 30080
	put(st, a, ready("10.244.1.1:80"))
	np := svc("default/np", "", dataplane.TCP, 80, "10.96.0.81")
	np.NodePort = 30080
	put(st, np, ready("10.244.1.2:80"))
	e.sync(p, st, full)
	contested := key("192.168.1.10:30080/TCP")
	if vs := snapshotVS(p, contested); vs.Service != "default/a:tcp" {
		t.Fatalf("contested key owned by %q, want default/a:tcp", vs.Service)
	}

	e.resetCalls()
	a.ExternalIPs = nil
	put(st, a, ready("10.244.1.1:80"))
	e.sync(p, st, changed(a.Name))
	e.expectMutations(
		"AddRealServer 192.168.1.10:30080/TCP 10.244.1.2:80 weight=1",
		"DeleteRealServer 192.168.1.10:30080/TCP 10.244.1.1:80",
		"DeleteAddress 192.168.1.10")
	if vs := snapshotVS(p, contested); vs.Service != "default/np:tcp" {
		t.Errorf("contested key owned by %q, want default/np:tcp", vs.Service)
	}
	if !strings.Contains(e.stateFile(), "192.168.1.10:30080/TCP") {
		t.Errorf("NodePort key missing from the state file:\n%s", e.stateFile())
	}
	assertSameAsFreshFullSync(t, p, e, st)
}

// Two Services share an address (an ExternalIP on different ports): when
// one goes, the address stays for the other; when both are gone, it goes.
func TestPartialSyncSharedAddressStays(t *testing.T) {
	e := newEnv(t)
	p := e.proxier(Config{})
	st := dataplane.NewState()
	web := svc("default/web", "", dataplane.TCP, 80, "10.96.0.10")
	web.ExternalIPs = addrs("203.0.113.9")
	put(st, web, ready("10.244.1.1:80"))
	tls := svc("default/tls", "", dataplane.TCP, 443, "10.96.0.11")
	tls.ExternalIPs = addrs("203.0.113.9")
	put(st, tls, ready("10.244.1.2:443"))
	e.sync(p, st, full)

	e.resetCalls()
	remove(st, web.Name)
	e.sync(p, st, changed(web.Name))
	e.expectMutations(
		"DeleteVirtualServer 10.96.0.10:80/TCP",
		"DeleteVirtualServer 203.0.113.9:80/TCP",
		"DeleteAddress 10.96.0.10")
	expectDump(t, "links", e.l.Dump(), `
		link eth0
		  addr 192.168.1.10
		  addr 192.168.1.11
		  addr fe80::1
		link lo
		  addr 127.0.0.1
		  addr ::1
		link switchyard0
		  addr 10.96.0.11
		  addr 203.0.113.9
	`)

	// Within one Service too: one port goes, the other keeps the address.
	tls2 := svc("default/tls", "alt", dataplane.TCP, 8443, "10.96.0.11")
	tls2.ExternalIPs = addrs("203.0.113.9")
	put(st, tls2, ready("10.244.1.2:8443"))
	e.sync(p, st, changed(tls.Name))
	e.resetCalls()
	remove(st, tls.Name)
	e.sync(p, st, changed(tls.Name))
	e.expectMutations(
		"DeleteVirtualServer 10.96.0.11:443/TCP",
		"DeleteVirtualServer 203.0.113.9:443/TCP")

	e.resetCalls()
	remove(st, tls2.Name)
	e.sync(p, st, changed(tls2.Name))
	e.expectMutations(
		"DeleteVirtualServer 10.96.0.11:8443/TCP",
		"DeleteVirtualServer 203.0.113.9:8443/TCP",
		"DeleteAddress 10.96.0.11",
		"DeleteAddress 203.0.113.9")
}

// A Service gains a port under a new name, and one renames its port: the
// partial sync finds the new ports without being told their names.
func TestPartialSyncFindsNewPorts(t *testing.T) {
	e := newEnv(t)
	p := e.proxier(Config{})
	st := webState()
	e.sync(p, st, full)
	web := spn("default/web", "", dataplane.TCP)

	e.resetCalls()
	remove(st, web)
	put(st, svc("default/web", "renamed", dataplane.TCP, 80, "10.96.0.10"), ready("10.244.1.5:8080"))
	e.sync(p, st, changed(web))
	e.expectMutations("DeleteRealServer 10.96.0.10:80/TCP 10.244.2.7:8080")
	if vs := snapshotVS(p, webKey); vs.Service != "default/web:renamed/tcp" {
		t.Errorf("owner %q after rename", vs.Service)
	}

	e.resetCalls()
	put(st, svc("default/np", "extra", dataplane.UDP, 53, "10.96.0.20"), ready("10.244.1.6:53"))
	e.sync(p, st, changed(spn("default/np", "", dataplane.TCP)))
	e.expectMutations(
		"AddVirtualServer 10.96.0.20:53/UDP rr",
		"AddRealServer 10.96.0.20:53/UDP 10.244.1.6:53 weight=1")
	assertSameAsFreshFullSync(t, p, e, st)
}

// TestPartialSyncMatchesFullSync applies a random sequence of changes to a
// small cluster, where Services often share addresses and contest keys,
// with partial syncs only. After every step the kernel, the dummy link, the
// state file and the snapshot must be what a full sync of the same model
// gives on a fresh node, and the index what a full sync builds.
func TestPartialSyncMatchesFullSync(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	g := &modelGen{rng: rng}
	e := newEnv(t)
	p := e.proxier(Config{})
	st := dataplane.NewState()
	for _, s := range g.services() {
		g.replace(st, s, g.ports(s)...)
	}
	e.sync(p, st, full)
	steps := 300
	if testing.Short() {
		steps = 60
	}
	for step := range steps {
		ch := dataplane.Changes{Services: map[dataplane.ServiceName]struct{}{}}
		for range 1 + rng.IntN(3) {
			s := g.pick()
			ch.Services[s] = struct{}{}
			switch rng.IntN(5) {
			case 0: // the Service goes
				g.replace(st, s)
			case 1: // only endpoints change
				for name := range st.Services {
					if name.ServiceName == s {
						put(st, st.Services[name], g.endpoints()...)
					}
				}
			case 2: // one port is added or replaced
				sp := g.port(s)
				put(st, sp, g.endpoints()...)
			default: // new ports, some names kept
				g.replace(st, s, g.ports(s)...)
			}
		}
		if rng.IntN(4) == 0 { // told about a Service that did not change
			ch.Services[g.pick()] = struct{}{}
		}
		if err := p.Sync(t.Context(), st, ch); err != nil {
			t.Fatalf("step %d: Sync: %v", step, err)
		}
		if !assertSameAsFreshFullSync(t, p, e, st) {
			t.Fatalf("step %d diverged; changed %v; model:\n%s", step, slices.Collect(maps.Keys(ch.Services)), Desired(st, p.idx.nodeIPs, p.cfg).Dump())
		}
	}
	// Nothing left for a full sync to repair.
	e.resetCalls()
	e.sync(p, st, full)
	e.expectMutations()
}

// assertSameAsFreshFullSync compares what p made of st on e with a full
// sync of st on a fresh node, and p's index with a freshly built one.
func assertSameAsFreshFullSync(t *testing.T, p *Proxier, e *env, st *dataplane.State) bool {
	t.Helper()
	f := newEnv(t)
	fp := f.proxier(Config{})
	f.sync(fp, st, full)
	ok := true
	check := func(what, got, want string) {
		t.Helper()
		if got != want {
			ok = false
			t.Errorf("%s after partial syncs differs from a full sync:\n--- partial\n%s\n--- full\n%s", what, got, want)
		}
	}
	check("IPVS", e.h.Dump(), f.h.Dump())
	check("links", e.l.Dump(), f.l.Dump())
	check("state file", e.stateFile(), f.stateFile())
	check("snapshot", fmt.Sprint(p.Snapshot()), fmt.Sprint(fp.Snapshot()))
	check("index", p.idx.dump(), fp.idx.dump())
	return ok
}

func snapshotVS(p *Proxier, k Key) VirtualServer {
	for _, vs := range p.Snapshot() {
		if vs.Key == k {
			return vs
		}
	}
	return VirtualServer{}
}

// dump renders the index deterministically, for comparisons.
func (idx *desiredIndex) dump() string {
	var b strings.Builder
	fmt.Fprintf(&b, "entries %d nodeIPs %v\n", idx.entries, idx.nodeIPs)
	for _, svc := range slices.SortedFunc(maps.Keys(idx.ports), func(a, b dataplane.ServiceName) int { return strings.Compare(a.String(), b.String()) }) {
		for _, pc := range idx.ports[svc] {
			fmt.Fprintf(&b, "port %s:", pc.name)
			for _, fe := range pc.fes {
				fmt.Fprintf(&b, " %s/%v", fe.key, fe.nodePort)
			}
			b.WriteString("\n")
		}
	}
	for _, k := range slices.SortedFunc(maps.Keys(idx.keys), Key.Compare) {
		fmt.Fprintf(&b, "key %s:", k)
		for _, c := range idx.keys[k] {
			fmt.Fprintf(&b, " %s/%v", c.name, c.nodePort)
		}
		b.WriteString("\n")
	}
	for _, a := range slices.SortedFunc(maps.Keys(idx.addrs), netip.Addr.Compare) {
		fmt.Fprintf(&b, "addr %s %d\n", a, idx.addrs[a])
	}
	return b.String()
}

// modelGen makes random Services from small pools, so that Services share
// addresses, contest keys (also NodePort keys, through ExternalIPs that are
// node addresses) and are dual-stack.
type modelGen struct{ rng *rand.Rand }

var (
	genServices   = []string{"a/one", "a/two", "b/one", "b/three", "c/x", "c/y"}
	genClusterIPs = []string{"10.96.0.1", "10.96.0.2", "10.96.0.3", "10.96.0.4", "fd00:96::1", "fd00:96::2"}
	genExtraIPs   = []string{"203.0.113.1", "203.0.113.2", "192.168.1.10", "10.96.0.1", "fd00:96::1", "2001:db8::7"}
	genEndpoints  = []string{"10.244.0.1:8080", "10.244.0.2:8080", "10.244.0.3:8080", "10.244.0.4:8080", "[fd00:244::1]:8080", "[fd00:244::2]:8080"}
)

func (g *modelGen) pick() dataplane.ServiceName {
	return spn(genServices[g.rng.IntN(len(genServices))], "", "").ServiceName
}

func (g *modelGen) services() []dataplane.ServiceName {
	var out []dataplane.ServiceName
	for _, s := range genServices {
		out = append(out, spn(s, "", "").ServiceName)
	}
	return out
}

func (g *modelGen) some(pool []string, max int) []netip.Addr {
	var out []netip.Addr
	for range g.rng.IntN(max + 1) {
		a := addr(pool[g.rng.IntN(len(pool))])
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

func (g *modelGen) port(s dataplane.ServiceName) *dataplane.ServicePort {
	protos := []dataplane.Protocol{dataplane.TCP, dataplane.TCP, dataplane.UDP}
	sp := &dataplane.ServicePort{
		Name:            dataplane.ServicePortName{ServiceName: s, Port: []string{"", "http", "dns"}[g.rng.IntN(3)], Protocol: protos[g.rng.IntN(len(protos))]},
		Port:            []uint16{80, 443, 30080}[g.rng.IntN(3)],
		NodePort:        []uint16{0, 0, 30080, 30081}[g.rng.IntN(4)],
		ClusterIPs:      g.some(genClusterIPs, 2),
		ExternalIPs:     g.some(genExtraIPs, 2),
		LoadBalancerIPs: g.some(genExtraIPs[:2], 1),
		Scheduler:       []string{"", "", "lc"}[g.rng.IntN(3)],
	}
	if g.rng.IntN(4) == 0 {
		sp.SessionAffinityTimeout = 3 * time.Hour
	}
	return sp
}

func (g *modelGen) ports(s dataplane.ServiceName) []*dataplane.ServicePort {
	var out []*dataplane.ServicePort
	for range 1 + g.rng.IntN(2) {
		out = append(out, g.port(s))
	}
	return out
}

func (g *modelGen) endpoints() []dataplane.Endpoint {
	var out []dataplane.Endpoint
	for _, ap := range genEndpoints {
		switch g.rng.IntN(4) {
		case 0:
			out = append(out, ready(ap))
		case 1:
			out = append(out, terminating(ap, g.rng.IntN(2) == 0))
		}
	}
	return out
}

// replace makes sps (with random endpoints) the ports of Service s.
func (g *modelGen) replace(st *dataplane.State, s dataplane.ServiceName, sps ...*dataplane.ServicePort) {
	for name := range st.Services {
		if name.ServiceName == s {
			remove(st, name)
		}
	}
	for _, sp := range sps {
		put(st, sp, g.endpoints()...)
	}
}

// The address of a key a loser takes over was removed behind switchyard's
// back: the partial sync binds it again before adopting the virtual server
// (else it would not be switchyard's, ownership rule 2).
func TestPartialSyncRebindsAddressOfKeyTakenOver(t *testing.T) {
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
	if err := e.l.DeleteAddress(addr("203.0.113.9")); err != nil {
		t.Fatal(err)
	}
	e.resetCalls()
	remove(st, a.Name)
	e.sync(p, st, changed(a.Name))
	e.expectMutations(
		"DeleteVirtualServer 10.96.0.80:80/TCP",
		"AddRealServer 203.0.113.9:80/TCP 10.244.1.2:80 weight=1",
		"DeleteRealServer 203.0.113.9:80/TCP 10.244.1.1:80",
		"AddAddress 203.0.113.9",
		"DeleteAddress 10.96.0.80")
}

// On a node without IPv6, a dual-stack Service's IPv6 address is never
// bound; its removal in a partial sync does not try to unbind it.
func TestPartialSyncRemovesOnlyBoundAddresses(t *testing.T) {
	e := newEnv(t)
	e.l.NoIPv6 = true
	p := e.proxier(Config{})
	st := dataplane.NewState()
	ds := svc("default/ds", "", dataplane.TCP, 80, "10.96.0.70", "fd00:96::70")
	put(st, ds, ready("10.244.1.5:80"), ready("[fd00:244::5]:80"))
	e.sync(p, st, full)
	e.resetCalls()
	remove(st, ds.Name)
	e.sync(p, st, changed(ds.Name))
	e.expectMutations(
		"DeleteVirtualServer 10.96.0.70:80/TCP",
		"DeleteAddress 10.96.0.70")
}

// A sync interrupted after recording NodePort keys in the state file (and
// before creating them) leaves the file ahead of what the Proxier holds:
// the next sync writes it even if it changes nothing itself, so no key
// switchyard never created stays listed as its own.
func TestInterruptedSyncDoesNotLeaveKeysInStateFile(t *testing.T) {
	e := newEnv(t)
	p := e.proxier(Config{})
	st := webState()
	e.sync(p, st, full)
	np2 := svc("default/np2", "", dataplane.TCP, 80, "10.96.0.21")
	np2.NodePort = 30081
	put(st, np2, ready("10.244.1.6:8080"))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := p.Sync(ctx, st, changed(np2.Name)); !errors.Is(err, context.Canceled) {
		t.Fatalf("Sync error = %v, want context.Canceled", err)
	}
	if !strings.Contains(e.stateFile(), "192.168.1.10:30081/TCP") {
		t.Fatalf("NodePort keys not recorded before creation:\n%s", e.stateFile())
	}
	remove(st, np2.Name)
	e.sync(p, st, full)
	if s := e.stateFile(); strings.Contains(s, "30081") {
		t.Errorf("state file lists virtual servers never created:\n%s", s)
	}
}
