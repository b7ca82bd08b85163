package main

import (
	"strings"
	"testing"
)

const sample = `goos: linux
BenchmarkSocketLB/r1/connect/direct-2         	    3333	    146908 ns/op	      100 conns/s
BenchmarkSocketLB/r1/connect/socketlb-2       	    2523	    140492 ns/op	       99 conns/s
BenchmarkSocketLB/r2/connect/socketlb-2       	    2384	    141206 ns/op	      210 conns/s
BenchmarkSocketLB/r2/connect/direct-2         	    2673	    141007 ns/op	      200 conns/s
BenchmarkSocketLB/r3/connect/direct-2         	    2673	    141007 ns/op	      300 conns/s
BenchmarkSocketLB/r3/connect/socketlb-2       	    2384	    141206 ns/op	      270 conns/s
BenchmarkSocketLB/r1/rr/direct-2              	    6823	    50000 ns/op
    bench_test.go:1: Benchmark output that is a log line
BenchmarkSocketLB/r1/mixed-2   	       1	2000000000 ns/op	      1000 direct-req/s	      1010 direct2-req/s	       990 socketlb-req/s
BenchmarkSocketLB/r2/mixed-2   	       1	2000000000 ns/op	      2000 direct-req/s	      2000 direct2-req/s	      2100 socketlb-req/s
PASS
`

func TestSummary(t *testing.T) {
	res, err := parse(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(res.metrics, ","); got != "SocketLB/connect,SocketLB/rr,SocketLB/mixed" {
		t.Fatalf("metrics %s", got)
	}
	lb := res.byKey[[2]string{"SocketLB/connect", "socketlb"}]
	if len(lb) != 3 || lb[1].round != "r2" || lb[1].value != 210 || lb[1].unit != "conns/s" {
		t.Fatalf("socketlb results %+v", lb)
	}
	if rr := res.byKey[[2]string{"SocketLB/rr", "direct"}]; len(rr) != 1 || rr[0].value != 20000 || rr[0].unit != "ops/s" {
		t.Fatalf("rr results %+v", rr)
	}
	if m := res.byKey[[2]string{"SocketLB/mixed", "socketlb"}]; len(m) != 2 || m[1].value != 2100 || m[1].unit != "req/s" || m[1].round != "r2" {
		t.Fatalf("mixed results %+v", m)
	}
	// Medians 200 vs 210: 1.05; per-round ratios 0.99, 1.05, 0.9: 0.99.
	var out strings.Builder
	report(&out, res, "direct", "socketlb", "direct2", 0.98)
	for _, want := range []string{"1.050", "0.990", "SocketLB/connect         socketlb         0.990  met", "SocketLB/mixed           socketlb         1.020  met      (control direct2: 1.005)"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
}
