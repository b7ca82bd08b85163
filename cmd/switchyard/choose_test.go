package main

import (
	"errors"
	"strings"
	"testing"
)

type fakeProbe struct {
	present  bool
	loadable bool
	loads    int
}

func (f *fakeProbe) Present() bool { return f.present }
func (f *fakeProbe) Load() error {
	f.loads++
	if !f.loadable {
		return errors.New("modprobe: FATAL: Module ip_vs not found")
	}
	f.present = true
	return nil
}

func TestChooseDataplane(t *testing.T) {
	for _, tc := range []struct {
		name      string
		requested string
		probe     fakeProbe
		want      string
		reason    string
		loads     int
	}{
		{"explicit ipvs", "ipvs", fakeProbe{}, "ipvs", "requested", 0},
		{"explicit nftables", "nftables", fakeProbe{present: true}, "nftables", "requested", 0},
		{"auto, loaded", "auto", fakeProbe{present: true}, "ipvs", "has IPVS loaded", 0},
		{"auto, loadable", "auto", fakeProbe{loadable: true}, "ipvs", "loaded the ip_vs module", 1},
		{"auto, absent", "auto", fakeProbe{}, "nftables", "Module ip_vs not found", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, reason := chooseDataplane(tc.requested, &tc.probe)
			if got != tc.want || !strings.Contains(reason, tc.reason) || tc.probe.loads != tc.loads {
				t.Fatalf("got %s (%s), %d loads; want %s (%s), %d loads", got, reason, tc.probe.loads, tc.want, tc.reason, tc.loads)
			}
		})
	}
}
