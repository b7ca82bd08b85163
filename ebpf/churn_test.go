package ebpf

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/test/netnstest"
)

// TestChurnNeverExposesHalfWrittenService connects in a loop while the
// backend set flips between two overlapping sets: nothing else serves the
// VIP here, so one lookup seeing a torn service (a slot without backend,
// a count beyond the slots) fails a connect.
func TestChurnNeverExposesHalfWrittenService(t *testing.T) {
	e := newEnv(t)
	lb := e.newLB(t, "")
	st := dataplane.NewState()
	b := e.v4Backends()
	sp := service(st, "churn", dataplane.TCP, 80, []netip.Addr{clusterIP4}, b[:2])
	syncFull(t, lb, st)
	sets := [][]netip.Addr{b[:2], b[1:], {b[2]}, b}
	changed := dataplane.Changes{Services: map[dataplane.ServiceName]struct{}{sp.Name.ServiceName: {}}}

	done := make(chan error, 1)
	stop := make(chan struct{})
	var requests atomic.Int64
	go func() {
		defer close(done)
		for requests.Load() < 100000 {
			select {
			case <-stop:
				return
			default:
			}
			reply, err := netnstest.Request(e.client, "tcp", hostPort(clusterIP4, 80), "c", 3*time.Second)
			if err != nil {
				done <- err
				return
			}
			if id, _, _ := netnstest.ReplyID(reply); !slices.Contains(addrStrings(b), id) {
				done <- fmt.Errorf("reply %q", reply)
				return
			}
			requests.Add(1)
		}
	}()
	// Flip until there were 300 flips and the client has made 300
	// connects (bounded in flips and time).
	var syncErr error
	flips := 0
	deadline := time.Now().Add(30 * time.Second)
	for ; flips < 100000 && (flips < 300 || requests.Load() < 300) && time.Now().Before(deadline) && syncErr == nil; flips++ {
		i := flips
		var eps []dataplane.Endpoint
		for _, a := range sets[i%len(sets)] {
			eps = append(eps, dataplane.Endpoint{Addr: netip.AddrPortFrom(a, backendPort), Ready: true, Serving: true})
		}
		st.Endpoints[sp.Name] = eps
		syncErr = lb.Sync(t.Context(), st, changed)
	}
	close(stop)
	if err := <-done; err != nil {
		t.Fatalf("a connect failed during churn after %d requests: %v", requests.Load(), err)
	}
	if syncErr != nil {
		t.Fatal(syncErr)
	}
	if requests.Load() < 300 || flips < 300 {
		t.Fatalf("only %d connects during %d flips", requests.Load(), flips)
	}
	t.Logf("%d connects during %d endpoint flips, all answered", requests.Load(), flips)
}

// TestPartialSyncWritesOnlyTheChange: one endpoint added to one Service of
// 200 writes that Service's entries only.
func TestPartialSyncWritesOnlyTheChange(t *testing.T) {
	e := newEnv(t)
	lb := e.newLB(t, "")
	st := dataplane.NewState()
	b := e.v4Backends()
	for i := range 200 {
		service(st, fmt.Sprintf("s%d", i), dataplane.TCP, 80, []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i / 250), byte(1 + i%250)})}, b[:2])
	}
	syncFull(t, lb, st)
	if lb.lastWrites < 200*4 {
		t.Fatalf("first sync wrote %d entries, want at least a frontend, a service and two slots for each of 200", lb.lastWrites)
	}
	name := dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: "default", Name: "s7"}, Protocol: dataplane.TCP}
	st.Endpoints[name] = append(st.Endpoints[name], dataplane.Endpoint{Addr: netip.AddrPortFrom(b[2], backendPort), Ready: true, Serving: true})
	if err := lb.Sync(t.Context(), st, dataplane.Changes{Services: map[dataplane.ServiceName]struct{}{name.ServiceName: {}}}); err != nil {
		t.Fatal(err)
	}
	// The new address for sockops to count, the new backend, three
	// slots of the new generation, the service entry, two old slots
	// deleted.
	if lb.lastWrites != 8 {
		t.Errorf("one endpoint added: %d map writes, want 8", lb.lastWrites)
	}
	if err := lb.Sync(t.Context(), st, dataplane.Changes{}); err != nil {
		t.Fatal(err)
	}
	if lb.lastWrites != 0 {
		t.Errorf("no change: %d map writes", lb.lastWrites)
	}
	if got := e.ids(t, "tcp", "10.96.0.8:80", 40); len(got) != 3 {
		t.Errorf("s7 after the change reached %v, want three backends", got)
	}
}

func TestUnsupportedIsReported(t *testing.T) {
	if _, err := New(Config{CgroupPath: "/nonexistent/cgroup"}); !errors.Is(err, ErrUnsupported) {
		t.Errorf("New on a missing cgroup: %v, want ErrUnsupported", err)
	}
	// A failed attach leaves no pins behind it created.
	pin := filepath.Join(netnstest.NewBPFFS(t), "switchyard")
	if _, err := New(Config{CgroupPath: "/nonexistent/cgroup", PinPath: pin}); !errors.Is(err, ErrUnsupported) {
		t.Errorf("New on a missing cgroup: %v, want ErrUnsupported", err)
	}
	if entries, err := os.ReadDir(pin); err == nil && len(entries) > 0 {
		t.Errorf("pins left after a failed New: %v", entries)
	}
	if err := Probe(); err != nil {
		t.Errorf("Probe on this kernel: %v", err)
	}
}
