package e2e

import (
	"context"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/switchyard/switchyard/test/agentspec"
	"github.com/switchyard/switchyard/test/agentspec/nftdp"
	"github.com/switchyard/switchyard/test/apisource"
	"github.com/switchyard/switchyard/test/cluster/controlplane"
	"github.com/switchyard/switchyard/test/netnstest"
)

// apiInNode is where the agent finds the API server inside the node's
// namespace: a forwarder to the control plane's loopback port. The
// serving certificate is valid for 127.0.0.1.
const apiInNode = "127.0.0.1:6443"

// cluster is one scenario's control plane and the node's view of it.
type cluster struct {
	cp     *controlplane.ControlPlane
	admin  kubernetes.Interface
	env    *agentspec.Env
	config string // the agent's kubeconfig (ServiceAccount token)
}

// newCluster starts a control plane, makes the node namespace with the
// nftables Dataplane of the agent spec, applies deploy/rbac.yaml, mints a
// token for its ServiceAccount, creates the Node, and points the Env's
// agents at the API server: every object a scenario writes goes through
// it.
func newCluster(t *testing.T) *cluster { t.Helper(); return newClusterWithRole(t, nil) }

// newClusterWithRole is newCluster with deploy/rbac.yaml's ClusterRole
// changed by edit (nil: as shipped) before the token is minted.
func newClusterWithRole(t *testing.T, edit func(*rbacv1.ClusterRole)) *cluster {
	t.Helper()
	requireE2E(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cp := controlplane.StartT(t, controlplane.Options{Binaries: bins})
	admin, err := cp.Client()
	if err != nil {
		t.Fatal(err)
	}
	env := nftdp.NewEnv(t, "sy-e2e", agentBin, nftdp.NewDataplane)
	u, err := url.Parse(cp.URL)
	if err != nil {
		t.Fatal(err)
	}
	netnstest.Forward(t, env.Node, apiInNode, u.Host)

	rbac, err := os.ReadFile(filepath.Join("..", "..", "deploy", "rbac.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cp.Apply(ctx, rbac); err != nil {
		t.Fatalf("apply deploy/rbac.yaml: %v", err)
	}
	if edit != nil {
		role, err := admin.RbacV1().ClusterRoles().Get(ctx, "switchyard", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		edit(role)
		if _, err := admin.RbacV1().ClusterRoles().Update(ctx, role, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	token, err := cp.ServiceAccountToken(ctx, "kube-system", "switchyard", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(t.TempDir(), "kubeconfig")
	if err := cp.WriteKubeconfig(config, "https://"+apiInNode, token); err != nil {
		t.Fatal(err)
	}
	if _, err := cp.CreateNode(ctx, env.NodeName); err != nil {
		t.Fatal(err)
	}
	// The API server's own Service (no endpoints: its endpoint reconciler
	// is off for a loopback address) is on every node too.
	env.Ambient = []agentspec.Service{{Name: "kubernetes", ClusterIP: netip.MustParseAddr("10.96.0.1"), Port: 443}}
	env.Source = func(t *testing.T) agentspec.Source {
		return apisource.New(admin, "--kubeconfig", config)
	}
	return &cluster{cp: cp, admin: admin, env: env, config: config}
}

// manifestOnly are the scenarios about the manifests directory itself
// (unparseable files): an API server refuses such objects before any
// proxy sees them.
var manifestOnly = map[string]bool{"BadInput": true}

// TestE2EAgentSpec runs the agent spec against the real API server: the
// agent authenticates with the DaemonSet's ServiceAccount, so every
// scenario passing also shows deploy/rbac.yaml lets it do its job.
func TestE2EAgentSpec(t *testing.T) {
	requireE2E(t)
	for _, sc := range agentspec.Scenarios() {
		if manifestOnly[sc.Name] {
			continue
		}
		t.Run(sc.Name, func(t *testing.T) {
			c := newCluster(t)
			sc.Run(t, c.env)
		})
	}
}

// setNodeIP gives the cluster's Node the InternalIP ip.
func setNodeIP(t *testing.T, c *cluster, ip netip.Addr) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := c.admin.CoreV1().Nodes().Get(ctx, c.env.NodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Status.Addresses = append([]corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip.String()}}, n.Status.Addresses...)
	if _, err := c.admin.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}
