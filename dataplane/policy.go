package dataplane

// EndpointWeight is the share a dataplane gives one endpoint of a Service
// port. Weight 0 means "keep existing connections, send no new ones" (IPVS
// drain); endpoints absent from the result get no traffic at all.
type WeightedEndpoint struct {
	Endpoint
	Weight int
}

// ClusterEndpoints applies kube-proxy's endpoint selection for cluster
// traffic (KEP-1669): ready endpoints take new connections; when none is
// ready, serving+terminating endpoints do. Every other endpoint the slices
// still list (terminating, or not ready) is returned with weight 0 so that
// connection-tracking dataplanes can drain it gracefully.
func ClusterEndpoints(eps []Endpoint) []WeightedEndpoint {
	out := make([]WeightedEndpoint, 0, len(eps))
	anyReady := false
	for _, e := range eps {
		if e.Ready {
			anyReady = true
			break
		}
	}
	for _, e := range eps {
		w := 0
		switch {
		case anyReady && e.Ready:
			w = 1
		case !anyReady && e.Serving && e.Terminating:
			w = 1
		}
		out = append(out, WeightedEndpoint{Endpoint: e, Weight: w})
	}
	return out
}

// HasUsableEndpoints reports whether any endpoint would take new traffic.
func HasUsableEndpoints(eps []WeightedEndpoint) bool {
	for _, e := range eps {
		if e.Weight > 0 {
			return true
		}
	}
	return false
}
