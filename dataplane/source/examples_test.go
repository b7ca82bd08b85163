package source

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/switchyard/switchyard/dataplane"
)

// TestExamples loads the repository's examples/ through RunManifests and a
// real Tracker and checks the exact State, so the examples cannot rot.
// Update examples/README.md along with this test.
func TestExamples(t *testing.T) {
	tr := dataplane.NewTracker(testNode, dataplane.TranslateOptions{}, func(p dataplane.Problem) {
		t.Errorf("tracker problem: %v", p)
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- RunManifests(ctx, "../../examples", tr, nil, func(p ManifestProblem) { t.Errorf("manifest problem: %v", p) })
	}()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("RunManifests: %v", err)
			}
		case <-time.After(waitTimeout):
			t.Errorf("RunManifests did not return")
		}
	}()
	eventually(t, "examples loaded", tr.Initialized)

	// Initialized is set after the whole first read was delivered, so one
	// Drain sees all of it.
	st, changes := tr.Drain()
	const want = `demo/dns:udp port=53 clusterIPs=[10.96.100.53]
  10.244.1.53:53 ready
demo/echo:http/tcp port=8080 nodePort=30080 clusterIPs=[10.96.100.80]
  10.244.1.30:8080 ready
demo/web:http/tcp port=80 clusterIPs=[10.96.100.10]
  10.244.1.10:8080 ready
  10.244.1.11:8080 ready
demo/web-lb:http/tcp port=80 clusterIPs=[10.96.100.90] lbIPs=[192.0.2.10]
  10.244.1.10:8080 ready
  10.244.1.11:8080 ready
`
	if got := st.Dump(); got != want {
		t.Errorf("State:\n%s\nwant:\n%s", got, want)
	}
	if len(changes.Services) != 4 {
		t.Errorf("changed Services %v, want 4", changes.Services)
	}

	// The dump leaves out fields that must be at their defaults; check the
	// full model of one port.
	web := st.Services[dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: "demo", Name: "web"}, Port: "http", Protocol: dataplane.TCP}]
	wantWeb := &dataplane.ServicePort{
		Name:       dataplane.ServicePortName{ServiceName: dataplane.ServiceName{Namespace: "demo", Name: "web"}, Port: "http", Protocol: dataplane.TCP},
		Port:       80,
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.100.10")},
	}
	if !web.Equal(wantWeb) {
		t.Errorf("demo/web: %+v, want %+v", web, wantWeb)
	}
}
