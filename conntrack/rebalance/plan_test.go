package rebalance

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

func be(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 244, 0, byte(i)}), 8080)
}

// conns makes n connections to backend i, ages 10s, 11s, ...
func conns(i, n int) []Conn {
	var out []Conn
	for k := range n {
		out = append(out, Conn{ID: fmt.Sprintf("b%d-%d", i, k), Backend: be(i), Age: time.Duration(10+k) * time.Second})
	}
	return out
}

func counts(p map[netip.AddrPort]int, n int) []int {
	var out []int
	for i := 1; i <= n; i++ {
		out = append(out, p[be(i)])
	}
	return out
}

func TestComputeScaleUpShedsTheMinimum(t *testing.T) {
	all := append(conns(1, 500), conns(2, 500)...)
	p := Compute(Input{Backends: []netip.AddrPort{be(1), be(2), be(3), be(4)}, Conns: all, Tolerance: 0.10})
	// mean 250, cap floor(275) = 275: 225 from each old backend, no more.
	if len(p.Shed) != 450 || p.Needed != 450 || p.Reason != "shed" {
		t.Fatalf("shed %d (needed %d, %s), want 450", len(p.Shed), p.Needed, p.Reason)
	}
	if got := fmt.Sprint(counts(p.After, 4)); got != "[275 275 225 225]" {
		t.Errorf("after %s", got)
	}
	if p.Ratio != 2 || p.RatioAfter > 1.1 {
		t.Errorf("ratio %.3f -> %.3f", p.Ratio, p.RatioAfter)
	}
	// Youngest first, and the two backends interleaved.
	if p.Shed[0].ID != "b1-0" || p.Shed[1].ID != "b2-0" || p.Shed[2].ID != "b1-1" {
		t.Errorf("order %s %s %s", p.Shed[0].ID, p.Shed[1].ID, p.Shed[2].ID)
	}
}

func TestComputeWithinToleranceShedsNothing(t *testing.T) {
	all := append(append(conns(1, 105), conns(2, 100)...), conns(3, 95)...)
	p := Compute(Input{Backends: []netip.AddrPort{be(1), be(2), be(3)}, Conns: all, Tolerance: 0.10})
	if len(p.Shed) != 0 || p.Reason != "balanced" {
		t.Errorf("shed %d (%s) at ratio %.3f", len(p.Shed), p.Reason, p.Ratio)
	}
	// Tighter tolerance: now 105 is over the cap of 100 (mean 100).
	p = Compute(Input{Backends: []netip.AddrPort{be(1), be(2), be(3)}, Conns: all, Tolerance: 0.01})
	if len(p.Shed) != 4 || fmt.Sprint(counts(p.After, 3)) != "[101 100 99]" {
		t.Errorf("tolerance 1%%: shed %d, after %v", len(p.Shed), counts(p.After, 3))
	}
}

func TestComputeSmallNumbersBalanceAsFarAsWholeConnectionsGo(t *testing.T) {
	// 3 connections, 2 backends: 2/1 is the best there is (ratio 1.33).
	p := Compute(Input{Backends: []netip.AddrPort{be(1), be(2)}, Conns: conns(1, 3), Tolerance: 0.10})
	if len(p.Shed) != 1 || fmt.Sprint(counts(p.After, 2)) != "[2 1]" {
		t.Errorf("shed %d, after %v", len(p.Shed), counts(p.After, 2))
	}
	p = Compute(Input{Backends: []netip.AddrPort{be(1), be(2)}, Conns: append(conns(1, 2), conns(2, 1)...), Tolerance: 0.10})
	if len(p.Shed) != 0 {
		t.Errorf("2/1 shed %d: flapping one connection back and forth", len(p.Shed))
	}
}

