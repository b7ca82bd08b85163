package ipvs

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/dataplane"
)

// TestTimeouts: configured IPVS timeouts are set on the first sync (zero
// fields keep the kernel's), rounded to the kernel's whole seconds, not
// written again when the kernel has them, re-applied by a full sync after
// someone changed them, and a failure does not stop the sync.
func TestTimeouts(t *testing.T) {
	defaults := Timeouts{TCP: 900 * time.Second, TCPFin: 120 * time.Second, UDP: 300 * time.Second}
	t.Run("none configured: never read or written", func(t *testing.T) {
		e := newEnv(t)
		p := e.proxier(Config{})
		e.sync(p, webState(), dataplane.Changes{Full: true})
		for _, c := range e.h.Calls() {
			if strings.HasPrefix(c, "GetTimeouts") || strings.HasPrefix(c, "SetTimeouts") {
				t.Errorf("call %q without configured timeouts", c)
			}
		}
	})
	t.Run("set once, partial fields, whole seconds", func(t *testing.T) {
		e := newEnv(t)
		p := e.proxier(Config{Timeouts: Timeouts{TCP: 1800500 * time.Millisecond, UDP: 10 * time.Second}})
		e.sync(p, webState(), dataplane.Changes{Full: true})
		got, _ := e.h.Timeouts()
		if want := (Timeouts{TCP: 1800 * time.Second, TCPFin: defaults.TCPFin, UDP: 10 * time.Second}); got != want {
			t.Errorf("timeouts %+v, want %+v", got, want)
		}
		e.resetCalls()
		e.sync(p, webState(), dataplane.Changes{Full: true})
		e.expectMutations()

		// Changed behind the agent's back: the next full sync restores.
		if err := e.h.SetTimeouts(Timeouts{TCP: 60 * time.Second}); err != nil {
			t.Fatal(err)
		}
		e.sync(p, webState(), dataplane.Changes{Full: true})
		if got, _ := e.h.Timeouts(); got.TCP != 1800*time.Second {
			t.Errorf("after drift and a full sync: tcp %v, want 30m", got.TCP)
		}
	})
	t.Run("kernel refuses: logged, services still programmed", func(t *testing.T) {
		e := newEnv(t)
		e.h.Fail = func(op string, _ Key) error {
			if op == "SetTimeouts" {
				return errors.New("injected")
			}
			return nil
		}
		p := e.proxier(Config{Timeouts: Timeouts{TCP: time.Hour}})
		e.sync(p, webState(), dataplane.Changes{Full: true})
		if vss, _ := e.h.ListVirtualServers(); len(vss) == 0 {
			t.Error("no virtual servers after a refused timeout change")
		}
	})
	t.Run("negative rejected", func(t *testing.T) {
		if _, err := (Config{Timeouts: Timeouts{UDP: -time.Second}}).withDefaults(); err == nil {
			t.Error("negative timeout accepted")
		}
	})
}
