package socklbbench

import (
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"
	"time"
)

var (
	rounds   = flag.Int("socklb.rounds", 8, "rounds of BenchmarkSocketLB: every metric once per round")
	duration = flag.Duration("socklb.duration", 3*time.Second, "time each metric runs per round, shared by the paths")
	slice    = flag.Duration("socklb.slice", 10*time.Millisecond, "time one path runs before the next takes over")
)

// parallelism is the goroutines per GOMAXPROCS of the -par metrics.
const parallelism = 4

// BenchmarkSocketLB measures connect rate and request/reply throughput on
// the paths (doc.go) over one topology, in -socklb.rounds rounds of
// sub-benchmarks r<round>/<metric>. Each reports one rate per path
// ("direct-conns/s", ...): ops done on the path divided by the time they
// took. The paths take turns within each sub-benchmark, in a random order
// every cycle, so a slow moment of a busy 2-core machine hits them alike
// and no path always runs after the same other one:
//
//   - connect, connect-par, rr-par run the paths in slices of
//     -socklb.slice, one path after the other, for -socklb.duration in
//     all.
//   - rr sends its requests to the paths in turn, one request each, on
//     one connection per path, timing each request; the connections are
//     replaced every slice. (With slices of whole paths, two identical
//     paths came out up to 18% apart in one round: where the scheduler
//     puts client and server matters more to rr than the path.)
//
// Run it with -benchtime 1x; cmd/summary reduces the rounds to medians
// and ratios to direct.
func BenchmarkSocketLB(b *testing.B) {
	topo := newTopology(b)
	topo.check(b)
	par := parallelism * runtime.GOMAXPROCS(0)
	metrics := []struct {
		name, unit string
		measure    func(*testing.B, []*path) (ops []int64, busy []time.Duration)
	}{
		{"connect", "conns/s", func(b *testing.B, ps []*path) ([]int64, []time.Duration) {
			return measure(b, ps, connectWorkload(ps, 1))
		}},
		{"connect-par", "conns/s", func(b *testing.B, ps []*path) ([]int64, []time.Duration) {
			return measure(b, ps, connectWorkload(ps, par))
		}},
		{"rr", "req/s", measureRRInterleaved},
		{"rr-par", "req/s", func(b *testing.B, ps []*path) ([]int64, []time.Duration) {
			return measure(b, ps, rrWorkload(b, ps, par))
		}},
	}
	for r := range *rounds {
		for _, m := range metrics {
			b.Run(fmt.Sprintf("r%d/%s", r+1, m.name), func(b *testing.B) {
				ops, busy := m.measure(b, topo.paths)
				for i, p := range topo.paths {
					b.ReportMetric(float64(ops[i])/busy[i].Seconds(), p.name+"-"+m.unit)
				}
			})
		}
	}
}

// measureRRInterleaved is rr: for -duration, every slice dials one new
// connection per path (untimed) and sends requests on them in turn, in a
// random order every cycle, timing each, until the slice is over.
func measureRRInterleaved(b *testing.B, paths []*path) (ops []int64, busy []time.Duration) {
	ops = make([]int64, len(paths))
	busy = make([]time.Duration, len(paths))
	conns := make([]conn, len(paths))
	order := make([]int, len(paths))
	for i := range conns {
		conns[i].fd = -1
		order[i] = i
	}
	b.Cleanup(func() { closeAll(conns) })
	var x exchanger
	b.ResetTimer()
	start := time.Now()
	for sl := uint64(0); sl == 0 || time.Since(start) < *duration; sl++ {
		for i, p := range paths {
			if err := p.enter(); err != nil {
				b.Fatal(err)
			}
			cs, err := p.dial(sl, 1)
			if err != nil {
				b.Fatal(err)
			}
			conns[i] = cs[0]
		}
		deadline := time.Now().Add(*slice)
		for n := uint64(0); time.Now().Before(deadline); {
			rand.Shuffle(len(order), func(a, b int) { order[a], order[b] = order[b], order[a] })
			for _, i := range order {
				t0 := time.Now()
				if _, err := x.exchange(conns[i].fd, sl<<32|n, 0, conns[i].id, paths[i].nBackends); err != nil {
					b.Fatalf("%s: %v", paths[i].name, err)
				}
				busy[i] += time.Since(t0)
				ops[i]++
				n++
			}
		}
		closeAll(conns)
		for i := range conns {
			conns[i].fd = -1
		}
	}
	b.StopTimer()
	return ops, busy
}

