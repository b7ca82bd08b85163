// Package deploy holds no code: its tests check the manifests, the
// Dockerfile and its entrypoint script in this directory against the code
// they deploy.
package deploy

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	"sigs.k8s.io/yaml"
)

// neededRules is every API call the agent makes, with the code making it.
// deploy/rbac.yaml must grant exactly these: a rule here without a caller,
// or a grant in the file without a rule here, fails the test.
var neededRules = []struct {
	group, resource string
	verbs           []string
	why             string
}{
	// dataplane/source/informers.go RunInformers: the Service informer
	// (label selector on service-proxy-name); informers list and watch,
	// they never get.
	{"", "services", []string{"list", "watch"}, "Service informer"},
	// RunInformers: the EndpointSlice informer.
	{"discovery.k8s.io", "endpointslices", []string{"list", "watch"}, "EndpointSlice informer"},
	// RunInformers: this node's Node (field selector metadata.name), for
	// its addresses, zone and deletion (/healthz).
	{"", "nodes", []string{"list", "watch"}, "Node informer"},
	// RunInformers with a PodHandler (hostport): this node's Pods (field
	// selector spec.nodeName).
	{"", "pods", []string{"list", "watch"}, "Pod informer (hostPort)"},
	// cmd/switchyard/rebalance.go newEventRecorder: client-go's
	// tools/record into typedcorev1.EventSinkImpl (core/v1 Events): Create
	// for a new Event, Patch when it aggregates a repeat (record/event.go
	// recordToSink); Update is never called.
	{"", "events", []string{"create", "patch"}, "rebalancer Events"},
}

// docs splits a multi-document YAML file.
func docs(t *testing.T, name string) [][]byte {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, d := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(data), -1) {
		if strings.TrimSpace(regexp.MustCompile(`(?m)^\s*#.*$`).ReplaceAllString(d, "")) != "" {
			out = append(out, []byte(d))
		}
	}
	return out
}

func kindOf(t *testing.T, doc []byte) string {
	t.Helper()
	var m struct {
		Kind string `json:"kind"`
	}
	if err := yaml.Unmarshal(doc, &m); err != nil {
		t.Fatal(err)
	}
	return m.Kind
}

func strict(t *testing.T, name string, doc []byte, into any) {
	t.Helper()
	if err := yaml.UnmarshalStrict(doc, into); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

type rbacObjects struct {
	sa      corev1.ServiceAccount
	role    rbacv1.ClusterRole
	binding rbacv1.ClusterRoleBinding
}

func readRBAC(t *testing.T) rbacObjects {
	t.Helper()
	var o rbacObjects
	for _, d := range docs(t, "rbac.yaml") {
		switch k := kindOf(t, d); k {
		case "ServiceAccount":
			strict(t, "rbac.yaml", d, &o.sa)
		case "ClusterRole":
			strict(t, "rbac.yaml", d, &o.role)
		case "ClusterRoleBinding":
			strict(t, "rbac.yaml", d, &o.binding)
		default:
			t.Fatalf("rbac.yaml: unexpected %s", k)
		}
	}
	return o
}

func readDaemonSet(t *testing.T) appsv1.DaemonSet {
	t.Helper()
	var ds appsv1.DaemonSet
	strict(t, "daemonset.yaml", docs(t, "daemonset.yaml")[0], &ds)
	return ds
}

func agentContainer(t *testing.T, ds *appsv1.DaemonSet) *corev1.Container {
	t.Helper()
	for i := range ds.Spec.Template.Spec.Containers {
		if c := &ds.Spec.Template.Spec.Containers[i]; c.Name == "switchyard" {
			return c
		}
	}
	t.Fatal("daemonset.yaml: no container named switchyard")
	return nil
}

func TestRBACGrantsExactlyWhatTheAgentCalls(t *testing.T) {
	o := readRBAC(t)
	granted := map[string]bool{}
	for _, r := range o.role.Rules {
		if len(r.ResourceNames) > 0 || len(r.NonResourceURLs) > 0 {
			t.Errorf("unexpected rule %+v", r)
		}
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					if g == "*" || res == "*" || v == "*" {
						t.Errorf("wildcard in rule %+v", r)
					}
					granted[g+"/"+res+" "+v] = true
				}
			}
		}
	}
	want := map[string]bool{}
	for _, n := range neededRules {
		for _, v := range n.verbs {
			want[n.group+"/"+n.resource+" "+v] = true
			if !granted[n.group+"/"+n.resource+" "+v] {
				t.Errorf("rbac.yaml does not grant %s on %s/%s, needed by the %s", v, n.group, n.resource, n.why)
			}
		}
	}
	for g := range granted {
		if !want[g] {
			t.Errorf("rbac.yaml grants %s, which no code of the agent uses", g)
		}
	}
	if o.binding.RoleRef.Kind != "ClusterRole" || o.binding.RoleRef.Name != o.role.Name ||
		len(o.binding.Subjects) != 1 || o.binding.Subjects[0].Kind != "ServiceAccount" ||
		o.binding.Subjects[0].Name != o.sa.Name || o.binding.Subjects[0].Namespace != o.sa.Namespace {
		t.Errorf("the binding does not bind %s to %s/%s: %+v", o.role.Name, o.sa.Namespace, o.sa.Name, o.binding)
	}
	ds := readDaemonSet(t)
	if ds.Namespace != o.sa.Namespace || ds.Spec.Template.Spec.ServiceAccountName != o.sa.Name {
		t.Errorf("the DaemonSet (%s, serviceAccountName %q) does not run as %s/%s",
			ds.Namespace, ds.Spec.Template.Spec.ServiceAccountName, o.sa.Namespace, o.sa.Name)
	}
}

