package iptables

import (
	"net/netip"
	"testing"

	"github.com/switchyard/switchyard/dataplane"
)

// bigState is smallState plus a Service with 70000 endpoints: a loop-back
// set past the 65536 default.
func bigState(t testing.TB) *dataplane.State {
	st := smallState(t)
	big := dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: "default", Name: "big"}, Protocol: dataplane.TCP}
	st.Services[big] = &dataplane.ServicePort{Name: big, Port: 80, ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.1.1")}}
	for i := range 70000 {
		st.Endpoints[big] = append(st.Endpoints[big], dataplane.Endpoint{Ready: true,
			Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(100 + i>>16), byte(i >> 8), byte(i)}), 8080)})
	}
	return st
}

// Desired and a no-op partial sync at 70000 endpoints (the part of a sync
// that does not depend on the kernel).
func BenchmarkDesired70k(b *testing.B) {
	st := bigState(b)
	for b.Loop() {
		Desired(st, testConfig())
	}
}

func BenchmarkPartialSync70k(b *testing.B) {
	k := newFakeKernel()
	p := k.proxier(b, testConfig())
	st := bigState(b)
	fullSync(b, p, st)
	for b.Loop() {
		partialSync(b, p, st)
	}
}