// workload is one metric's work on a path: prepare (untimed, with the
// process in the path's cgroup) before each slice, run until the deadline
// (timed; it returns the ops done), finish (untimed) after the slice.
type workload struct {
	prepare func(i int, p *path) error
	run     func(i int, p *path, deadline time.Time) (int64, error)
	finish  func(i int, p *path)
}

// measure runs w on the paths in turn, one slice each, until -duration is
// over and every path had as many slices; the order is random every cycle.
// It returns each path's ops and the time its slices took.
func measure(b *testing.B, paths []*path, w workload) (ops []int64, busy []time.Duration) {
	ops = make([]int64, len(paths))
	busy = make([]time.Duration, len(paths))
	b.ResetTimer()
	start := time.Now()
	for cycle := 0; cycle == 0 || time.Since(start) < *duration; cycle++ {
		for _, i := range rand.Perm(len(paths)) {
			p := paths[i]
			if err := p.enter(); err != nil {
				b.Fatal(err)
			}
			if w.prepare != nil {
				if err := w.prepare(i, p); err != nil {
					b.Fatal(err)
				}
			}
			t0 := time.Now()
			n, err := w.run(i, p, t0.Add(*slice))
			busy[i] += time.Since(t0)
			ops[i] += n
			if w.finish != nil {
				w.finish(i, p)
			}
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StopTimer()
	return ops, busy
}

// connectWorkload runs connect ops from par goroutines at once. The
// sequence numbers (which pick direct's backend) go on across slices.
func connectWorkload(paths []*path, par int) workload {
	seqs := make([][]uint64, len(paths))
	for i := range seqs {
		seqs[i] = make([]uint64, par)
		for g := range par {
			seqs[i][g] = uint64(g) // goroutines start on different backends
		}
	}
	return workload{run: func(i int, p *path, deadline time.Time) (int64, error) {
		return parallel(par, func(g int) (int64, error) {
			var x exchanger
			var n int64
			err := p.ns.Do(func() error {
				for time.Now().Before(deadline) {
					if _, err := p.connectOnce(&x, seqs[i][g]); err != nil {
						return err
					}
					seqs[i][g] += uint64(par)
					n++
				}
				return nil
			})
			return n, err
		})
	}}
}

// rrWorkload runs request/reply on par persistent connections at once,
// one goroutine each. Every slice gets new connections (dialed before
// it, closed after it, untimed): TCP state a connection settles in, such
// as delayed-ACK mode, then averages out instead of favoring one path.
// For direct they rotate over the backends. tb.Cleanup closes what a
// failure leaves open.
func rrWorkload(tb testing.TB, paths []*path, par int) workload {
	conns := make([][]conn, len(paths))
	dialed := make([]uint64, len(paths))
	tb.Cleanup(func() {
		for _, cs := range conns {
			closeAll(cs)
		}
	})
	seq := uint64(0)
	return workload{
		prepare: func(i int, p *path) error {
			var err error
			conns[i], err = p.dial(dialed[i], par)
			dialed[i] += uint64(par)
			return err
		},
		run: func(i int, p *path, deadline time.Time) (int64, error) {
			seq++
			return parallel(par, func(g int) (int64, error) {
				c := conns[i][g]
				var x exchanger
				var n int64
				for time.Now().Before(deadline) {
					if _, err := x.exchange(c.fd, seq<<32|uint64(n), 0, c.id, p.nBackends); err != nil {
						return n, fmt.Errorf("%s: %w", p.name, err)
					}
					n++
				}
				return n, nil
			})
		},
		finish: func(i int, p *path) {
			closeAll(conns[i])
			conns[i] = nil
		},
	}
}

// parallel runs fn(0..par-1), on the calling goroutine when par is 1,
// and sums the ops.
func parallel(par int, fn func(g int) (int64, error)) (int64, error) {
	if par == 1 {
		return fn(0)
	}
	ns := make([]int64, par)
	errs := make([]error, par)
	var wg sync.WaitGroup
	for g := range par {
		wg.Go(func() { ns[g], errs[g] = fn(g) })
	}
	wg.Wait()
	var total int64
	for _, n := range ns {
		total += n
	}
	return total, errors.Join(errs...)
}
