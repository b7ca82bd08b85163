package hostport

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/switchyard/switchyard/dataplane"
)

const (
	tcp  = dataplane.TCP
	udp  = dataplane.UDP
	sctp = dataplane.SCTP
)

func TestDesired(t *testing.T) {
	v4, v6 := []string{"10.244.1.2"}, []string{"fd00::2"}
	dual := []string{"10.244.1.2", "fd00::2"}
	conflict := func(winner, loser Mapping) string { return Conflict{Winner: winner, Loser: loser}.String() }
	for _, tc := range []struct {
		name     string
		pods     []*v1.Pod
		want     []Mapping
		conflict []string   // Conflict.String()
		invalid  [][]string // {pod, container, reason}
	}{
		{
			name: "no hostIP maps on every address; protocol defaults to TCP",
			pods: []*v1.Pod{newPod("web", v4, port("c", "", "", 8080, 80))},
			want: []Mapping{mp("web", tcp, "", 8080, "10.244.1.2", 80)},
		},
		{
			name: "no hostIP on a dual-stack Pod: one mapping per family",
			pods: []*v1.Pod{newPod("web", dual, port("c", v1.ProtocolUDP, "", 53, 5353))},
			want: []Mapping{mp("web", udp, "", 53, "10.244.1.2", 5353), mp("web", udp, "", 53, "fd00::2", 5353)},
		},
		{
			name: "0.0.0.0 is every IPv4 address only",
			pods: []*v1.Pod{newPod("web", dual, port("c", v1.ProtocolTCP, "0.0.0.0", 8080, 80))},
			want: []Mapping{mp("web", tcp, "", 8080, "10.244.1.2", 80)},
		},
		{
			name: ":: is every IPv6 address only",
			pods: []*v1.Pod{newPod("web", dual, port("c", v1.ProtocolTCP, "::", 8080, 80))},
			want: []Mapping{mp("web", tcp, "", 8080, "fd00::2", 80)},
		},
		{
			name: "a hostIP maps on that address, in its family",
			pods: []*v1.Pod{newPod("web", dual, port("c", v1.ProtocolTCP, "192.0.2.1", 8080, 80), port("c", v1.ProtocolTCP, "2001:db8::1", 8080, 80))},
			want: []Mapping{mp("web", tcp, "192.0.2.1", 8080, "10.244.1.2", 80), mp("web", tcp, "2001:db8::1", 8080, "fd00::2", 80)},
		},
		{
			name: "an IPv4-mapped hostIP is IPv4",
			pods: []*v1.Pod{newPod("web", dual, port("c", v1.ProtocolTCP, "::ffff:192.0.2.1", 8080, 80))},
			want: []Mapping{mp("web", tcp, "192.0.2.1", 8080, "10.244.1.2", 80)},
		},
		{
			name:    "a hostIP of a family the Pod has no address of is reported",
			pods:    []*v1.Pod{newPod("web", v4, port("c", v1.ProtocolTCP, "2001:db8::1", 8080, 80), port("c", v1.ProtocolTCP, "", 9090, 90))},
			want:    []Mapping{mp("web", tcp, "", 9090, "10.244.1.2", 90)},
			invalid: [][]string{{"default/web", "c", ReasonNoPodIPOfFamily}},
		},
		{
			name: "SCTP, and IPv6-only Pods",
			pods: []*v1.Pod{newPod("web", v6, port("c", v1.ProtocolSCTP, "", 9999, 9))},
			want: []Mapping{mp("web", sctp, "", 9999, "fd00::2", 9)},
		},
		{
			name: "status.podIP when podIPs is empty",
			pods: []*v1.Pod{func() *v1.Pod {
				p := newPod("web", nil, port("c", "", "", 8080, 80))
				p.Status.PodIP = "10.244.1.9"
				return p
			}()},
			want: []Mapping{mp("web", tcp, "", 8080, "10.244.1.9", 80)},
		},
		{
			name: "only the first address of each family counts",
			pods: []*v1.Pod{newPod("web", []string{"10.244.1.2", "10.244.1.3", "fd00::2"}, port("c", "", "", 8080, 80))},
			want: []Mapping{mp("web", tcp, "", 8080, "10.244.1.2", 80), mp("web", tcp, "", 8080, "fd00::2", 80)},
		},
		{
			name:    "a pod IP that does not parse is reported; the others count",
			pods:    []*v1.Pod{newPod("web", []string{"bogus", "fd00::2"}, port("c", "", "", 8080, 80))},
			want:    []Mapping{mp("web", tcp, "", 8080, "fd00::2", 80)},
			invalid: [][]string{{"default/web", "", ReasonInvalidPodIP}},
		},
		{
			name: "Pods elsewhere, on the host network, finished, or without an IP are skipped",
			pods: []*v1.Pod{
				newPod("other-node", v4, onNode("node-b"), port("c", "", "", 1001, 80)),
				newPod("host-net", v4, port("c", "", "", 1002, 1002), func(p *v1.Pod) { p.Spec.HostNetwork = true }),
				newPod("succeeded", v4, phase(v1.PodSucceeded), port("c", "", "", 1003, 80)),
				newPod("failed", v4, phase(v1.PodFailed), port("c", "", "", 1004, 80)),
				newPod("pending", nil, phase(v1.PodPending), port("c", "", "", 1005, 80)),
				nil,
			},
		},
		{
			name: "a terminating Pod keeps its ports until it stops; ports without hostPort are no mappings",
			pods: []*v1.Pod{newPod("term", v4, port("c", "", "", 0, 80), port("c", "", "", 8080, 80), func(p *v1.Pod) {
				now := metav1.NewTime(epoch)
				p.DeletionTimestamp = &now
			})},
			want: []Mapping{mp("term", tcp, "", 8080, "10.244.1.2", 80)},
		},
		{
			name: "bad ports are reported, one by one",
			pods: []*v1.Pod{newPod("bad", v4,
				port("a", "ICMP", "", 8080, 80),
				port("b", "", "not-an-ip", 8081, 80),
				port("c", "", "127.0.0.1", 8082, 80),
				port("d", "", "::1", 8083, 80),
				port("e", "", "224.0.0.1", 8084, 80),
				port("f", "", "", 70000, 80),
				port("g", "", "", 8086, 0),
				port("h", "", "fe80::1%eth0", 8087, 80),
				port("ok", "", "", 8088, 80))},
			want: []Mapping{mp("bad", tcp, "", 8088, "10.244.1.2", 80)},
			invalid: [][]string{
				{"default/bad", "a", ReasonInvalidProtocol}, {"default/bad", "b", ReasonInvalidHostIP},
				{"default/bad", "c", ReasonUnsupportedHostIP}, {"default/bad", "d", ReasonUnsupportedHostIP},
				{"default/bad", "e", ReasonUnsupportedHostIP}, {"default/bad", "f", ReasonInvalidPort},
				{"default/bad", "g", ReasonInvalidPort}, {"default/bad", "h", ReasonInvalidHostIP},
			},
		},
		{
			name: "the earlier Pod wins, whatever the input order",
			pods: []*v1.Pod{
				newPod("young", []string{"10.244.1.3"}, age(10), port("c", "", "", 8080, 80)),
				newPod("old", []string{"10.244.1.2"}, age(5), port("c", "", "", 8080, 80)),
			},
			want:     []Mapping{mp("old", tcp, "", 8080, "10.244.1.2", 80)},
			conflict: []string{conflict(mp("old", tcp, "", 8080, "10.244.1.2", 80), mp("young", tcp, "", 8080, "10.244.1.3", 80))},
		},
		{
			name: "same creation time: namespace, then name",
			pods: []*v1.Pod{
				newPod("b/a", []string{"10.244.1.4"}, port("c", "", "", 8080, 80)),
				newPod("a/z", []string{"10.244.1.3"}, port("c", "", "", 8080, 80)),
				newPod("a/y", []string{"10.244.1.2"}, port("c", "", "", 8080, 80)),
			},
			want: []Mapping{mp("a/y", tcp, "", 8080, "10.244.1.2", 80)},
			conflict: []string{
				conflict(mp("a/y", tcp, "", 8080, "10.244.1.2", 80), mp("a/z", tcp, "", 8080, "10.244.1.3", 80)),
				conflict(mp("a/y", tcp, "", 8080, "10.244.1.2", 80), mp("b/a", tcp, "", 8080, "10.244.1.4", 80)),
			},
		},
		{
			name: "a wildcard and an address of the same family overlap; the other family is free",
			pods: []*v1.Pod{
				newPod("any", dual, age(1), port("c", "", "", 8080, 80)),
				newPod("addr", []string{"10.244.1.3"}, age(2), port("c", "", "192.0.2.1", 8080, 80)),
				newPod("addr6", []string{"10.244.1.4", "fd00::4"}, age(0), port("c", "", "2001:db8::1", 8080, 80)),
			},
			want: []Mapping{mp("any", tcp, "", 8080, "10.244.1.2", 80), mp("addr6", tcp, "2001:db8::1", 8080, "fd00::4", 80)},
			conflict: []string{
				conflict(mp("any", tcp, "", 8080, "10.244.1.2", 80), mp("addr", tcp, "192.0.2.1", 8080, "10.244.1.3", 80)),
				conflict(mp("addr6", tcp, "2001:db8::1", 8080, "fd00::4", 80), mp("any", tcp, "", 8080, "fd00::2", 80)),
			},
		},
		{
			name: "different protocols, addresses or families do not overlap",
			pods: []*v1.Pod{
				newPod("a", []string{"10.244.1.2"}, port("c", v1.ProtocolTCP, "", 53, 53)),
				newPod("b", []string{"10.244.1.3"}, port("c", v1.ProtocolUDP, "", 53, 53)),
				newPod("c", []string{"10.244.1.4"}, port("c", v1.ProtocolSCTP, "192.0.2.1", 53, 53)),
				newPod("d", []string{"10.244.1.5"}, port("c", v1.ProtocolSCTP, "192.0.2.2", 53, 53)),
				newPod("e", []string{"fd00::6"}, port("c", v1.ProtocolTCP, "", 53, 53)),
			},
			want: []Mapping{
				mp("c", sctp, "192.0.2.1", 53, "10.244.1.4", 53), mp("d", sctp, "192.0.2.2", 53, "10.244.1.5", 53),
				mp("a", tcp, "", 53, "10.244.1.2", 53), mp("b", udp, "", 53, "10.244.1.3", 53),
				mp("e", tcp, "", 53, "fd00::6", 53),
			},
		},
		{
			name: "one Pod declaring a port twice: identical is one mapping, different is a conflict",
			pods: []*v1.Pod{newPod("web", v4,
				port("a", "", "", 8080, 80), port("b", "", "", 8080, 80), port("b", "", "", 8080, 81))},
			want:     []Mapping{mp("web", tcp, "", 8080, "10.244.1.2", 80)},
			conflict: []string{conflict(mp("web", tcp, "", 8080, "10.244.1.2", 80), mp("web", tcp, "", 8080, "10.244.1.2", 81))},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Any input order gives the same output.
			for _, pods := range [][]*v1.Pod{tc.pods, reversed(tc.pods)} {
				got, conflicts, invalid := Desired(pods, testNode)
				if !slices.Equal(got, tc.want) {
					t.Errorf("mappings:\n%s\nwant:\n%s", lines(got), lines(tc.want))
				}
				var gotConflicts []string
				for _, c := range conflicts {
					gotConflicts = append(gotConflicts, c.String())
				}
				if !slices.Equal(gotConflicts, tc.conflict) {
					t.Errorf("conflicts:\n%s\nwant:\n%s", strings.Join(gotConflicts, "\n"), strings.Join(tc.conflict, "\n"))
				}
				var gotInvalid [][]string
				for _, i := range invalid {
					gotInvalid = append(gotInvalid, []string{i.Pod.String(), i.Container, i.Reason})
					if i.Detail == "" {
						t.Errorf("%v has no detail", i)
					}
				}
				if fmt.Sprint(gotInvalid) != fmt.Sprint(tc.invalid) {
					t.Errorf("invalid: %v, want %v", gotInvalid, tc.invalid)
				}
			}
		})
	}
}

