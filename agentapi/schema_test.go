package agentapi

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

// TestSchemaStability pins the JSON schema: every type of the API, with
// every field set, encodes to its golden file, and the golden file decodes
// back into the type with no unknown field and re-encodes identically. A
// renamed, removed or retyped field fails here; a new field fails the
// all-set check until the sample and golden file (-update) include it.
func TestSchemaStability(t *testing.T) {
	when := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	weight, packets, octets := 1, uint64(12), uint64(3400)
	stats := &IPVSStats{Connections: 7, PacketsIn: 70, PacketsOut: 60, BytesIn: 7000, BytesOut: 9000}
	status := Status{Version: "v0.1.0", Dataplane: "ipvs", SyncChain: "iptables+ipvs+conntrack+healthcheck", NodeName: "node-a",
		StartTime: when, LastSync: &when, LastError: "ipvs: add virtual server: boom", Syncs: 12, ServicePorts: 5, Endpoints: 9,
		SocketLB: true}
	samples := map[string]any{
		"Status": status,
		"ServiceList": ServiceList{Dataplane: "ipvs", Services: []Service{{
			Namespace: "default", Name: "web", PortName: "http", Protocol: "TCP", Port: 80, NodePort: 30080,
			ClusterIPs: []string{"10.96.0.10"}, ExternalIPs: []string{"203.0.113.7"}, LoadBalancerIPs: []string{"198.51.100.1"},
			Scheduler: "rr", SessionAffinitySeconds: 10800, ExternalTrafficPolicy: "Local", InternalTrafficPolicy: "Cluster",
			TopologyMode: "PreferSameZone",
			Backends: []Backend{{Address: "10.244.1.2:8080", Node: "node-a", Zone: "zone-a", State: "ready", Weight: 1,
				Connections: &Connections{Active: 3, Inactive: 1}, BPFConnections: &BPFConnections{Out: 2, In: 1}}},
		}}},
		"IPVSTable": IPVSTable{Source: "agent", DriftChecked: true, Stats: true, VirtualServers: []IPVSVirtualServer{{
			Address: "10.96.0.10:80", Protocol: "TCP", FirewallMark: 7, Scheduler: "rr", PersistenceSeconds: 10800,
			Owned: true, Missing: true, Service: "default/web:http/tcp", Drift: []string{"scheduler wrr, want rr"}, Stats: stats,
			RealServers: []IPVSRealServer{{Address: "10.244.1.2:8080", Forward: "masq", Weight: 1, DesiredWeight: &weight,
				Missing: true, DrainingSince: &when, ActiveConnections: 3, InactiveConnections: 1, UpperThreshold: 100, LowerThreshold: 100, Stats: stats}},
		}}},
		"NFTables": NFTables{Source: "agent", DriftChecked: true, Counters: true, Tables: []NFTTable{{
			Family: "ip", Name: "switchyard", Exists: true, Drift: []string{"set hairpin-endpoints missing"},
			Sets: []NFTSet{{Name: "service-ips", Map: true, Elements: []string{"10.96.0.10 . tcp . 80 : goto svc-X"}}},
			Chains: []NFTChain{{Name: "svc-X", Kind: "service", Service: "default/web:http/tcp", Hook: "type nat hook output priority -100; policy accept",
				Frontends: []string{"service-ips 10.96.0.10 . tcp . 80"},
				Rules:     []NFTRule{{Text: "counter", Packets: &packets, Bytes: &octets}}, Missing: true, Drift: []string{"rules differ"}}},
		}}},
		"ConntrackReport": ConntrackReport{Source: "agent", Services: []ConntrackService{{
			Service: "default/web:http/tcp", Frontends: []string{"10.96.0.10:80/TCP"},
			Backends:    []ConntrackBackend{{Address: "10.244.1.2:8080", Endpoint: true, Established: 3, Other: 1}},
			Established: 3, Other: 1, Max: 3, Mean: 1.5, Imbalance: 2,
			Rebalance: &ConntrackRebalance{DryRun: true, Tolerance: 0.1, LastRound: when, Outcome: "dry-run", Ratio: 2, RatioAfter: 1,
				Planned: 1, Closed: 1, Resets: 4, Backends: []RebalanceBackend{{Address: "10.244.1.2:8080", Connections: 3, Expected: 2, Weight: 1}}},
		}}, SocketLB: true, Sockets: []SocketLBSocket{{
			Cookie: 4097, Direction: "out", Local: "10.244.1.7:40312", Remote: "10.244.1.2:8080", Frontend: "10.96.0.10:80",
			Service: "default/web:http/tcp", Established: when, NetnsCookie: 4096,
		}}},
		"Trace": Trace{Destination: "10.96.0.10:80", Protocol: "TCP", Dataplane: "ipvs", Matches: []TraceMatch{{
			Service: "default/web:http/tcp", Protocol: "TCP", Frontend: "clusterIP", TrafficPolicy: "Cluster", Result: "forward",
			Backends: []TraceBackend{{Address: "10.244.1.2:8080", Node: "node-a", Zone: "zone-a", State: "ready", Chosen: true, Why: "not ready"}},
			Reasons:  []string{"internalTrafficPolicy=Cluster: endpoints on any node"}, Dataplane: []string{"ipvs virtual server 10.96.0.10:80/TCP scheduler rr"},
		}}},
		"SyncResponse": SyncResponse{Requested: true, Status: status},
		"Error":        Error{Error: "the agent has not synced yet"},
	}
	for name, v := range samples {
		t.Run(name, func(t *testing.T) {
			for _, path := range zeroFields(reflect.ValueOf(v), name) {
				t.Errorf("sample leaves %s unset: set every field so the golden file pins it", path)
			}
			b, err := json.MarshalIndent(v, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			b = append(b, '\n')
			golden(t, "schema/"+name+".json", b)

			// The golden file decodes into the type, strictly, and
			// encodes back to itself.
			ptr := reflect.New(reflect.TypeOf(v))
			dec := json.NewDecoder(bytes.NewReader(b))
			dec.DisallowUnknownFields()
			if err := dec.Decode(ptr.Interface()); err != nil {
				t.Fatalf("golden %s does not decode into %T: %v", name, v, err)
			}
			again, _ := json.MarshalIndent(ptr.Elem().Interface(), "", "  ")
			if string(append(again, '\n')) != string(b) {
				t.Errorf("%s does not round-trip:\n%s", name, again)
			}
		})
	}
	// Every exported type of types.go has a sample.
	for _, v := range []any{Status{}, ServiceList{}, Service{}, Backend{}, Connections{}, IPVSTable{}, IPVSVirtualServer{},
		IPVSRealServer{}, IPVSStats{}, NFTables{}, NFTTable{}, NFTSet{}, NFTChain{}, NFTRule{}, ConntrackReport{},
		ConntrackService{}, ConntrackBackend{}, ConntrackRebalance{}, RebalanceBackend{}, SocketLBSocket{}, BPFConnections{}, Trace{}, TraceMatch{}, TraceBackend{}, SyncResponse{}, Error{}} {
		if !sampled(reflect.TypeOf(v), samples) {
			t.Errorf("%T has no sample in TestSchemaStability", v)
		}
	}
}

// zeroFields lists the struct fields reachable from v (through pointers,
// slices and nested structs) that are zero.
func zeroFields(v reflect.Value, path string) []string {
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			return []string{path}
		}
		return zeroFields(v.Elem(), path)
	case reflect.Slice:
		if v.Len() == 0 {
			return []string{path}
		}
		return zeroFields(v.Index(0), path+"[0]")
	case reflect.Struct:
		if v.Type() == reflect.TypeOf(time.Time{}) {
			if v.Interface().(time.Time).IsZero() {
				return []string{path}
			}
			return nil
		}
		var out []string
		for i := range v.NumField() {
			out = append(out, zeroFields(v.Field(i), path+"."+v.Type().Field(i).Name)...)
		}
		return out
	}
	if v.IsZero() {
		return []string{path}
	}
	return nil
}

// sampled reports whether t appears in one of the samples.
func sampled(t reflect.Type, samples map[string]any) bool {
	for _, s := range samples {
		if contains(reflect.TypeOf(s), t, map[reflect.Type]bool{}) {
			return true
		}
	}
	return false
}

func contains(in, t reflect.Type, seen map[reflect.Type]bool) bool {
	if in == t {
		return true
	}
	if seen[in] {
		return false
	}
	seen[in] = true
	switch in.Kind() {
	case reflect.Pointer, reflect.Slice:
		return contains(in.Elem(), t, seen)
	case reflect.Struct:
		for i := range in.NumField() {
			if contains(in.Field(i).Type, t, seen) {
				return true
			}
		}
	}
	return false
}
