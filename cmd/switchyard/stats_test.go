package main

import (
	"context"
	"errors"
	"net/netip"
	"reflect"
	"testing"

	"github.com/switchyard/switchyard/agentapi"
	"github.com/switchyard/switchyard/conntrack"
	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/dataplane/metrics"
	"github.com/switchyard/switchyard/ebpf"
	"github.com/switchyard/switchyard/ipvs"
)

func TestIPVSTraffic(t *testing.T) {
	web := ipvs.Key{IP: netip.MustParseAddr("10.96.0.10"), Protocol: dataplane.TCP, Port: 80}
	foreign := ipvs.Key{IP: netip.MustParseAddr("10.99.0.1"), Protocol: dataplane.TCP, Port: 443}
	orphan := ipvs.Key{IP: netip.MustParseAddr("10.96.0.11"), Protocol: dataplane.UDP, Port: 53}
	rs := func(a string, st ipvs.Stats) ipvs.InspectedRS {
		return ipvs.InspectedRS{RealServer: ipvs.RealServer{Addr: netip.MustParseAddrPort(a)}, Stats: &st}
	}
	table := []ipvs.InspectedVS{
		{Key: web, Owned: true, Stats: &ipvs.Stats{PacketsIn: 10, PacketsOut: 8, BytesIn: 700, BytesOut: 900},
			RealServers: []ipvs.InspectedRS{rs("10.244.1.2:8080", ipvs.Stats{PacketsIn: 6, PacketsOut: 5, BytesIn: 400, BytesOut: 600})}},
		{Key: foreign, Stats: &ipvs.Stats{PacketsIn: 99}},
		{Key: orphan, Owned: true, Stats: &ipvs.Stats{PacketsIn: 1}},
		{FWMark: 7, Owned: true, Stats: &ipvs.Stats{PacketsIn: 5}},
	}
	snap := []ipvs.VirtualServer{{Key: web, Service: "demo/web:http/tcp"}}
	got := ipvsTraffic(table, snap)
	want := []metrics.Traffic{
		{Service: "demo/web:http/tcp", Frontend: "10.96.0.10:80/TCP", PacketsIn: 10, PacketsOut: 8, BytesIn: 700, BytesOut: 900},
		{Service: "demo/web:http/tcp", Frontend: "10.96.0.10:80/TCP", Backend: "10.244.1.2:8080", PacketsIn: 6, PacketsOut: 5, BytesIn: 400, BytesOut: 600},
		{Frontend: "10.96.0.11:53/UDP", PacketsIn: 1},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
}

func TestConntrackMetrics(t *testing.T) {
	st := dataplane.NewState()
	web := dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: "demo", Name: "web"}, Port: "http", Protocol: dataplane.TCP}
	dns := dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: "kube-system", Name: "dns"}, Port: "dns", Protocol: dataplane.UDP}
	st.Services[web] = &dataplane.ServicePort{Name: web, Port: 80, NodePort: 30080, ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")}}
	st.Services[dns] = &dataplane.ServicePort{Name: dns, Port: 53, ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.53")}}
	flow := func(proto dataplane.Protocol, state, client, dst, backend string) agentapi.Flow {
		c, d, b := netip.MustParseAddrPort(client), netip.MustParseAddrPort(dst), netip.MustParseAddrPort(backend)
		return agentapi.Flow{Flow: conntrack.Flow{Protocol: proto, Orig: conntrack.Tuple{Src: c, Dst: d}, Reply: conntrack.Tuple{Src: b, Dst: c}, TCPState: state}}
	}
	flows := []agentapi.Flow{
		flow(dataplane.TCP, "ESTABLISHED", "10.0.0.1:40000", "10.96.0.10:80", "10.244.1.2:8080"),
		flow(dataplane.TCP, "ESTABLISHED", "10.0.0.1:40001", "10.96.0.10:80", "10.244.1.2:8080"),
		flow(dataplane.TCP, "TIME_WAIT", "10.0.0.1:40002", "10.96.0.10:80", "10.244.1.2:8080"),
		flow(dataplane.TCP, "ESTABLISHED", "10.0.0.1:40003", "192.168.1.5:30080", "10.244.1.3:8080"), // NodePort
		flow(dataplane.UDP, "", "10.0.0.1:5353", "10.96.0.53:53", "10.244.1.4:53"),
		flow(dataplane.TCP, "ESTABLISHED", "10.0.0.1:40004", "10.96.0.99:80", "10.244.1.9:80"), // no Service
		flow(dataplane.TCP, "ESTABLISHED", "10.0.0.1:40005", "10.0.0.2:22", "10.0.0.2:22"),     // not DNATed
	}
	entries, conns := conntrackMetrics(agentapi.NewFlowIndex(st), flows)
	wantEntries := []metrics.ConntrackEntries{
		{Service: "demo/web:http/tcp", Frontend: "10.96.0.10:80/TCP", Backend: "10.244.1.2:8080", State: "ESTABLISHED", Count: 2},
		{Service: "demo/web:http/tcp", Frontend: "10.96.0.10:80/TCP", Backend: "10.244.1.2:8080", State: "TIME_WAIT", Count: 1},
		{Service: "demo/web:http/tcp", Frontend: "192.168.1.5:30080/TCP", Backend: "10.244.1.3:8080", State: "ESTABLISHED", Count: 1},
		{Service: "kube-system/dns:dns/udp", Frontend: "10.96.0.53:53/UDP", Backend: "10.244.1.4:53", State: "UDP", Count: 1},
	}
	wantConns := []metrics.BackendConns{
		{Service: "demo/web:http/tcp", Frontend: "10.96.0.10:80/TCP", Backend: "10.244.1.2:8080", Active: 2, Inactive: 1},
		{Service: "demo/web:http/tcp", Frontend: "192.168.1.5:30080/TCP", Backend: "10.244.1.3:8080", Active: 1},
		{Service: "kube-system/dns:dns/udp", Frontend: "10.96.0.53:53/UDP", Backend: "10.244.1.4:53", Active: 1},
	}
	if !reflect.DeepEqual(entries, wantEntries) {
		t.Errorf("entries:\n got %+v\nwant %+v", entries, wantEntries)
	}
	if !reflect.DeepEqual(conns, wantConns) {
		t.Errorf("connections:\n got %+v\nwant %+v", conns, wantConns)
	}
}

func TestBPFConnectionMetrics(t *testing.T) {
	st := dataplane.NewState()
	port := func(ns, name, p string, proto dataplane.Protocol) dataplane.ServicePortName {
		return dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: ns, Name: name}, Port: p, Protocol: proto}
	}
	web, alt, dns := port("demo", "web", "http", dataplane.TCP), port("demo", "alt", "", dataplane.TCP), port("demo", "dns", "dns", dataplane.UDP)
	ep := func(a string) dataplane.Endpoint {
		return dataplane.Endpoint{Addr: netip.MustParseAddrPort(a), Ready: true}
	}
	for _, n := range []dataplane.ServicePortName{web, alt, dns} {
		st.Services[n] = &dataplane.ServicePort{Name: n, Port: 80}
	}
	st.Endpoints[web] = []dataplane.Endpoint{ep("10.244.1.2:8080"), ep("10.244.1.3:8080")}
	st.Endpoints[alt] = []dataplane.Endpoint{ep("10.244.1.3:8080")}
	st.Endpoints[dns] = []dataplane.Endpoint{ep("10.244.1.4:53")}
	conns := []ebpf.BackendConnections{
		{Backend: netip.MustParseAddrPort("10.244.1.2:8080"), Direction: ebpf.Out, Count: 2},
		{Backend: netip.MustParseAddrPort("10.244.1.2:8080"), Direction: ebpf.In, Count: 1},
		{Backend: netip.MustParseAddrPort("10.244.1.3:8080"), Direction: ebpf.Out, Count: 4},
		// A UDP endpoint's address counts under no port: sockops counts
		// TCP only, so this is some other TCP server there.
		{Backend: netip.MustParseAddrPort("10.244.1.4:53"), Direction: ebpf.Out, Count: 1},
		{Backend: netip.MustParseAddrPort("10.244.9.9:8080"), Direction: ebpf.Out, Count: 0},
	}
	got := bpfConnectionMetrics(st, conns)
	want := []metrics.BPFConnections{
		{Service: "", Backend: "10.244.1.4:53", Direction: "out", Count: 1},
		{Service: "", Backend: "10.244.9.9:8080", Direction: "out", Count: 0},
		{Service: "demo/alt:tcp", Backend: "10.244.1.3:8080", Direction: "out", Count: 4},
		{Service: "demo/web:http/tcp", Backend: "10.244.1.2:8080", Direction: "in", Count: 1},
		{Service: "demo/web:http/tcp", Backend: "10.244.1.2:8080", Direction: "out", Count: 2},
		{Service: "demo/web:http/tcp", Backend: "10.244.1.3:8080", Direction: "out", Count: 4},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
}

