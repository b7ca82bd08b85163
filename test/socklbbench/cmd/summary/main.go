// Command summary reads `go test -bench` output of BenchmarkSocketLB on
// stdin and prints, per metric and path, the median over rounds of the
// benchmark's rate (conns/s, req/s; ops/s from ns/op otherwise), its
// spread, and two ratios to the baseline path: of the medians, and the
// median of the per-round ratios (paths of one round ran interleaved, so
// the paired ratio cancels slow drifts of a noisy machine). A goal line
// per metric compares the goal path's paired ratio with the goal and
// shows the A/A control's ratio next to it: how far two identical paths
// drift apart on this machine.
//
// Benchmark names are Benchmark<Name>/r<round>/<metric>/<path>[-procs]; a
// name without a round component counts each line as its own round.
//
//	go test -run '^$' -bench SocketLB ./test/socklbbench/ | tee out.txt
//	go run ./test/socklbbench/cmd/summary < out.txt
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

func main() {
	base := flag.String("base", "direct", "baseline path the ratios are relative to")
	goalPath := flag.String("goal-path", "socketlb,socketlb-nocount", "paths the goal applies to, comma-separated")
	goal := flag.Float64("goal", 0.98, "goal: median ratio of goal-path to base at least this")
	control := flag.String("control", "direct2", "A/A control path (the baseline measured twice): its ratio shows the noise")
	flag.Parse()
	res, err := parse(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "summary:", err)
		os.Exit(1)
	}
	if len(res.metrics) == 0 {
		fmt.Fprintln(os.Stderr, "summary: no benchmark results on stdin")
		os.Exit(1)
	}
	report(os.Stdout, res, *base, *goalPath, *control, *goal)
}

// result is one benchmark line.
type result struct {
	round string
	value float64 // a rate: higher is better
	unit  string
}

type results struct {
	metrics []string // in order of appearance
	paths   map[string][]string
	byKey   map[[2]string][]result // {metric, path}
}

var (
	procsSuffix = regexp.MustCompile(`-\d+$`)
	roundElem   = regexp.MustCompile(`^r\d+$`)
	dupSuffix   = regexp.MustCompile(`#\d+$`)
)

func parse(r io.Reader) (*results, error) {
	res := &results{paths: map[string][]string{}, byKey: map[[2]string][]result{}}
	sc := bufio.NewScanner(r)
	line := 0
	for sc.Scan() {
		line++
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		if _, err := strconv.Atoi(f[1]); err != nil {
			continue // a log line that happens to start with Benchmark
		}
		name := procsSuffix.ReplaceAllString(f[0], "")
		elems := strings.Split(name, "/")
		var round string
		var rest []string
		for _, e := range elems[1:] {
			e = dupSuffix.ReplaceAllString(e, "")
			if roundElem.MatchString(e) {
				round = e
				continue
			}
			rest = append(rest, e)
		}
		if len(rest) == 0 {
			rest = []string{"all"}
		}
		if round == "" {
			round = fmt.Sprintf("line%d", line)
		}
		for _, r := range rates(f[2:], rest) {
			key := [2]string{strings.Join(append([]string{strings.TrimPrefix(elems[0], "Benchmark")}, r.metric...), "/"), r.path}
			if _, ok := res.byKey[key]; !ok {
				if _, ok := res.paths[key[0]]; !ok {
					res.metrics = append(res.metrics, key[0])
				}
				res.paths[key[0]] = append(res.paths[key[0]], key[1])
			}
			res.byKey[key] = append(res.byKey[key], result{round: round, value: r.value, unit: r.unit})
		}
	}
	return res, sc.Err()
}

type rateOf struct {
	metric []string
	path   string
	value  float64
	unit   string
}

