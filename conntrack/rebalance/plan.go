// Package rebalance decides which long-lived connections to shed so that a
// Service's established connections even out across its backends after a
// scale-up: the planner (Compute) is a pure function from counts and
// candidate connections to a minimal set to shed; the Controller adds what
// a plan needs over time (settling after endpoint changes, reconnects in
// flight, a per-Service rate limit, dry runs). Measuring connections and
// closing the chosen ones belong to the callers (conntrack, sockops,
// sock_diag), so this package holds no kernel object.
package rebalance

import (
	"cmp"
	"maps"
	"math"
	"net/netip"
	"slices"
	"time"
)

// Conn is one established connection to a backend of the Service.
type Conn struct {
	// ID is opaque here: a socket cookie, a conntrack tuple.
	ID      string
	Backend netip.AddrPort
	// Age is the time since the connection was established.
	Age time.Duration
	// Idle is the time since its last packet; zero when unknown.
	Idle time.Duration
	// Closing: shed already and not gone yet (a conntrack flow marked
	// for reset that has not sent since). It is about to move: counted
	// as a reconnect in flight, never a candidate again.
	Closing bool
}

// Input is what the planner looks at for one Service port.
type Input struct {
	// Backends are the endpoints new connections go to.
	Backends []netip.AddrPort
	// Conns are the established connections. Connections to addresses
	// not in Backends (removed or terminating endpoints) are not counted
	// and never shed: draining them is the dataplane's business.
	Conns []Conn
	// Pending is how many shed connections have not reconnected yet; they
	// are expected on the least-loaded backends (steering), so the plan
	// counts them there instead of shedding again for them.
	Pending int
	// Tolerance: act when max/mean exceeds 1+Tolerance.
	Tolerance float64
	// MinAge: younger connections are never shed.
	MinAge time.Duration
}

// Plan is the planner's answer.
type Plan struct {
	// Before are the counts per backend with Pending placed; After the
	// expected counts once Shed has reconnected to the least loaded.
	Before, After map[netip.AddrPort]int
	// Ratio and RatioAfter are max/mean of Before and After (0 with no
	// connection).
	Ratio, RatioAfter float64
	// Shed are the connections to close, best candidates first, the
	// overloaded backends interleaved; Needed is how many the balance asks for (more than
	// len(Shed) when too few are old enough).
	Shed   []Conn
	Needed int
	// Reason says why nothing (or less than Needed) is shed:
	// "balanced", "single-backend", "no-connections", "min-age", or
	// "shed".
	Reason string
	// Measured are the connections per backend the plan was given (the
	// established ones not already shed), without Pending.
	Measured map[netip.AddrPort]int
	// Steer are the reconnects in flight and to come (Pending and Shed)
	// per backend, where the plan expects them: the weights new
	// connections should be spread by so they land there. nil when none
	// are expected (no steering: equal shares).
	Steer map[netip.AddrPort]int
}

