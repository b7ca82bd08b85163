package dataplane

import "net/netip"

// WeightedEndpoint is an endpoint with the share a dataplane gives it among
// a Service port's endpoints (CategorizeEndpoints chooses which ones).
type WeightedEndpoint struct {
	Endpoint
	Weight int
}

// MaxSteeringSlots bounds the sum of the weights WeightEndpoints returns:
// dataplanes that repeat an endpoint once per unit of weight (nftables'
// numgen map, the socket LB's slots) stay small.
const MaxSteeringSlots = 64

// WeightEndpoints gives each of eps (the endpoints a dataplane chose for a
// frontend) its share of new connections: 1 each unless the port has
// steering weights (State.Weights), then those weights (endpoints at 0
// dropped), reduced by their gcd and scaled to at most MaxSteeringSlots.
// Weights that leave no endpoint (none of eps is weighted) fall back to
// equal shares, so steering never blackholes a Service.
func WeightEndpoints(weights map[netip.AddrPort]int, eps []Endpoint) []WeightedEndpoint {
	out := make([]WeightedEndpoint, 0, len(eps))
	if len(weights) > 0 {
		for _, e := range eps {
			if w := weights[e.Addr]; w > 0 {
				out = append(out, WeightedEndpoint{Endpoint: e, Weight: w})
			}
		}
	}
	if len(out) == 0 {
		for _, e := range eps {
			out = append(out, WeightedEndpoint{Endpoint: e, Weight: 1})
		}
		return out
	}
	return reduceWeights(out)
}

// reduceWeights divides the weights by their gcd and, when their sum
// exceeds MaxSteeringSlots, scales them down (rounding, never below 1).
func reduceWeights(eps []WeightedEndpoint) []WeightedEndpoint {
	g := 0
	for _, e := range eps {
		g = gcd(g, e.Weight)
	}
	sum := 0
	for i := range eps {
		eps[i].Weight /= g
		sum += eps[i].Weight
	}
	if sum <= MaxSteeringSlots {
		return eps
	}
	for i := range eps {
		eps[i].Weight = max(1, (eps[i].Weight*MaxSteeringSlots+sum/2)/sum)
	}
	return eps
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