// rates reads the "value unit" pairs of a benchmark named rest (its
// elements after the top level, round removed). Units "<path>-<unit>"
// (one line measuring every path) give one rate per path; otherwise the
// last name element is the path and its rate the first custom unit, else
// ops/s from ns/op.
func rates(pairs []string, rest []string) []rateOf {
	var out []rateOf
	var first *rateOf
	nsPerOp := 0.0
	for i := 0; i+1 < len(pairs); i += 2 {
		v, err := strconv.ParseFloat(pairs[i], 64)
		if err != nil {
			continue
		}
		switch unit := pairs[i+1]; unit {
		case "ns/op":
			nsPerOp = v
		case "B/op", "allocs/op", "MB/s":
		default:
			// "<path>-<unit>": paths may hold dashes, units do not.
			if i := strings.LastIndexByte(unit, '-'); i > 0 {
				out = append(out, rateOf{metric: rest, path: unit[:i], value: v, unit: unit[i+1:]})
			} else if first == nil {
				first = &rateOf{metric: rest[:len(rest)-1], path: rest[len(rest)-1], value: v, unit: unit}
			}
		}
	}
	switch {
	case len(out) > 0:
		return out
	case first != nil:
		return []rateOf{*first}
	case nsPerOp > 0:
		return []rateOf{{metric: rest[:len(rest)-1], path: rest[len(rest)-1], value: 1e9 / nsPerOp, unit: "ops/s"}}
	}
	return nil
}

func median(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func values(rs []result) []float64 {
	out := make([]float64, len(rs))
	for i, r := range rs {
		out[i] = r.value
	}
	return out
}

// pairedRatios are path/base per round both ran in.
func pairedRatios(path, base []result) []float64 {
	byRound := map[string]float64{}
	for _, r := range base {
		byRound[r.round] = r.value
	}
	var out []float64
	for _, r := range path {
		if b, ok := byRound[r.round]; ok && b > 0 {
			out = append(out, r.value/b)
		}
	}
	return out
}

func report(w io.Writer, res *results, base, goalPath, control string, goal float64) {
	fmt.Fprintf(w, "\n%-24s %-16s %6s %10s %-8s %14s %9s %9s\n", "metric", "path", "rounds", "median", "unit", "min..max", "/"+base, "paired")
	var verdicts []string
	for _, m := range res.metrics {
		baseRes := res.byKey[[2]string{m, base}]
		baseMed := median(values(baseRes))
		paths := slices.Clone(res.paths[m])
		// The baseline first, the rest as they appeared.
		slices.SortStableFunc(paths, func(a, b string) int {
			switch {
			case a == base && b != base:
				return -1
			case b == base && a != base:
				return 1
			}
			return 0
		})
		for _, p := range paths {
			rs := res.byKey[[2]string{m, p}]
			vs := values(rs)
			med := median(vs)
			ratio, paired := "-", "-"
			if baseMed > 0 {
				ratio = fmt.Sprintf("%.3f", med/baseMed)
			}
			pr := pairedRatios(rs, baseRes)
			if len(pr) > 0 {
				paired = fmt.Sprintf("%.3f", median(pr))
			}
			fmt.Fprintf(w, "%-24s %-16s %6d %10.0f %-8s %14s %9s %9s\n", m, p, len(rs), med, rs[0].unit,
				fmt.Sprintf("%.0f..%.0f", slices.Min(vs), slices.Max(vs)), ratio, paired)
			if slices.Contains(strings.Split(goalPath, ","), p) && len(pr) > 0 {
				mark := "met"
				if median(pr) < goal {
					mark = "NOT met"
				}
				v := fmt.Sprintf("  %-24s %-16s %.3f  %-7s", m, p, median(pr), mark)
				if cr := pairedRatios(res.byKey[[2]string{m, control}], baseRes); len(cr) > 0 {
					v += fmt.Sprintf("  (control %s: %.3f)", control, median(cr))
				}
				verdicts = append(verdicts, v)
			}
		}
	}
	if len(verdicts) > 0 {
		fmt.Fprintf(w, "\ngoal: %s >= %.2f x %s (median of the per-round ratios)\n%s\n", goalPath, goal, base, strings.Join(verdicts, "\n"))
	}
}
