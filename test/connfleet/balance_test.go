package connfleet

import (
	"testing"
	"time"
)

func TestMinimumResets(t *testing.T) {
	for _, tc := range []struct {
		counts []int
		tol    float64
		want   int
	}{
		{[]int{500, 500, 0, 0}, 0, 500},
		{[]int{500, 500, 0, 0}, 0.1, 450}, // each keeps 275
		{[]int{50, 50, 0, 0}, 0.1, 46},    // mean 25, keeps 27
		{[]int{30, 30, 0, 0}, 0.1, 28},    // mean 15, keeps 16
		{[]int{12, 12, 0, 0}, 0.1, 12},    // mean 6, keeps 6 (floor 6.6)
		{[]int{3, 2, 2}, 0, 0},            // keeps ceil(7/3) = 3
		{[]int{250, 250, 250, 250}, 0, 0},
		{nil, 0.1, 0},
	} {
		if got := MinimumResets(tc.counts, tc.tol); got != tc.want {
			t.Errorf("MinimumResets(%v, %v) = %d, want %d", tc.counts, tc.tol, got, tc.want)
		}
	}
}

func TestImbalance(t *testing.T) {
	for _, tc := range []struct {
		counts []int
		want   float64
	}{
		{[]int{500, 500, 0, 0}, 2},
		{[]int{250, 250, 250, 250}, 1},
		{[]int{275, 242, 242, 241}, 1.1},
		{[]int{0, 0}, 0},
	} {
		if got := Imbalance(tc.counts); got < tc.want-1e-9 || got > tc.want+1e-9 {
			t.Errorf("Imbalance(%v) = %v, want %v", tc.counts, got, tc.want)
		}
	}
	if !Balanced([]int{275, 242, 242, 241}, 0.1) || Balanced([]int{276, 242, 241, 241}, 0.1) || Balanced([]int{0, 0}, 0.1) {
		t.Error("Balanced: 275/242/242/241 is within 1.1, 276/242/241/241 is not, nothing is not balanced")
	}
}

func TestSettledAt(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	even, uneven := []int{5, 5}, []int{8, 2}
	for _, tc := range []struct {
		name    string
		samples []Sample
		want    time.Time
		ok      bool
	}{
		{"never", []Sample{{At: at(0), Counts: uneven}, {At: at(1), Counts: uneven}}, time.Time{}, false},
		{"from the second", []Sample{{At: at(0), Counts: uneven}, {At: at(1), Counts: even}, {At: at(2), Counts: even}}, at(1), true},
		{"balanced, then not, then again", []Sample{{At: at(0), Counts: even}, {At: at(1), Counts: uneven}, {At: at(2), Counts: even}}, at(2), true},
		{"reconnecting is not settled", []Sample{{At: at(0), Counts: even}, {At: at(1), Counts: even, Unconnected: 1}, {At: at(2), Counts: even}}, at(2), true},
		{"unbalanced at the end", []Sample{{At: at(0), Counts: even}, {At: at(1), Counts: uneven}}, time.Time{}, false},
	} {
		got, ok := SettledAt(tc.samples, 0.1)
		if ok != tc.ok || !got.Equal(tc.want) {
			t.Errorf("%s: SettledAt = %v %v, want %v %v", tc.name, got, ok, tc.want, tc.ok)
		}
	}
}