// Compute plans the smallest set of connections to shed so that, once the
// shed clients reconnect to the least-loaded backends, max/mean is at most
// 1+Tolerance (or as close as whole connections allow). It sheds only from
// backends above the cap, exactly their excess, and prefers idle, then
// young connections: the least work lost. Connections younger than MinAge
// are not candidates.
func Compute(in Input) (p Plan) {
	backends := slices.Clone(in.Backends)
	slices.SortFunc(backends, netip.AddrPort.Compare)
	backends = slices.Compact(backends)
	p = Plan{Before: map[netip.AddrPort]int{}, After: map[netip.AddrPort]int{}}
	for _, b := range backends {
		p.Before[b] = 0
	}
	byBackend := map[netip.AddrPort][]Conn{}
	for _, c := range in.Conns {
		if _, ok := p.Before[c.Backend]; ok {
			p.Before[c.Backend]++
			byBackend[c.Backend] = append(byBackend[c.Backend], c)
		}
	}
	// Steer: what the plan adds to each backend beyond the connections
	// it keeps there (set on every return).
	active := maps.Clone(p.Before)
	p.Measured = active
	shedFrom := map[netip.AddrPort]int{}
	defer func() { p.Steer = arrivals(active, shedFrom, p.After) }()
	fill(p.Before, backends, in.Pending)
	p.Ratio = ratio(p.Before)
	for b, n := range p.Before {
		p.After[b] = n
	}
	total := 0
	for _, n := range p.Before {
		total += n
	}
	switch {
	case len(backends) < 2:
		p.Reason = "single-backend"
		return p
	case total == 0:
		p.Reason = "no-connections"
		return p
	case p.Ratio <= 1+in.Tolerance+1e-9:
		p.Reason, p.RatioAfter = "balanced", p.Ratio
		return p
	}
	mean := float64(total) / float64(len(backends))
	// The cap: the most a backend may keep. Whole connections: never
	// below ceil(mean), where perfect balance is the best there is.
	limit := max(int(math.Ceil(mean-1e-9)), int(math.Floor((1+in.Tolerance)*mean+1e-9)))
	shed := 0
	var chosen [][]Conn
	for _, b := range backends {
		excess := p.Before[b] - limit
		if excess <= 0 {
			continue
		}
		p.Needed += excess
		cands := candidates(byBackend[b], in.MinAge)
		take := min(excess, len(cands))
		chosen = append(chosen, cands[:take])
		p.After[b] -= take
		shedFrom[b] = take
		shed += take
	}
	// Interleave the backends, so a rate-limited prefix of the plan
	// still takes from every overloaded backend alike.
	for i := 0; len(p.Shed) < shed; i++ {
		for _, cs := range chosen {
			if i < len(cs) {
				p.Shed = append(p.Shed, cs[i])
			}
		}
	}
	fill(p.After, backends, shed)
	p.RatioAfter = ratio(p.After)
	p.Reason = "shed"
	if len(p.Shed) < p.Needed {
		p.Reason = "min-age"
	}
	return p
}

// arrivals are the connections the plan places on each backend (After)
// beyond those it keeps there (active minus shed): where steering should
// send new connections. nil when there are none.
func arrivals(active, shedFrom, after map[netip.AddrPort]int) map[netip.AddrPort]int {
	var out map[netip.AddrPort]int
	for b, n := range after {
		if d := n - (active[b] - shedFrom[b]); d > 0 {
			if out == nil {
				out = map[netip.AddrPort]int{}
			}
			out[b] = d
		}
	}
	return out
}

// candidates orders a backend's sheddable connections: idle ones first
// (longest idle first), then the youngest; those younger than minAge are
// left out.
func candidates(conns []Conn, minAge time.Duration) []Conn {
	var out []Conn
	for _, c := range conns {
		if c.Age >= minAge {
			out = append(out, c)
		}
	}
	slices.SortStableFunc(out, func(a, b Conn) int {
		if c := cmp.Compare(b.Idle, a.Idle); c != 0 {
			return c
		}
		if c := cmp.Compare(a.Age, b.Age); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	return out
}

// fill places n connections one by one on the least-loaded backend (ties:
// the lowest address), as steered reconnects land.
func fill(counts map[netip.AddrPort]int, backends []netip.AddrPort, n int) {
	for ; n > 0 && len(backends) > 0; n-- {
		least := backends[0]
		for _, b := range backends[1:] {
			if counts[b] < counts[least] {
				least = b
			}
		}
		counts[least]++
	}
}

// ratio is max/mean of counts (0 without connections).
func ratio(counts map[netip.AddrPort]int) float64 {
	total, most := 0, 0
	for _, n := range counts {
		total += n
		most = max(most, n)
	}
	if total == 0 || len(counts) == 0 {
		return 0
	}
	return float64(most) / (float64(total) / float64(len(counts)))
}
