package source

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
)

const okService = `apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: http}]
`

func keysOf(objs []manifestObject) []string {
	var out []string
	for _, o := range objs {
		out = append(out, o.key.String())
	}
	return out
}

func TestDecodeFile(t *testing.T) {
	for _, tc := range []struct {
		name, file, data string
		want             []string
	}{
		{"multi-document yaml with empty and foreign documents", "a.yaml", `---
` + okService + `---
# only a comment
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ignored}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
---
apiVersion: v1
kind: Node
metadata: {name: node-a, namespace: ignored}
`, []string{"Service demo/web", "EndpointSlice default/web-1", "Node node-a"}},
		{"kind List with nested kinds", "l.yml", `apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: a}
  spec: {clusterIP: 10.96.0.1, ports: [{port: 53, protocol: UDP}]}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: a-1, labels: {kubernetes.io/service-name: a}}
  addressType: IPv6
  endpoints: [{addresses: ["fd00::1"]}]
`, []string{"Service default/a", "EndpointSlice default/a-1"}},
		{"typed lists whose items carry no kind", "s.json", `{"apiVersion":"v1","kind":"ServiceList","items":[
  {"metadata":{"name":"a"},"spec":{"clusterIP":"10.96.0.1","ports":[{"port":80}]}},
  {"metadata":{"name":"b","namespace":"x"},"spec":{"clusterIP":"None"}}]}
{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSliceList","items":[
  {"metadata":{"name":"a-1","labels":{"kubernetes.io/service-name":"a"}},"addressType":"IPv4"}]}
`, []string{"Service default/a", "Service x/b", "EndpointSlice default/a-1"}},
		{"lists of unused kinds are ignored", "d.yaml", `apiVersion: apps/v1
kind: DeploymentList
items: [{metadata: {name: d}}]
---
apiVersion: example.com/v1
kind: AllowList
items: {not: a list}
`, nil},
		{"external name needs no cluster IP", "e.yaml", `apiVersion: v1
kind: Service
metadata: {name: ext}
spec: {type: ExternalName, externalName: example.com}
`, []string{"Service default/ext"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs, problems, err := decodeFile(tc.file, []byte(tc.data), false, nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(problems) > 0 {
				t.Errorf("problems: %v", problems)
			}
			if got := keysOf(objs); !slices.Equal(got, tc.want) {
				t.Errorf("objects %q, want %q", got, tc.want)
			}
		})
	}
}

func TestDecodeFileParseErrors(t *testing.T) {
	for _, tc := range []struct{ file, data string }{
		{"a.yaml", "apiVersion: v1\nkind: Service\n  bad: indent\n"},
		{"a.yaml", "apiVersion: v1\nkind: Service\nkind: Service\n"}, // duplicate key
		{"a.json", `{"apiVersion": "v1", "kind": `},
	} {
		if _, _, err := decodeFile(tc.file, []byte(tc.data), false, nil); err == nil {
			t.Errorf("%s %q: no error", tc.file, tc.data)
		}
	}
}

// Each case is one bad object next to a good one: the bad one is reported
// with its reason, the good one survives.
func TestDecodeFileRejectsObjects(t *testing.T) {
	svc := func(spec string) string {
		return "apiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec: " + spec + "\n"
	}
	slice := func(rest string) string {
		return "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: bad, labels: {kubernetes.io/service-name: web}}\n" + rest + "\n"
	}
	for _, tc := range []struct {
		name, doc, reason, detail string
	}{
		{"no kind", "metadata: {name: bad}", ReasonDecodeError, "apiVersion and kind are required"},
		{"not an object", "just a string", ReasonDecodeError, "not a Kubernetes object"},
		{"old EndpointSlice version", "apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {name: bad}", ReasonUnsupportedVersion, "use discovery.k8s.io/v1"},
		{"unknown field", svc("{clusterIP: 10.96.0.2, prots: []}"), ReasonDecodeError, `unknown field "spec.prots"`},
		{"wrong field type", svc("{clusterIP: 10.96.0.2, ports: [{port: eighty}]}"), ReasonDecodeError, "port"},
		{"service without name", "apiVersion: v1\nkind: Service\nspec: {clusterIP: 10.96.0.2, ports: [{port: 80}]}", ReasonInvalidObject, "metadata.name: Required value"},
		{"service name not a DNS-1035 label", "apiVersion: v1\nkind: Service\nmetadata: {name: 1bad}\nspec: {clusterIP: 10.96.0.2, ports: [{port: 80}]}", ReasonInvalidObject, "metadata.name: Invalid value"},
		{"port out of range", svc("{clusterIP: 10.96.0.2, ports: [{port: 70000}]}"), ReasonInvalidObject, "spec.ports[0].port: Invalid value: 70000"},
		{"port zero", svc("{clusterIP: 10.96.0.2, ports: [{port: 0}]}"), ReasonInvalidObject, "spec.ports[0].port"},
		{"bad protocol", svc("{clusterIP: 10.96.0.2, ports: [{port: 80, protocol: ICMP}]}"), ReasonInvalidObject, `spec.ports[0].protocol: Unsupported value: "ICMP"`},
		{"no ports", svc("{clusterIP: 10.96.0.2}"), ReasonInvalidObject, "spec.ports: Required value"},
		{"unnamed port among several", svc("{clusterIP: 10.96.0.2, ports: [{port: 80}, {name: b, port: 81}]}"), ReasonInvalidObject, "spec.ports[0].name: Required value"},
		{"duplicate port", svc("{clusterIP: 10.96.0.2, ports: [{name: a, port: 80}, {name: b, port: 80, protocol: TCP}]}"), ReasonInvalidObject, "spec.ports[1]: Duplicate value"},
		{"bad target port name", svc("{clusterIP: 10.96.0.2, ports: [{port: 80, targetPort: not_a_name}]}"), ReasonInvalidObject, "spec.ports[0].targetPort"},
		{"node port on ClusterIP", svc("{clusterIP: 10.96.0.2, ports: [{port: 80, nodePort: 30000}]}"), ReasonInvalidObject, "spec.ports[0].nodePort: Forbidden"},
		{"no cluster IP", svc("{ports: [{port: 80}]}"), ReasonInvalidObject, "spec.clusterIP: Required value"},
		{"bad cluster IP", svc("{clusterIP: 10.96.0.300, ports: [{port: 80}]}"), ReasonInvalidObject, "spec.clusterIP: Invalid value"},
		{"bad type", svc("{type: Magic, clusterIP: 10.96.0.2, ports: [{port: 80}]}"), ReasonInvalidObject, "spec.type: Unsupported value"},
		{"bad LB IP", svc("{type: LoadBalancer, clusterIP: 10.96.0.2, ports: [{port: 80}]}\nstatus: {loadBalancer: {ingress: [{ip: nope}]}}"), ReasonInvalidObject, "status.loadBalancer.ingress[0].ip"},
		{"slice without service-name label", "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: bad}\naddressType: IPv4", ReasonMissingServiceName, "kubernetes.io/service-name"},
		{"slice without addressType", slice(""), ReasonInvalidObject, "addressType: Required value"},
		{"slice with bad addressType", slice("addressType: IPv5"), ReasonInvalidObject, `addressType: Unsupported value: "IPv5"`},
		{"slice address of the wrong family", slice("addressType: IPv4\nendpoints: [{addresses: ['fd00::1']}]"), ReasonInvalidObject, "endpoints[0].addresses[0]"},
		{"slice endpoint without address", slice("addressType: IPv4\nendpoints: [{addresses: []}]"), ReasonInvalidObject, "endpoints[0].addresses: Required value"},
		{"slice port out of range", slice("addressType: IPv4\nports: [{port: 65536}]"), ReasonInvalidObject, "ports[0].port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := okService + "---\n" + tc.doc
			objs, problems, err := decodeFile("f.yaml", []byte(data), false, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := keysOf(objs); !slices.Equal(got, []string{"Service demo/web"}) {
				t.Errorf("objects %q, want only the good Service", got)
			}
			if len(problems) != 1 {
				t.Fatalf("problems %v, want one", problems)
			}
			p := problems[0]
			if p.Reason != tc.reason || !strings.Contains(p.Detail, tc.detail) || p.File != "f.yaml" || p.KeptPrevious {
				t.Errorf("problem %+v, want reason %s with detail containing %q", p, tc.reason, tc.detail)
			}
		})
	}
}

func TestDecodeFileKeepsLastAcceptedVersion(t *testing.T) {
	v1objs, problems, err := decodeFile("f.yaml", []byte(okService), false, nil)
	if err != nil || len(problems) > 0 {
		t.Fatal(err, problems)
	}
	broken := strings.Replace(okService, "port: 80", "port: 80000", 1)
	objs, problems, err := decodeFile("f.yaml", []byte(broken), false, v1objs)
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 1 || objs[0].obj.(*v1.Service).Spec.Ports[0].Port != 80 {
		t.Errorf("objects %v, want the previous Service", objs)
	}
	if len(problems) != 1 || !problems[0].KeptPrevious || problems[0].Object != "Service demo/web" {
		t.Errorf("problems %+v", problems)
	}
}

func TestDecodeFileDuplicateInFile(t *testing.T) {
	second := strings.Replace(okService, "port: 80", "port: 81", 1)
	objs, problems, err := decodeFile("f.yaml", []byte(okService+"---\n"+second), false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 1 || objs[0].obj.(*v1.Service).Spec.Ports[0].Port != 80 {
		t.Errorf("objects %v, want the first definition", objs)
	}
	if len(problems) != 1 || problems[0].Reason != ReasonDuplicateObject {
		t.Errorf("problems %+v", problems)
	}
}

func TestDecodeFilePods(t *testing.T) {
	pod := `apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  containers:
  - name: c
    ports: [{containerPort: 80, hostPort: %d}]
`
	good, bad := fmt.Sprintf(pod, 8080), fmt.Sprintf(pod, 100000)
	// Without a PodHandler, Pods are not even validated.
	objs, problems, err := decodeFile("p.yaml", []byte(good+"---\n"+bad), false, nil)
	if err != nil || len(objs) != 0 || len(problems) != 0 {
		t.Errorf("pods off: %v %v %v", objs, problems, err)
	}
	objs, problems, err = decodeFile("p.yaml", []byte(good), true, nil)
	if err != nil || !slices.Equal(keysOf(objs), []string{"Pod default/p"}) || len(problems) != 0 {
		t.Errorf("pods on: %v %v %v", keysOf(objs), problems, err)
	}
	_, problems, _ = decodeFile("p.yaml", []byte(bad), true, nil)
	if len(problems) != 1 || !strings.Contains(problems[0].Detail, "hostPort") {
		t.Errorf("bad hostPort: %v", problems)
	}
}

func TestIsManifestName(t *testing.T) {
	for name, want := range map[string]bool{
		"web.yaml": true, "web.yml": true, "web.json": true, "WEB.YAML": true,
		".web.yaml": false, "..data": false, "web.yaml~": false, "web.yaml.bak": false, "README.md": false, "4913": false,
	} {
		if got := isManifestName(name); got != want {
			t.Errorf("isManifestName(%q) = %t", name, got)
		}
	}
}
