package metrics

import (
	"context"
	"errors"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

// waitFor receives from ch, failing the test after a bound (a hang, not a
// timing assertion).
func waitFor[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: nothing after 10s", what)
	}
	var zero T
	return zero
}

func TestRefresherReadsAtStartAndOnEachTick(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1000, 0))
	reads := make(chan int, 10)
	n := 0
	var cache TrafficCache
	r := NewRefresher(15*time.Second, clk, RefreshFunc{Name: "fake", Read: func(context.Context) error {
		n++
		cache.Store([]Traffic{{Frontend: "f", PacketsIn: uint64(n)}})
		reads <- n
		return nil
	}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()

	if got := waitFor(t, reads, "first read"); got != 1 {
		t.Fatalf("first read #%d", got)
	}
	for want := 2; want <= 3; want++ {
		// The ticker exists once Run waits on it; then one step, one read.
		for i := 0; !clk.HasWaiters(); i++ {
			if i > 10000 {
				t.Fatal("refresher never waits for its ticker")
			}
			time.Sleep(time.Millisecond)
		}
		select {
		case got := <-reads:
			t.Fatalf("read #%d before the interval passed", got)
		default:
		}
		clk.Step(15 * time.Second)
		if got := waitFor(t, reads, "read after a tick"); got != want {
			t.Fatalf("read #%d, want #%d", got, want)
		}
	}
	if got := cache.Load(); len(got) != 1 || got[0].PacketsIn != 3 {
		t.Errorf("cache: %+v", got)
	}
	cancel()
	waitFor(t, done, "Run to return after cancel")
}

func TestRefresherKeepsValuesOnError(t *testing.T) {
	var cache TrafficCache
	fail := false
	r := NewRefresher(0, nil, RefreshFunc{Name: "fake", Read: func(context.Context) error {
		if fail {
			return errors.New("netlink: no buffer space")
		}
		cache.Store([]Traffic{{Frontend: "f", BytesIn: 7}})
		return nil
	}})
	r.RefreshNow(context.Background())
	fail = true
	r.RefreshNow(context.Background())
	if got := cache.Load(); len(got) != 1 || got[0].BytesIn != 7 {
		t.Errorf("after a failed read: %+v, want the last values", got)
	}
}
