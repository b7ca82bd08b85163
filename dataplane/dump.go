package dataplane

import (
	"fmt"
	"strings"
)

// Dump renders the State one line per Service port followed by one indented
// line per endpoint, in deterministic order. Tests compare it with literal
// text and yardctl prints it, so a bug report's output can become a test.
func (s *State) Dump() string {
	var b strings.Builder
	if s.NodeZone != "" {
		fmt.Fprintf(&b, "zone %s\n", s.NodeZone)
	}
	if len(s.NodeIPs) > 0 {
		fmt.Fprintf(&b, "nodeIPs %v\n", s.NodeIPs)
	}
	for _, name := range s.SortedServicePorts() {
		sp := s.Services[name]
		fmt.Fprintf(&b, "%s port=%d", name, sp.Port)
		if sp.NodePort != 0 {
			fmt.Fprintf(&b, " nodePort=%d", sp.NodePort)
		}
		fmt.Fprintf(&b, " clusterIPs=%v", sp.ClusterIPs)
		if len(sp.ExternalIPs) > 0 {
			fmt.Fprintf(&b, " externalIPs=%v", sp.ExternalIPs)
		}
		if len(sp.LoadBalancerIPs) > 0 {
			fmt.Fprintf(&b, " lbIPs=%v", sp.LoadBalancerIPs)
		}
		if sp.Scheduler != "" {
			fmt.Fprintf(&b, " scheduler=%s", sp.Scheduler)
		}
		if sp.SessionAffinityTimeout > 0 {
			fmt.Fprintf(&b, " affinity=%v", sp.SessionAffinityTimeout)
		}
		if sp.ExternalPolicyLocal {
			b.WriteString(" eTP=Local")
		}
		if sp.InternalPolicyLocal {
			b.WriteString(" iTP=Local")
		}
		if sp.HealthCheckNodePort != 0 {
			fmt.Fprintf(&b, " hcNodePort=%d", sp.HealthCheckNodePort)
		}
		if len(sp.LoadBalancerSourceRanges) > 0 {
			fmt.Fprintf(&b, " sourceRanges=%v", sp.LoadBalancerSourceRanges)
		}
		if r := sp.Rebalance; r != nil {
			fmt.Fprintf(&b, " rebalance=tolerance:%g,maxResets:%g/s,minAge:%v", r.Tolerance, r.MaxResetsPerS, r.MinAge)
			if r.DryRun {
				b.WriteString(",dryRun")
			}
		}
		if sp.MaxConnectionsPerBackend > 0 {
			fmt.Fprintf(&b, " maxConnsPerBackend=%d", sp.MaxConnectionsPerBackend)
		}
		b.WriteByte('\n')
		for _, e := range s.Endpoints[name] {
			fmt.Fprintf(&b, "  %s%s", e.Addr, conditions(e))
			if e.NodeName != "" {
				fmt.Fprintf(&b, " node=%s", e.NodeName)
			}
			if e.Zone != "" {
				fmt.Fprintf(&b, " zone=%s", e.Zone)
			}
			if len(e.ZoneHints) > 0 {
				fmt.Fprintf(&b, " hints=%s", strings.Join(e.ZoneHints, ","))
			}
			if len(e.NodeHints) > 0 {
				fmt.Fprintf(&b, " nodeHints=%s", strings.Join(e.NodeHints, ","))
			}
			if w, ok := s.Weights[name][e.Addr]; ok {
				fmt.Fprintf(&b, " weight=%d", w)
			}
			b.WriteByte('\n')
		}
	}
	return b.String()
}

func conditions(e Endpoint) string {
	var c []string
	if e.Ready {
		c = append(c, "ready")
	}
	if e.Serving && !e.Ready {
		c = append(c, "serving")
	}
	if e.Terminating {
		c = append(c, "terminating")
	}
	if len(c) == 0 {
		return " notready"
	}
	return " " + strings.Join(c, ",")
}