// The DaemonSet's flags and mounts fit the agent, the ConfigMap and the
// image: --config names a key of the mounted switchyard-config, the
// paths the agent uses by default are mounted from the host, and the
// entrypoint is where the Dockerfile puts it.
func TestDaemonSetFitsConfigMapAndImage(t *testing.T) {
	ds := readDaemonSet(t)
	spec := ds.Spec.Template.Spec
	c := agentContainer(t, &ds)
	if !spec.HostNetwork {
		t.Error("the agent must run in the host's network namespace")
	}
	if len(c.Command) < 2 || c.Command[0] != "/usr/local/bin/select-iptables" || c.Command[1] != "/switchyard" {
		t.Errorf("command %v: want the image's entrypoint /usr/local/bin/select-iptables, then /switchyard", c.Command)
	}
	if df := readFile(t, "Dockerfile"); !strings.Contains(df, "COPY deploy/select-iptables.sh /usr/local/bin/select-iptables\n") ||
		!strings.Contains(df, "COPY --from=build /out/switchyard /out/yardctl /\n") {
		t.Error("Dockerfile: select-iptables or the binaries are not where the DaemonSet runs them")
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
	}
	var config string
	for _, a := range c.Command {
		if v, ok := strings.CutPrefix(a, "--config="); ok {
			config = v
		}
	}
	m, ok := mounts[filepath.Dir(config)]
	if config == "" || !ok || volumes[m.Name].ConfigMap == nil {
		t.Fatalf("--config=%q is not in a mounted ConfigMap", config)
	}
	var cm corev1.ConfigMap
	strict(t, "switchyard-config.yaml", docs(t, "switchyard-config.yaml")[0], &cm)
	if volumes[m.Name].ConfigMap.Name != cm.Name || cm.Namespace != ds.Namespace {
		t.Errorf("the config volume names ConfigMap %q, switchyard-config.yaml is %s/%s", volumes[m.Name].ConfigMap.Name, cm.Namespace, cm.Name)
	}
	if _, ok := cm.Data[filepath.Base(config)]; !ok {
		t.Errorf("ConfigMap %s has no key %s", cm.Name, filepath.Base(config))
	}
	// Defaults of cmd/switchyard/config.go and where iptables locks.
	for path, what := range map[string]string{
		"/lib/modules":        "modprobe ip_vs",
		"/run/xtables.lock":   "the xtables lock shared with the node's other iptables users",
		"/var/run/switchyard": "--state-dir",
		"/run/switchyard":     "--api-socket's directory (yardctl)",
		"/sys/fs/bpf":         "--bpf-pin-path's bpf file system",
		"/run/netns":          "pods' network namespaces (rebalancer socket closer)",
	} {
		m, ok := mounts[path]
		if !ok || volumes[m.Name].HostPath == nil {
			t.Errorf("%s (%s) is not mounted from the host", path, what)
		}
	}
	for _, e := range c.Env {
		if strings.HasPrefix(e.Name, "KUBERNETES_SERVICE_") {
			if ref := e.ValueFrom.ConfigMapKeyRef; ref == nil || ref.Name != cm.Name || ref.Optional == nil || !*ref.Optional {
				t.Errorf("%s: want an optional key of ConfigMap %s", e.Name, cm.Name)
			}
		}
	}
}

