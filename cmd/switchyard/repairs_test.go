package main

import (
	"context"
	"testing"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/ebpf"
)

type fakePart struct {
	name    string
	repairs uint64
}

func (f *fakePart) Name() string                                                    { return f.name }
func (f *fakePart) Sync(context.Context, *dataplane.State, dataplane.Changes) error { return nil }
func (f *fakePart) Cleanup(context.Context) error                                   { return nil }

type fakeRepairingPart struct{ fakePart }

func (f *fakeRepairingPart) Repairs() uint64 { return f.repairs }

func TestRepairSources(t *testing.T) {
	ipt := &fakeRepairingPart{fakePart{name: "iptables", repairs: 1}}
	ipvs := &fakeRepairingPart{fakePart{name: "ipvs", repairs: 3}}
	dp := dataplane.Chain{dataplane.Chain{ipt, ipvs}, &fakePart{name: "conntrack"}}
	srcs := repairSources(dp)
	if len(srcs) != 2 {
		t.Fatalf("%d sources, want the 2 parts that count repairs: %+v", len(srcs), srcs)
	}
	for i, want := range []struct {
		name string
		n    uint64
	}{{"iptables", 1}, {"ipvs", 3}} {
		if srcs[i].Dataplane != want.name || srcs[i].Repairs() != want.n {
			t.Errorf("source %d: %s %d, want %s %d", i, srcs[i].Dataplane, srcs[i].Repairs(), want.name, want.n)
		}
	}
}

// The socket load balancer counts its repairs too: it is found inside the
// agent's chain, under its name.
func TestRepairSourcesSocketLB(t *testing.T) {
	lb := ebpf.NewForCleanup(ebpf.Config{})
	dp := dataplane.Chain{&fakePart{name: "nftables"}, lb, &fakePart{name: "conntrack"}}
	srcs := repairSources(dp)
	if len(srcs) != 1 || srcs[0].Dataplane != "socketlb" || srcs[0].Repairs() != 0 {
		t.Errorf("sources %+v, want socketlb with 0 repairs", srcs)
	}
}
