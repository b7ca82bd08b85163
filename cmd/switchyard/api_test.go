package main

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/switchyard/switchyard/agentapi"
	"github.com/switchyard/switchyard/dataplane"
)

// apiTestDataplane counts its syncs and full syncs.
type apiTestDataplane struct {
	mu          sync.Mutex
	syncs, full int
}

func (d *apiTestDataplane) Name() string { return "apitest" }
func (d *apiTestDataplane) Sync(_ context.Context, _ *dataplane.State, c dataplane.Changes) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.syncs++
	if c.Full {
		d.full++
	}
	return nil
}
func (d *apiTestDataplane) Cleanup(context.Context) error { return nil }

func (d *apiTestDataplane) counts() (int, int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.syncs, d.full
}

// serveAPI against a real sync loop: status and services reflect its
// syncs, a sync request makes a full sync, stop removes the socket.
func TestServeAPI(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tracker := dataplane.NewTracker("node-a", dataplane.TranslateOptions{ProxyName: "switchyard"}, func(dataplane.Problem) {})
	tracker.OnServiceUpsert(&v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web"},
		Spec: v1.ServiceSpec{Type: v1.ServiceTypeClusterIP, ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"},
			Ports: []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	})
	tracker.SetServicesSynced()
	tracker.SetEndpointSlicesSynced()
	dp := &apiTestDataplane{}
	syncer := dataplane.NewSyncer(tracker, dp, 0, time.Hour)
	done := make(chan struct{})
	go func() { syncer.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	syncer.Notify()

	sock := filepath.Join(t.TempDir(), "run", "switchyard.sock")
	stop, err := serveAPI(sock, "node-a", syncer, dp, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := agentapi.NewClient(sock)
	var st *agentapi.Status
	apiWait(t, "the first sync", func() bool {
		st, err = c.Status(ctx)
		return err == nil && st.Syncs >= 1
	})
	if st.NodeName != "node-a" || st.SyncChain != "apitest" || st.Dataplane != "" || st.Version == "" || st.ServicePorts != 1 {
		t.Errorf("status %+v", st)
	}
	sl, err := c.Services(ctx, "", "")
	if err != nil || len(sl.Services) != 1 || sl.Services[0].Name != "web" {
		t.Errorf("services: %+v, %v", sl, err)
	}
	_, fullBefore := dp.counts()
	if _, err := c.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	apiWait(t, "the requested full sync", func() bool { _, full := dp.counts(); return full > fullBefore })

	stop()
	if _, err := os.Lstat(sock); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket left after stop: %v", err)
	}
}

func TestServeAPIDisabled(t *testing.T) {
	stop, err := serveAPI("", "node-a", nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop()
}

// apiWait polls cond (bounded: 10 s) until it holds.
func apiWait(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