// deploy/unprivileged-patch.yaml applies to the DaemonSet as `kubectl
// patch` does (strategic merge) and changes only the security context and
// the bpffs mount's propagation.
func TestUnprivilegedPatchApplies(t *testing.T) {
	orig := readDaemonSet(t)
	origJSON, err := json.Marshal(orig)
	if err != nil {
		t.Fatal(err)
	}
	patch, err := yaml.YAMLToJSON([]byte(readFile(t, "unprivileged-patch.yaml")))
	if err != nil {
		t.Fatal(err)
	}
	out, err := strategicpatch.StrategicMergePatch(origJSON, patch, appsv1.DaemonSet{})
	if err != nil {
		t.Fatal(err)
	}
	var got appsv1.DaemonSet
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	c, oc := agentContainer(t, &got), agentContainer(t, &orig)
	sc := c.SecurityContext
	if sc == nil || sc.Privileged == nil || *sc.Privileged || sc.Capabilities == nil ||
		!slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) == 0 {
		t.Errorf("patched security context %+v", sc)
	}
	if len(c.VolumeMounts) != len(oc.VolumeMounts) {
		t.Errorf("the patch changed the number of mounts: %d -> %d", len(oc.VolumeMounts), len(c.VolumeMounts))
	}
	for _, m := range c.VolumeMounts {
		if m.MountPropagation != nil && *m.MountPropagation == corev1.MountPropagationBidirectional {
			t.Errorf("%s keeps Bidirectional propagation, which needs a privileged container", m.MountPath)
		}
	}
	if !slices.Equal(c.Command, oc.Command) || len(got.Spec.Template.Spec.Volumes) != len(orig.Spec.Template.Spec.Volumes) {
		t.Error("the patch changed more than the security context and mounts")
	}
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// The Dockerfile builds with the Go release of go.mod, statically, both
// binaries; its build context keeps every package they import; the
// entrypoint script parses. Without a docker daemon this is what can be
// checked: the same `go build` as the build stage, and the result static.
func TestDockerfileBuild(t *testing.T) {
	df := readFile(t, "Dockerfile")
	goMod := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindStringSubmatch(readFile(t, "../go.mod"))
	arg := regexp.MustCompile(`(?m)^ARG GO_VERSION=(\S+)$`).FindStringSubmatch(df)
	if goMod == nil || arg == nil || arg[1] != goMod[1] {
		t.Errorf("Dockerfile GO_VERSION %v, go.mod's go line %v: want the same release", arg, goMod)
	}
	if !strings.Contains(df, "FROM golang:${GO_VERSION}-") || !strings.Contains(df, "ENV CGO_ENABLED=0\n") {
		t.Error("Dockerfile: the build stage must use golang:${GO_VERSION} with CGO_ENABLED=0")
	}
	builds := regexp.MustCompile(`go build (-trimpath -ldflags=-s) -o /out/(\w+) (\./cmd/\w+)`).FindAllStringSubmatch(df, -1)
	if len(builds) != 2 {
		t.Fatalf("Dockerfile: want the two go build lines (switchyard, yardctl), got %v", builds)
	}
	if out, err := exec.Command("sh", "-n", "select-iptables.sh").CombinedOutput(); err != nil {
		t.Errorf("select-iptables.sh: %v\n%s", err, out)
	}
	if fi, err := os.Stat("select-iptables.sh"); err != nil || fi.Mode()&0o111 == 0 {
		t.Errorf("select-iptables.sh must be executable (COPY keeps the mode): %v", err)
	}

	ignore := readFile(t, "Dockerfile.dockerignore")
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go toolchain")
	}
	list := exec.Command(goBin, "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", "../cmd/switchyard", "../cmd/yardctl")
	deps, err := list.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, p := range strings.Fields(string(deps)) {
		rel, ok := strings.CutPrefix(p, "github.com/switchyard/switchyard/")
		if !ok {
			continue
		}
		if top := strings.SplitN(rel, "/", 2)[0]; !strings.Contains(ignore, "\n!"+top+"/\n") {
			t.Errorf("Dockerfile.dockerignore leaves out %s/, which %s needs", top, p)
		}
	}

	if testing.Short() {
		t.Skip("building the binaries skipped in -short mode")
	}
	dir := t.TempDir()
	for _, b := range builds {
		// Its own flags (static, trimmed) share little of the build cache:
		// a cold build of everything, next to the other packages' tests.
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		out := filepath.Join(dir, b[2])
		cmd := exec.CommandContext(ctx, goBin, "build", "-trimpath", "-ldflags=-s", "-o", out, b[3])
		cmd.Dir = ".."
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		cancel()
		if err != nil {
			t.Fatalf("go build %s: %v\n%s", b[3], err, stderr.String())
		}
		f, err := elf.Open(out)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
				t.Errorf("%s is dynamically linked: it would not run on every base image", b[2])
			}
		}
		f.Close()
	}
}
