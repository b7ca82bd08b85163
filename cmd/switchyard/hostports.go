package main

import (
	"fmt"
	"sync/atomic"

	"github.com/vishvananda/netns"

	"github.com/switchyard/switchyard/conntrack"
	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/dataplane/source"
	"github.com/switchyard/switchyard/hostport"
	"github.com/switchyard/switchyard/sysctl"
)

// hostPorts is the hostport Proxier as a part of the agent's chain. The
// sync loop and the metrics exist only after the chain is built, so the
// Proxier's Notify and Report go through late-bound functions: the Syncer
// hands its trigger over (dataplane.Triggerable, through the Chain), run
// sets the report.
type hostPorts struct {
	*hostport.Proxier
	trigger atomic.Pointer[func()]
	report  atomic.Pointer[func(hostport.Problems)]
}

var (
	_ dataplane.Triggerable = (*hostPorts)(nil)
	_ source.PodHandler     = (*hostPorts)(nil)
)

func newHostPorts() (*hostPorts, error) {
	conn, err := hostport.NewConn(0)
	if err != nil {
		return nil, fmt.Errorf("hostport: %w", err)
	}
	ct, err := conntrack.NewNetlink(netns.None())
	if err != nil {
		return nil, fmt.Errorf("hostport: conntrack: %w", err)
	}
	h := &hostPorts{}
	p, err := hostport.NewProxier(hostport.Config{
		Conn:      conn,
		Conntrack: ct,
		Sysctl:    sysctl.New(),
		Notify: func() {
			if f := h.trigger.Load(); f != nil {
				(*f)()
			}
		},
		Report: func(pr hostport.Problems) {
			if f := h.report.Load(); f != nil {
				(*f)(pr)
			}
		},
	})
	if err != nil {
		return nil, err
	}
	h.Proxier = p
	return h, nil
}

func (h *hostPorts) SetTrigger(f func()) { h.trigger.Store(&f) }

// SetReport sets where hostPort problems go (the metrics).
func (h *hostPorts) SetReport(f func(hostport.Problems)) { h.report.Store(&f) }

// findPart returns the first part of dp (searching nested Chains) of type
// T.
func findPart[T dataplane.Dataplane](dp dataplane.Dataplane) (T, bool) {
	if d, ok := dp.(T); ok {
		return d, true
	}
	if c, ok := dp.(dataplane.Chain); ok {
		for _, part := range c {
			if d, ok := findPart[T](part); ok {
				return d, true
			}
		}
	}
	var zero T
	return zero, false
}

// hostPortProblemCounts turns a report into the metric's kinds.
func hostPortProblemCounts(p hostport.Problems) map[string]int {
	out := map[string]int{}
	if n := len(p.Conflicts); n > 0 {
		out["conflict"] = n
	}
	if n := len(p.Collisions); n > 0 {
		out["nodeport"] = n
	}
	for _, inv := range p.Invalid {
		out[inv.Reason]++
	}
	return out
}
