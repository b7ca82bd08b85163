package ipvs

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/switchyard/switchyard/dataplane"
)

// env is a fake node: IPVS, links (eth0 with two addresses, lo), sysctls,
// a clock and a state directory shared by the Proxiers a test starts (a
// restart is a second Proxier on the same env).
type env struct {
	t     *testing.T
	h     *FakeHandle
	l     *FakeLinks
	s     *FakeSysctl
	clock *fakeClock
	dir   string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	l := NewFakeLinks("")
	l.SetHostAddresses("eth0", "192.168.1.10", "192.168.1.11", "fe80::1")
	return &env{t: t, h: NewFakeHandle(), l: l, s: NewFakeIPVSSysctl(), clock: newFakeClock(), dir: t.TempDir()}
}

func (e *env) proxier(cfg Config) *Proxier {
	e.t.Helper()
	if cfg.StateDir == "" {
		cfg.StateDir = e.dir
	}
	p, err := NewProxier(cfg, e.h, e.l, e.s, WithClock(e.clock))
	if err != nil {
		e.t.Fatal(err)
	}
	return p
}

func (e *env) sync(p *Proxier, st *dataplane.State, ch dataplane.Changes) {
	e.t.Helper()
	if err := p.Sync(context.Background(), st, ch); err != nil {
		e.t.Fatalf("Sync: %v", err)
	}
}

func (e *env) resetCalls() {
	e.h.ResetCalls()
	e.l.ResetCalls()
}

// stateFile returns the state file's content ("" when absent).
func (e *env) stateFile() string {
	b, err := os.ReadFile(filepath.Join(e.dir, StateFileName))
	if os.IsNotExist(err) {
		return ""
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return string(b)
}

// expectMutations compares the IPVS and link writes since the last reset.
func (e *env) expectMutations(want ...string) {
	e.t.Helper()
	got := append(e.h.Mutations(), e.l.Mutations()...)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		e.t.Errorf("mutations:\n--- got\n%s\n--- want\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// webState is a small cluster: a ClusterIP Service with two endpoints and
// a NodePort Service.
func webState() *dataplane.State {
	st := dataplane.NewState()
	put(st, svc("default/web", "", dataplane.TCP, 80, "10.96.0.10"), ready("10.244.1.5:8080"), ready("10.244.2.7:8080"))
	np := svc("default/np", "", dataplane.TCP, 80, "10.96.0.20")
	np.NodePort = 30080
	put(st, np, ready("10.244.1.6:8080"))
	return st
}
