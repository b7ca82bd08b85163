// Command switchyard is the node agent: it watches Services and
// EndpointSlices (from an API server, or from a directory of manifests in
// standalone mode) and programs the node's kernel through a dataplane.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/agentapi"
	"github.com/switchyard/switchyard/conntrack/rebalance"
	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/dataplane/healthcheck"
	"github.com/switchyard/switchyard/dataplane/metrics"
	"github.com/switchyard/switchyard/dataplane/source"
	"github.com/switchyard/switchyard/ebpf"
	"github.com/switchyard/switchyard/hostport"
	"github.com/switchyard/switchyard/ipvs"
)

func main() {
	os.Exit(mainWithArgs(os.Args[1:]))
}

func mainWithArgs(args []string) int {
	cfg, err := parseFlags(args)
	if err != nil {
		fmt.Fprintln(os.Stderr, "switchyard:", err)
		return 2
	}
	defer klog.Flush()
	routeStdlog()

	// SIGTERM and SIGINT stop the agent but leave the dataplane in place:
	// traffic keeps flowing while the agent is down or being upgraded.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	if cfg.cleanup {
		dp, err := newCleanupDataplane(cfg)
		if err != nil {
			klog.ErrorS(err, "Cannot set up the dataplanes to clean up")
			return 1
		}
		if err := dp.Cleanup(ctx); err != nil {
			klog.ErrorS(err, "Cleanup incomplete")
			return 1
		}
		klog.InfoS("Cleanup done", "dataplane", dp.Name())
		return 0
	}
	applyConntrackLimits(cfg)
	dp, err := newDataplane(cfg)
	if err != nil {
		klog.ErrorS(err, "Cannot set up the dataplane")
		return 1
	}
	err = run(ctx, cfg, dp)
	// Close, not Cleanup: the pinned programs keep translating while the
	// agent is down.
	closeSocketLB(cfg, dp)
	if err != nil && !errors.Is(err, context.Canceled) {
		klog.ErrorS(err, "Agent stopped")
		return 1
	}
	klog.InfoS("Stopping; the dataplane stays programmed")
	return 0
}

