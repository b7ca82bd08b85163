package dataplane

// WeightedEndpoint is an endpoint with the share a dataplane gives it among
// a Service port's endpoints (CategorizeEndpoints chooses which ones).
type WeightedEndpoint struct {
	Endpoint
	Weight int
}
