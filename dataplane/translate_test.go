package dataplane

import (
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

func svc(ns, name string, mutate ...func(*v1.Service)) *v1.Service {
	s := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1.ServiceSpec{
			Type:       v1.ServiceTypeClusterIP,
			ClusterIP:  "10.96.0.10",
			ClusterIPs: []string{"10.96.0.10"},
			Ports:      []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}},
		},
	}
	for _, m := range mutate {
		m(s)
	}
	return s
}

type epSpec struct {
	ip          string
	ready       *bool
	serving     *bool
	terminating *bool
	node, zone  string
}

func slice(ns, name, service string, ports []discovery.EndpointPort, eps ...epSpec) *discovery.EndpointSlice {
	sl := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discovery.LabelServiceName: service}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       ports,
	}
	if service == "" {
		sl.Labels = nil
	}
	for _, e := range eps {
		ep := discovery.Endpoint{
			Addresses:  []string{e.ip},
			Conditions: discovery.EndpointConditions{Ready: e.ready, Serving: e.serving, Terminating: e.terminating},
		}
		if e.node != "" {
			ep.NodeName = ptr.To(e.node)
		}
		if e.zone != "" {
			ep.Zone = ptr.To(e.zone)
		}
		sl.Endpoints = append(sl.Endpoints, ep)
	}
	return sl
}

func port(name string, p int32, proto v1.Protocol) discovery.EndpointPort {
	return discovery.EndpointPort{Name: ptr.To(name), Port: ptr.To(p), Protocol: ptr.To(proto)}
}

// stateOf builds a State from objects through the same code the tracker uses.
func stateOf(t *testing.T, opts TranslateOptions, services []*v1.Service, slices []*discovery.EndpointSlice) (*State, []Problem) {
	t.Helper()
	var problems []Problem
	tr := NewTracker("node-a", opts, func(p Problem) { problems = append(problems, p) })
	for _, s := range services {
		tr.OnServiceUpsert(s)
	}
	for _, s := range slices {
		tr.OnEndpointSliceUpsert(s)
	}
	st, _ := tr.Drain()
	return st, problems
}