// run feeds the chosen source into the tracker and syncs dp until ctx ends.
func run(ctx context.Context, cfg *config, dp dataplane.Dataplane) error {
	m := metrics.New(nil)
	m.SetDataplane(dp.Name())
	lb, hasLB := findPart[*ebpf.SocketLB](dp)
	m.SetBPFSocketLB(cfg.bpfSocketLB, hasLB)
	tracker := dataplane.NewTracker(cfg.hostnameOverride, dataplane.TranslateOptions{ProxyName: cfg.proxyName}, func(p dataplane.Problem) {
		m.ObjectProblem(p)
		if p.Fatal {
			klog.ErrorS(nil, "Object rejected", "object", p.Object, "reason", p.Reason, "detail", p.Detail)
		} else {
			klog.InfoS("Object corrected", "object", p.Object, "reason", p.Reason, "detail", p.Detail)
		}
	})
	if len(cfg.nodeIPs) > 0 {
		tracker.SetNodeIPs(cfg.nodeIPs)
	}
	// The agent's own health (/healthz, /livez), kube-proxy's semantics:
	// unhealthy when a change waited for a sync longer than twice the
	// sync period.
	health := healthcheck.NewProxyHealth(2*cfg.syncPeriod, nil)
	if cfg.healthzBindAddress != "" {
		addr, err := serveHTTP(ctx, "healthz", cfg.healthzBindAddress, health.Handler())
		if err != nil {
			return err
		}
		klog.InfoS("Serving health checks", "address", addr.String(), "paths", "/healthz /livez")
	}
	// healthCheckNodePort servers come last: they answer for the node only
	// once the rules before them are in place. Their serviceProxyHealthy is
	// the agent's health.
	hc := healthcheck.New(cfg.nodePortAddresses, health.Healthy)
	syncer := dataplane.NewSyncer(tracker, dataplane.Chain{dp, hc}, cfg.minSyncPeriod, cfg.syncPeriod)
	syncer.Observe(health)
	syncer.Observe(m)
	// The rebalancer's rounds, for yardctl conntrack.
	var rounds *rebalance.Recorder
	var roundsAPI agentapi.RebalanceStatuses
	if cfg.rebalance {
		rounds = rebalance.NewRecorder()
		roundsAPI = rounds
	}
	stopAPI, err := serveAPI(cfg.apiSocket, cfg.hostnameOverride, syncer, dp, roundsAPI)
	if err != nil {
		klog.ErrorS(err, "Not serving the agent API; yardctl will read the kernel only", "socket", cfg.apiSocket)
	} else {
		defer stopAPI()
	}
	m.AddRepairSources(repairSources(dp)...)
	// What is costly to read (whole kernel tables) is read by a background
	// refresher into caches; scrapes read the caches.
	var (
		refresh []metrics.RefreshFunc
		closers []func() // after the refresher stopped
	)
	p, isIPVS := findPart[*ipvs.Proxier](dp)
	if isIPVS {
		m.AddBackendSource(func() []metrics.BackendConns { return ipvsBackendConns(p.Snapshot()) }, cfg.metricsPerBackend, cfg.metricsBackendCap)
		traffic := &metrics.TrafficCache{}
		m.AddTrafficSource(traffic.Load, cfg.metricsPerBackend, cfg.metricsBackendCap)
		refresh = append(refresh, ipvsTrafficReader(p, traffic))
	}
	if cfg.metricsConntrack && cfg.metricsBindAddress != "" {
		// IPVS counts connections itself; for nftables conntrack is the
		// only source.
		read, closeFlows, err := addConntrackMetrics(m, cfg, syncer.View, !isIPVS)
		if err != nil {
			klog.ErrorS(err, "No conntrack metrics")
		} else {
			refresh, closers = append(refresh, read), append(closers, closeFlows)
		}
	}
	if hasLB {
		// The BPF counts are per backend address; the model's endpoints
		// name the Service ports.
		bpf := &metrics.Cache[[]metrics.BPFConnections]{}
		m.AddBPFSource(bpf.Load, cfg.metricsPerBackend, cfg.metricsBackendCap)
		refresh = append(refresh, socketLBReader(lb, syncer.View, bpf))
	}
	if cfg.metricsBindAddress != "" {
		addr, err := serveHTTP(ctx, "metrics", cfg.metricsBindAddress, m.Handler())
		if err != nil {
			return err
		}
		klog.InfoS("Serving metrics", "address", addr.String(), "path", "/metrics")
		go func() {
			metrics.NewRefresher(cfg.metricsRefreshInterval, nil, refresh...).Run(ctx)
			for _, c := range closers {
				c()
			}
		}()
	}
	// With a cluster: one client for the informers and the rebalancer's
	// Events.
	var client kubernetes.Interface
	if cfg.manifests == "" {
		c, err := source.ClientFromFlags(cfg.kubeconfig, cfg.master)
		if err != nil {
			return err
		}
		client = c
	}
	if cfg.rebalance {
		var observer rebalance.Observer = rebalance.Observers{m.AddRebalance(), rounds}
		if client != nil {
			recorder, stop := newEventRecorder(client, cfg.hostnameOverride)
			defer stop()
			observer = eventObserver{Observer: observer, recorder: recorder, node: cfg.hostnameOverride}
		}
		runner, release, err := newRebalancer(ctx, cfg, dp, observer)
		switch {
		case err != nil:
			klog.ErrorS(err, "No connection rebalancer; Services keep working")
		case runner != nil:
			runner.SteerWith(&syncSteerer{tracker: tracker, syncer: syncer, timeout: cfg.minSyncPeriod + steerSyncMargin, set: map[dataplane.ServicePortName]bool{}})
			go func() {
				runner.Run(ctx, cfg.rebalanceInterval, syncer.View, syncer.Programmed)
				release()
			}()
		default:
			release()
		}
	}
	klog.InfoS("Starting switchyard", "node", cfg.hostnameOverride, "dataplane", dp.Name(), "standalone", cfg.manifests != "")

	var handler source.Handler = &agentHandler{Tracker: tracker, health: health, metrics: m}
	if hp, ok := findPart[*hostPorts](dp); ok {
		hp.SetReport(func(p hostport.Problems) { m.SetHostPortProblems(hostPortProblemCounts(p)) })
		// Only a handler that is also a PodHandler makes the sources
		// read Pods.
		handler = &agentPodHandler{agentHandler: handler.(*agentHandler), PodHandler: hp}
	}
	srcErr := make(chan error, 1)
	go func() { srcErr <- runSource(ctx, cfg, client, handler, syncer.Notify) }()
	syncDone := make(chan struct{})
	go func() { syncer.Run(ctx); close(syncDone) }()

	select {
	case err := <-srcErr:
		// A source ends only with its context, or on an error it cannot
		// recover from (bad kubeconfig): stop, the dataplane stays as is.
		<-syncDone
		if err != nil && ctx.Err() == nil {
			return err
		}
		return ctx.Err()
	case <-syncDone:
		return ctx.Err()
	}
}