type fakeSocketLB struct {
	conns []ebpf.BackendConnections
	err   error
}

func (f *fakeSocketLB) Connections() ([]ebpf.BackendConnections, error) { return f.conns, f.err }
func (f *fakeSocketLB) Sockets() ([]ebpf.Socket, error)                 { return nil, f.err }

// The reader stores nothing before the first sync, the attributed counts
// after, and keeps them when the kernel cannot be read.
func TestSocketLBReader(t *testing.T) {
	web := dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: "demo", Name: "web"}, Port: "http", Protocol: dataplane.TCP}
	var st *dataplane.State
	view := func(f func(*dataplane.State)) { f(st) }
	lb := &fakeSocketLB{conns: []ebpf.BackendConnections{{Backend: netip.MustParseAddrPort("10.244.1.2:8080"), Direction: ebpf.Out, Count: 3}}}
	cache := &metrics.Cache[[]metrics.BPFConnections]{}
	read := socketLBReader(lb, view, cache)
	if err := read.Read(context.Background()); err != nil || cache.Load() != nil {
		t.Fatalf("before the first sync: %v, cache %+v; want no error, nothing stored", err, cache.Load())
	}
	st = dataplane.NewState()
	st.Services[web] = &dataplane.ServicePort{Name: web, Port: 80}
	st.Endpoints[web] = []dataplane.Endpoint{{Addr: netip.MustParseAddrPort("10.244.1.2:8080"), Ready: true}}
	want := []metrics.BPFConnections{{Service: "demo/web:http/tcp", Backend: "10.244.1.2:8080", Direction: "out", Count: 3}}
	if err := read.Read(context.Background()); err != nil || !reflect.DeepEqual(cache.Load(), want) {
		t.Fatalf("after a sync: %v, cache %+v; want %+v", err, cache.Load(), want)
	}
	lb.err = errors.New("bad map")
	if err := read.Read(context.Background()); err == nil || !reflect.DeepEqual(cache.Load(), want) {
		t.Errorf("read error: %v, cache %+v; want the error and the last values kept", err, cache.Load())
	}
}