func TestComputePrefersIdleThenYoungAndRespectsMinAge(t *testing.T) {
	cs := []Conn{
		{ID: "young", Backend: be(1), Age: 2 * time.Second},
		{ID: "old-busy", Backend: be(1), Age: time.Hour},
		{ID: "mid", Backend: be(1), Age: 10 * time.Second},
		{ID: "old-idle", Backend: be(1), Age: time.Hour, Idle: time.Minute},
		{ID: "older", Backend: be(1), Age: 2 * time.Hour},
		{ID: "other", Backend: be(2), Age: time.Hour},
	}
	p := Compute(Input{Backends: []netip.AddrPort{be(1), be(2), be(3)}, Conns: cs, Tolerance: 0.10, MinAge: 5 * time.Second})
	// mean 2, cap 2: 3 to shed from be1; "young" is below the minimum age.
	var ids []string
	for _, c := range p.Shed {
		ids = append(ids, c.ID)
	}
	if fmt.Sprint(ids) != "[old-idle mid old-busy]" {
		t.Errorf("shed %v, want idle first, then youngest eligible", ids)
	}
	// Everything young: nothing eligible, and the plan says so.
	p = Compute(Input{Backends: []netip.AddrPort{be(1), be(2)}, Conns: conns(1, 4), Tolerance: 0.1, MinAge: time.Minute})
	if len(p.Shed) != 0 || p.Needed != 2 || p.Reason != "min-age" {
		t.Errorf("all young: shed %d needed %d reason %s", len(p.Shed), p.Needed, p.Reason)
	}
}

func TestComputePendingReconnectsAreNotShedTwice(t *testing.T) {
	// 40 shed a moment ago, not back yet: they will land on be3/be4.
	all := append(conns(1, 480), conns(2, 480)...)
	p := Compute(Input{Backends: []netip.AddrPort{be(1), be(2), be(3), be(4)}, Conns: all, Pending: 40, Tolerance: 0.10})
	if len(p.Shed) != 410 {
		t.Errorf("with 40 pending shed %d, want 410 (205 each: the minimum for 1000)", len(p.Shed))
	}
	p = Compute(Input{Backends: []netip.AddrPort{be(1), be(2), be(3), be(4)}, Conns: all, Tolerance: 0.10})
	if len(p.Shed) != 432 {
		t.Errorf("without pending shed %d, want 432 (960 connections)", len(p.Shed))
	}
}

func TestComputeIgnoresConnectionsToRemovedBackends(t *testing.T) {
	all := append(append(conns(1, 10), conns(2, 10)...), conns(9, 100)...)
	p := Compute(Input{Backends: []netip.AddrPort{be(1), be(2)}, Conns: all, Tolerance: 0.1})
	if len(p.Shed) != 0 || p.Before[be(9)] != 0 {
		t.Errorf("removed backend's connections counted or shed: %+v", p)
	}
	if p := Compute(Input{Backends: []netip.AddrPort{be(1)}, Conns: conns(1, 10)}); p.Reason != "single-backend" || len(p.Shed) != 0 {
		t.Errorf("single backend: %+v", p)
	}
}

func TestComputeSteersReconnectsWhereThePlanPutsThem(t *testing.T) {
	four := []netip.AddrPort{be(1), be(2), be(3), be(4)}
	p := Compute(Input{Backends: four, Conns: append(conns(1, 500), conns(2, 500)...), Tolerance: 0.10})
	// The 450 shed land on the two new backends, 225 each.
	if got := fmt.Sprint(counts(p.Steer, 4)); got != "[0 0 225 225]" {
		t.Errorf("steer %s, want [0 0 225 225]", got)
	}
	// Balanced and nothing in flight: no steering (equal shares).
	p = Compute(Input{Backends: four, Conns: append(append(conns(1, 10), conns(2, 10)...), append(conns(3, 10), conns(4, 10)...)...), Tolerance: 0.10})
	if p.Steer != nil {
		t.Errorf("balanced: steer %v, want none", p.Steer)
	}
	// Balanced but reconnects in flight: they are steered to the least
	// loaded, one at a time (here 4 to backend 3, then 1 each).
	p = Compute(Input{Backends: four[:3], Conns: append(append(conns(1, 10), conns(2, 10)...), conns(3, 6)...), Pending: 7, Tolerance: 0.10})
	if got := fmt.Sprint(counts(p.Steer, 3)); got != "[1 1 5]" || p.Reason != "balanced" {
		t.Errorf("pending: steer %s (%s), want [1 1 5]", got, p.Reason)
	}
	// Shedding limited by min age: only what is shed is steered.
	young := conns(1, 20)
	for i := range young[:15] {
		young[i].Age = 0
	}
	p = Compute(Input{Backends: four[:2], Conns: young, MinAge: time.Second, Tolerance: 0.10})
	if got := fmt.Sprint(counts(p.Steer, 2)); got != "[0 5]" || p.Reason != "min-age" {
		t.Errorf("min age: steer %s (%s), want [0 5]", got, p.Reason)
	}
}