func reversed[T any](s []T) []T {
	out := slices.Clone(s)
	slices.Reverse(out)
	return out
}

func lines[T fmt.Stringer](xs []T) string {
	var b strings.Builder
	for _, x := range xs {
		b.WriteString("  " + x.String() + "\n")
	}
	return b.String()
}

func TestKeyString(t *testing.T) {
	for _, tc := range []struct {
		m    Mapping
		want string
	}{
		{mp("web", tcp, "", 8080, "10.244.1.2", 80), "tcp 0.0.0.0:8080 -> 10.244.1.2:80 (default/web)"},
		{mp("web", udp, "", 53, "fd00::2", 5353), "udp [::]:53 -> [fd00::2]:5353 (default/web)"},
		{mp("a/web", sctp, "192.0.2.1", 9, "10.244.1.2", 9), "sctp 192.0.2.1:9 -> 10.244.1.2:9 (a/web)"},
	} {
		if got := tc.m.String(); got != tc.want {
			t.Errorf("got %q, want %q", got, tc.want)
		}
	}
}

func TestNodePortCollisions(t *testing.T) {
	svc := func(name string, proto dataplane.Protocol, nodePort, hc uint16) *dataplane.ServicePort {
		return &dataplane.ServicePort{Name: dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: "default", Name: name}, Protocol: proto},
			Port: 80, NodePort: nodePort, HealthCheckNodePort: hc}
	}
	st := dataplane.NewState()
	for _, sp := range []*dataplane.ServicePort{
		svc("web", tcp, 30080, 0), svc("dns", udp, 30053, 0), svc("local", tcp, 30081, 31000), svc("none", tcp, 0, 0),
	} {
		st.Services[sp.Name] = sp
	}
	mappings := []Mapping{
		mp("a", tcp, "", 30080, "10.244.1.2", 80),          // the NodePort of web
		mp("b", udp, "", 30080, "10.244.1.3", 80),          // another protocol
		mp("c", udp, "192.0.2.1", 30053, "10.244.1.4", 53), // a hostIP still takes the NodePort on that address
		mp("d", tcp, "", 31000, "fd00::5", 80),             // the health check port of local
		mp("e", udp, "", 31000, "10.244.1.6", 80),          // health checks are TCP
		mp("f", tcp, "", 8080, "10.244.1.7", 80),
	}
	var got []string
	for _, c := range NodePortCollisions(mappings, st) {
		got = append(got, c.String())
	}
	want := []string{
		"hostPort tcp 0.0.0.0:30080 of default/a is the NodePort of Service default/web:tcp",
		"hostPort udp 192.0.2.1:30053 of default/c is the NodePort of Service default/dns:udp",
		"hostPort tcp [::]:31000 of default/d is the healthCheckNodePort of Service default/local:tcp",
	}
	if !slices.Equal(got, want) {
		t.Errorf("collisions:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if c := NodePortCollisions(nil, st); c != nil {
		t.Errorf("no mappings: %v", c)
	}
	if c := NodePortCollisions(mappings, nil); c != nil {
		t.Errorf("nil state: %v", c)
	}
}