func runSource(ctx context.Context, cfg *config, client kubernetes.Interface, h source.Handler, notify func()) error {
	if cfg.manifests != "" {
		return source.RunManifests(ctx, cfg.manifests, h, notify, func(p source.ManifestProblem) {
			klog.ErrorS(nil, "Manifest problem", "problem", p)
		})
	}
	if client == nil {
		return errors.New("no API server client")
	}
	return source.RunInformers(ctx, client, cfg.hostnameOverride, h, notify, source.InformerOptions{ProxyName: cfg.proxyName})
}

// agentHandler is what the sources feed: the Tracker, with this node's
// Node object also going to the health server (node deletion fails
// /healthz), and Service and EndpointSlice events counted.
type agentHandler struct {
	*dataplane.Tracker
	health  *healthcheck.ProxyHealth
	metrics *metrics.Metrics
}

func (h *agentHandler) OnServiceUpsert(svc *v1.Service) {
	h.metrics.ServiceChanged()
	h.Tracker.OnServiceUpsert(svc)
}

func (h *agentHandler) OnServiceDelete(namespace, name string) {
	h.metrics.ServiceChanged()
	h.Tracker.OnServiceDelete(namespace, name)
}

func (h *agentHandler) OnEndpointSliceUpsert(slice *discovery.EndpointSlice) {
	h.metrics.EndpointSliceChanged(slice, false)
	h.Tracker.OnEndpointSliceUpsert(slice)
}

func (h *agentHandler) OnEndpointSliceDelete(slice *discovery.EndpointSlice) {
	h.metrics.EndpointSliceChanged(slice, true)
	h.Tracker.OnEndpointSliceDelete(slice)
}

// agentPodHandler is agentHandler with this node's Pods going to the
// hostPort dataplane.
type agentPodHandler struct {
	*agentHandler
	source.PodHandler
}

func (h *agentHandler) OnNodeUpsert(node *v1.Node) {
	h.Tracker.OnNodeUpsert(node)
	if node.Name == h.Tracker.NodeName() {
		h.health.SyncNode(node)
	}
}

// ipvsBackendConns turns the IPVS dataplane's snapshot (its virtual
// servers as last read, in memory) into the backend metrics.
func ipvsBackendConns(vss []ipvs.VirtualServer) []metrics.BackendConns {
	var out []metrics.BackendConns
	for _, vs := range vss {
		for _, rs := range vs.RealServers {
			out = append(out, metrics.BackendConns{Service: vs.Service, Frontend: vs.Key.String(), Backend: rs.Addr.String(),
				Active: rs.ActiveConns, Inactive: rs.InactiveConns})
		}
	}
	return out
}