func TestTranslate(t *testing.T) {
	tcp := v1.ProtocolTCP
	for _, tc := range []struct {
		name     string
		opts     TranslateOptions
		services []*v1.Service
		slices   []*discovery.EndpointSlice
		want     string
		problems []string // reasons, in order
	}{
		{
			name:     "cluster IP with two ready endpoints",
			services: []*v1.Service{svc("demo", "web")},
			slices: []*discovery.EndpointSlice{slice("demo", "web-1", "web", []discovery.EndpointPort{port("http", 8080, tcp)},
				epSpec{ip: "10.244.1.3", node: "node-a", zone: "z1"}, epSpec{ip: "10.244.1.2", ready: ptr.To(true)})},
			want: `demo/web:http/tcp port=80 clusterIPs=[10.96.0.10]
  10.244.1.2:8080 ready
  10.244.1.3:8080 ready node=node-a zone=z1
`,
		},
		{
			name: "named target port resolved per slice",
			services: []*v1.Service{svc("demo", "web", func(s *v1.Service) {
				s.Spec.Ports[0].TargetPort.StrVal = "web"
			})},
			slices: []*discovery.EndpointSlice{
				slice("demo", "web-a", "web", []discovery.EndpointPort{port("http", 8080, tcp)}, epSpec{ip: "10.244.1.2"}),
				slice("demo", "web-b", "web", []discovery.EndpointPort{port("http", 9090, tcp)}, epSpec{ip: "10.244.2.2"}),
			},
			want: `demo/web:http/tcp port=80 clusterIPs=[10.96.0.10]
  10.244.1.2:8080 ready
  10.244.2.2:9090 ready
`,
		},
		{
			name: "multi-port, udp, sctp, nodeport, external and lb ips",
			services: []*v1.Service{svc("demo", "multi", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.ExternalIPs = []string{"192.0.2.5", "192.0.2.4", "192.0.2.5"}
				s.Spec.Ports = []v1.ServicePort{
					{Name: "dns", Port: 53, Protocol: v1.ProtocolUDP, NodePort: 30053},
					{Name: "dns-tcp", Port: 53, Protocol: v1.ProtocolTCP, NodePort: 30054},
					{Name: "sig", Port: 3868, Protocol: v1.ProtocolSCTP},
				}
				s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{
					{IP: "198.51.100.7"},
					{IP: "198.51.100.8", IPMode: ptr.To(v1.LoadBalancerIPModeProxy)},
					{Hostname: "lb.example"},
				}
			})},
			want: `demo/multi:dns/udp port=53 nodePort=30053 clusterIPs=[10.96.0.10] externalIPs=[192.0.2.4 192.0.2.5] lbIPs=[198.51.100.7]
demo/multi:dns-tcp/tcp port=53 nodePort=30054 clusterIPs=[10.96.0.10] externalIPs=[192.0.2.4 192.0.2.5] lbIPs=[198.51.100.7]
demo/multi:sig/sctp port=3868 clusterIPs=[10.96.0.10] externalIPs=[192.0.2.4 192.0.2.5] lbIPs=[198.51.100.7]
`,
		},
		{
			name: "skipped: headless, ExternalName, other proxy, no cluster IP",
			services: []*v1.Service{
				svc("demo", "headless", func(s *v1.Service) {
					s.Spec.ClusterIP = v1.ClusterIPNone
					s.Spec.ClusterIPs = []string{v1.ClusterIPNone}
				}),
				svc("demo", "ext", func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeExternalName; s.Spec.ExternalName = "example.org" }),
				svc("demo", "other", func(s *v1.Service) { s.Labels = map[string]string{LabelServiceProxyName: "other-proxy"} }),
				svc("demo", "pending", func(s *v1.Service) { s.Spec.ClusterIP = ""; s.Spec.ClusterIPs = nil }),
			},
			want: "",
		},
		{
			name: "service-proxy-name equal to ours is handled",
			opts: TranslateOptions{ProxyName: "switchyard"},
			services: []*v1.Service{
				svc("demo", "mine", func(s *v1.Service) { s.Labels = map[string]string{LabelServiceProxyName: "switchyard"} }),
				svc("demo", "theirs", func(s *v1.Service) { s.Labels = map[string]string{LabelServiceProxyName: "other"} }),
			},
			want: "demo/mine:http/tcp port=80 clusterIPs=[10.96.0.10]\n",
		},
		{
			name:     "slice without service-name label ignored; FQDN slice ignored",
			services: []*v1.Service{svc("demo", "web")},
			slices: []*discovery.EndpointSlice{
				slice("demo", "orphan", "", []discovery.EndpointPort{port("http", 8080, tcp)}, epSpec{ip: "10.244.1.2"}),
				func() *discovery.EndpointSlice {
					s := slice("demo", "fqdn", "web", []discovery.EndpointPort{port("http", 8080, tcp)}, epSpec{ip: "backend.example"})
					s.AddressType = discovery.AddressTypeFQDN
					return s
				}(),
			},
			want: "demo/web:http/tcp port=80 clusterIPs=[10.96.0.10]\n",
		},
		{
			name:     "duplicate endpoint across slices counted once, ready copy wins",
			services: []*v1.Service{svc("demo", "web")},
			slices: []*discovery.EndpointSlice{
				slice("demo", "web-a", "web", []discovery.EndpointPort{port("http", 8080, tcp)}, epSpec{ip: "10.244.1.2", ready: ptr.To(false)}),
				slice("demo", "web-b", "web", []discovery.EndpointPort{port("http", 8080, tcp)}, epSpec{ip: "10.244.1.2"}, epSpec{ip: "10.244.1.9"}),
			},
			want: `demo/web:http/tcp port=80 clusterIPs=[10.96.0.10]
  10.244.1.2:8080 ready
  10.244.1.9:8080 ready
`,
		},
		{
			name:     "endpoint conditions",
			services: []*v1.Service{svc("demo", "web")},
			slices: []*discovery.EndpointSlice{slice("demo", "web-a", "web", []discovery.EndpointPort{port("http", 8080, tcp)},
				epSpec{ip: "10.244.1.1"},
				epSpec{ip: "10.244.1.2", ready: ptr.To(false), serving: ptr.To(true), terminating: ptr.To(true)},
				epSpec{ip: "10.244.1.3", ready: ptr.To(false), serving: ptr.To(false), terminating: ptr.To(true)},
				epSpec{ip: "10.244.1.4", ready: ptr.To(false)},
			)},
			want: `demo/web:http/tcp port=80 clusterIPs=[10.96.0.10]
  10.244.1.1:8080 ready
  10.244.1.2:8080 serving,terminating
  10.244.1.3:8080 terminating
  10.244.1.4:8080 notready
`,
		},
		{
			name:     "slice port not matching a service port programs nothing",
			services: []*v1.Service{svc("demo", "web")},
			slices: []*discovery.EndpointSlice{
				slice("demo", "web-a", "web", []discovery.EndpointPort{port("metrics", 9100, tcp)}, epSpec{ip: "10.244.1.2"}),
				slice("demo", "ghost-a", "ghost", []discovery.EndpointPort{port("http", 80, tcp)}, epSpec{ip: "10.244.1.7"}),
			},
			want: "demo/web:http/tcp port=80 clusterIPs=[10.96.0.10]\n",
		},
		{
			name: "annotations and policies",
			services: []*v1.Service{svc("demo", "lb", func(s *v1.Service) {
				s.Annotations = map[string]string{AnnotationIPVSScheduler: "wlc"}
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.Ports[0].NodePort = 31000
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
				s.Spec.HealthCheckNodePort = 32000
				s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
				s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
				s.Spec.LoadBalancerSourceRanges = []string{" 203.0.113.0/24", "198.51.100.1/16", "bogus", "::ffff:10.0.0.0/104", "::ffff:0:0/80"}
			})},
			want:     "demo/lb:http/tcp port=80 nodePort=31000 clusterIPs=[10.96.0.10] scheduler=wlc affinity=3h0m0s eTP=Local iTP=Local hcNodePort=32000 sourceRanges=[10.0.0.0/8 198.51.0.0/16 203.0.113.0/24 ::/80]\n",
			problems: []string{"invalid-source-range"},
		},
		{
			name: "rebalancer opt-in and knobs",
			services: []*v1.Service{
				svc("demo", "defaults", func(s *v1.Service) { s.Annotations = map[string]string{AnnotationRebalance: "true"} }),
				svc("demo", "knobs", func(s *v1.Service) {
					s.Spec.ClusterIPs = []string{"10.96.0.11"}
					s.Annotations = map[string]string{AnnotationRebalance: "True", AnnotationRebalanceTolerance: "0.25",
						AnnotationRebalanceMaxResets: "5", AnnotationRebalanceMinAge: "30s", AnnotationRebalanceDryRun: "true"}
				}),
				svc("demo", "bad-knobs", func(s *v1.Service) {
					s.Spec.ClusterIPs = []string{"10.96.0.12"}
					s.Annotations = map[string]string{AnnotationRebalance: "true", AnnotationRebalanceTolerance: "-1",
						AnnotationRebalanceMaxResets: "lots", AnnotationRebalanceMinAge: "5", AnnotationRebalanceDryRun: "maybe"}
				}),
				// Never rebalanced: no opt-in, an explicit false, an unclear value.
				svc("demo", "off", func(s *v1.Service) {
					s.Spec.ClusterIPs = []string{"10.96.0.13"}
					s.Annotations = map[string]string{AnnotationRebalance: "false", AnnotationRebalanceTolerance: "0.5"}
				}),
				svc("demo", "unclear", func(s *v1.Service) {
					s.Spec.ClusterIPs = []string{"10.96.0.14"}
					s.Annotations = map[string]string{AnnotationRebalance: "yes"}
				}),
				svc("demo", "plain", func(s *v1.Service) {
					s.Spec.ClusterIPs = []string{"10.96.0.15"}
					s.Annotations = map[string]string{AnnotationRebalanceTolerance: "0.5"}
				}),
			},
			want: `demo/bad-knobs:http/tcp port=80 clusterIPs=[10.96.0.12] rebalance=tolerance:0.1,maxResets:20/s,minAge:5s,dryRun
demo/defaults:http/tcp port=80 clusterIPs=[10.96.0.10] rebalance=tolerance:0.1,maxResets:20/s,minAge:5s
demo/knobs:http/tcp port=80 clusterIPs=[10.96.0.11] rebalance=tolerance:0.25,maxResets:5/s,minAge:30s,dryRun
demo/off:http/tcp port=80 clusterIPs=[10.96.0.13]
demo/plain:http/tcp port=80 clusterIPs=[10.96.0.15]
demo/unclear:http/tcp port=80 clusterIPs=[10.96.0.14]
`,
			problems: []string{"invalid-rebalance-tolerance", "invalid-rebalance-max-resets", "invalid-rebalance-min-age", "invalid-rebalance-dry-run", "invalid-rebalance"},
		},
		{
			name: "invalid input is reported and corrected or skipped",
			services: []*v1.Service{
				svc("demo", "badsched", func(s *v1.Service) { s.Annotations = map[string]string{AnnotationIPVSScheduler: "fastest"} }),
				svc("demo", "badip", func(s *v1.Service) { s.Spec.ClusterIP = "10.96.0.300"; s.Spec.ClusterIPs = []string{"10.96.0.300"} }),
				svc("demo", "badports", func(s *v1.Service) {
					s.Spec.Type = v1.ServiceTypeNodePort
					s.Spec.ClusterIPs = []string{"10.96.0.11"}
					s.Spec.Ports = []v1.ServicePort{
						{Name: "a", Port: 0},
						{Name: "b", Port: 81, Protocol: "ICMP"},
						{Name: "c", Port: 82, NodePort: 70000},
						{Name: "c", Port: 83},
					}
				}),
			},
			want: `demo/badports:c/tcp port=82 clusterIPs=[10.96.0.11]
demo/badsched:http/tcp port=80 clusterIPs=[10.96.0.10]
`,
			problems: []string{"invalid-scheduler", "invalid-cluster-ip", "invalid-cluster-ip", "invalid-port", "invalid-protocol", "invalid-node-port", "duplicate-port"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, problems := stateOf(t, tc.opts, tc.services, tc.slices)
			if got := st.Dump(); got != tc.want {
				t.Errorf("state:\n%s\nwant:\n%s", got, tc.want)
			}
			var reasons []string
			for _, p := range problems {
				reasons = append(reasons, p.Reason)
			}
			if strings.Join(reasons, " ") != strings.Join(tc.problems, " ") {
				t.Errorf("problems %v, want %v (%v)", reasons, tc.problems, problems)
			}
		})
	}
}

func TestTranslateHints(t *testing.T) {
	tcp := v1.ProtocolTCP
	sl := slice("demo", "web-1", "web", []discovery.EndpointPort{port("http", 8080, tcp)}, epSpec{ip: "10.244.1.2", zone: "z1"})
	sl.Endpoints[0].Hints = &discovery.EndpointHints{
		ForZones: []discovery.ForZone{{Name: "z2"}, {Name: "z1"}},
		ForNodes: []discovery.ForNode{{Name: "node-a"}},
	}
	st, problems := stateOf(t, TranslateOptions{}, []*v1.Service{svc("demo", "web")}, []*discovery.EndpointSlice{sl})
	want := "demo/web:http/tcp port=80 clusterIPs=[10.96.0.10]\n  10.244.1.2:8080 ready zone=z1 hints=z1,z2 nodeHints=node-a\n"
	if st.Dump() != want || len(problems) != 0 {
		t.Fatalf("got\n%s\nwant\n%s\nproblems %v", st.Dump(), want, problems)
	}
}
