// Package healthcheck serves the per-Service health check node ports of
// LoadBalancer Services with externalTrafficPolicy: Local, the way
// kube-proxy's pkg/proxy/healthcheck does: cloud load balancers probe
// http://<node>:<healthCheckNodePort>/ and send traffic only to nodes that
// answer 200, i.e. nodes with at least one ready local endpoint.
//
// ServiceHealthServer is a dataplane.Dataplane, so the agent appends it to
// its chain and it follows the same State as the kernel backends.
package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/dataplane"
)

// listener opens one listening socket. *net.ListenConfig satisfies it;
// tests inject one that binds 127.0.0.1:0 instead of the requested address.
type listener interface {
	Listen(ctx context.Context, network, address string) (net.Listener, error)
}

// ServiceHealthServer runs one HTTP server per health check node port and
// bind address. It answers for the Service owning the port with the number
// of this node's ready endpoints (200 when there is at least one and the
// proxy is healthy, 503 otherwise).
//
// A port that cannot be bound (typically in use by another process) does
// not fail Sync: the failure is logged, kept in ListenErrors for that
// Service only, and retried on every later Sync, while the other Services'
// servers keep answering. Failing Sync instead would make the sync loop
// retry the whole chain with full syncs and, once the agent's health
// follows its sync errors, turn every Service's answer into a 503 (kube-
// proxy likewise only logs and emits an event).
type ServiceHealthServer struct {
	prefixes     []netip.Prefix
	proxyHealthy func() bool
	listener     listener
	nodeAddrs    func() ([]netip.Addr, error)

	mu       sync.Mutex // serializes Sync and Cleanup; guards the maps
	services map[dataplane.ServiceName]*hcService
	errs     map[dataplane.ServiceName]error
}

var _ dataplane.Dataplane = (*ServiceHealthServer)(nil)

// hcService is one Service's health check: its port, the count its
// handlers report, and a server per bind address.
type hcService struct {
	name      dataplane.ServiceName
	port      uint16
	endpoints atomic.Int64           // read by handlers without the server lock
	servers   map[string]*httpServer // by requested address
}

// httpServer is one listening socket's server; done closes when its Serve
// goroutine has returned.
type httpServer struct {
	srv  *http.Server
	done chan struct{}
}

// New returns a ServiceHealthServer. nodePortAddresses is the
// --nodeport-addresses setting: when empty the health check ports listen on
// every node address (one wildcard socket per port); otherwise only on the
// node's addresses inside these prefixes, re-read on every Sync.
// proxyHealthy reports the proxy's own health (the agent passes its sync
// health); nil means always healthy.
func New(nodePortAddresses []netip.Prefix, proxyHealthy func() bool) *ServiceHealthServer {
	prefixes := make([]netip.Prefix, 0, len(nodePortAddresses))
	for _, p := range nodePortAddresses {
		prefixes = append(prefixes, p.Masked())
	}
	if proxyHealthy == nil {
		proxyHealthy = func() bool { return true }
	}
	return &ServiceHealthServer{
		prefixes:     prefixes,
		proxyHealthy: proxyHealthy,
		listener:     &net.ListenConfig{},
		nodeAddrs:    interfaceAddrs,
		services:     map[dataplane.ServiceName]*hcService{},
		errs:         map[dataplane.ServiceName]error{},
	}
}

// Name is part of dataplane.Dataplane.
func (s *ServiceHealthServer) Name() string { return "healthcheck" }

// ListenError says a Service's health check port could not be opened on an
// address.
type ListenError struct {
	Service dataplane.ServiceName
	Address string // host:port as requested; host empty for every address
	Err     error
}

func (e *ListenError) Error() string {
	return fmt.Sprintf("healthcheck for %s: listen on %s: %v", e.Service, e.Address, e.Err)
}

func (e *ListenError) Unwrap() error { return e.Err }

// ListenErrors returns, for each Service whose health check port is not
// (fully) open after the last Sync, why. Services missing from the map are
// served on every address they should be.
func (s *ServiceHealthServer) ListenErrors() map[dataplane.ServiceName]error {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[dataplane.ServiceName]error, len(s.errs))
	for n, err := range s.errs {
		out[n] = err
	}
	return out
}

// Sync is part of dataplane.Dataplane. Every Sync is handled as a full one:
// the work is proportional to the health-checked Services only, and it is
// what retries ports that could not be bound before. It returns an error
// only when the node's addresses cannot be listed; per-Service listen
// failures go to ListenErrors.
func (s *ServiceHealthServer) Sync(ctx context.Context, st *dataplane.State, _ dataplane.Changes) error {
	s.mu.Lock()
	defer s.mu.Unlock()

	want := wantedServices(st)

	// Close the servers of Services that went away or changed port first,
	// so a port moving between Services can be bound again below.
	for name, svc := range s.services {
		if w, ok := want[name]; !ok || w.port != svc.port {
			klog.V(2).InfoS("Closing health check", "service", name, "port", svc.port)
			s.closeService(svc)
			delete(s.services, name)
		}
	}
	for name := range s.errs {
		if _, ok := want[name]; !ok {
			delete(s.errs, name)
		}
	}

	hosts, addrErr := s.bindHosts()
	if addrErr != nil {
		addrErr = fmt.Errorf("healthcheck: list node addresses: %w", addrErr)
	}
	if addrErr == nil && len(hosts) == 0 && len(want) > 0 {
		klog.V(2).InfoS("No node address matches --nodeport-addresses; health check ports are not served", "nodePortAddresses", s.prefixes)
	}

	for _, name := range sortedNames(want) {
		w := want[name]
		svc := s.services[name]
		if svc == nil {
			klog.V(2).InfoS("Opening health check", "service", name, "port", w.port)
			svc = &hcService{name: name, port: w.port, servers: map[string]*httpServer{}}
			s.services[name] = svc
		}
		svc.endpoints.Store(int64(w.localEndpoints))
		if addrErr != nil {
			// Keep whatever is open; the addresses are unknown.
			continue
		}
		s.setError(name, s.reconcileServers(ctx, svc, hosts))
	}
	return addrErr
}

// reconcileServers makes svc listen on exactly hosts: it opens the missing
// addresses and closes the ones no longer wanted. Addresses that fail stay
// closed (the others keep serving) and are retried on the next call.
func (s *ServiceHealthServer) reconcileServers(ctx context.Context, svc *hcService, hosts []string) error {
	wanted := make(map[string]bool, len(hosts))
	var errs []error
	for _, host := range hosts {
		addr := net.JoinHostPort(host, strconv.Itoa(int(svc.port)))
		wanted[addr] = true
		if svc.servers[addr] != nil {
			continue
		}
		l, err := s.listener.Listen(ctx, "tcp", addr)
		if err != nil {
			errs = append(errs, &ListenError{Service: svc.name, Address: addr, Err: err})
			continue
		}
		hs := &httpServer{
			srv: &http.Server{
				Handler:           s.handler(svc),
				ReadHeaderTimeout: 10 * time.Second,
				IdleTimeout:       60 * time.Second,
			},
			done: make(chan struct{}),
		}
		svc.servers[addr] = hs
		go func() {
			defer close(hs.done)
			// Serve returns ErrServerClosed once closeServer closed it.
			if err := hs.srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
				klog.ErrorS(err, "Health check server stopped", "service", svc.name, "address", addr)
			}
		}()
	}
	for addr, hs := range svc.servers {
		if !wanted[addr] {
			closeServer(svc.name, addr, hs)
			delete(svc.servers, addr)
		}
	}
	return errors.Join(errs...)
}

// setError records a Service's listen error, logging only when it changes
// so a port that stays in use does not log on every sync.
func (s *ServiceHealthServer) setError(name dataplane.ServiceName, err error) {
	old := s.errs[name]
	switch {
	case err == nil && old != nil:
		klog.InfoS("Health check now served", "service", name)
		delete(s.errs, name)
	case err != nil:
		if old == nil || old.Error() != err.Error() {
			klog.ErrorS(err, "Failed to open health check port; will retry on the next sync", "service", name)
		}
		s.errs[name] = err
	}
}

// Cleanup is part of dataplane.Dataplane: it closes every server and waits
// (until ctx is done) for their goroutines to end.
func (s *ServiceHealthServer) Cleanup(ctx context.Context) error {
	s.mu.Lock()
	var done []chan struct{}
	for name, svc := range s.services {
		done = append(done, s.closeService(svc)...)
		delete(s.services, name)
	}
	clear(s.errs)
	s.mu.Unlock()

	for _, d := range done {
		select {
		case <-d:
		case <-ctx.Done():
			return fmt.Errorf("healthcheck: waiting for servers to stop: %w", ctx.Err())
		}
	}
	return nil
}

// closeService closes every server of svc and returns their done channels.
func (s *ServiceHealthServer) closeService(svc *hcService) []chan struct{} {
	var done []chan struct{}
	for addr, hs := range svc.servers {
		closeServer(svc.name, addr, hs)
		done = append(done, hs.done)
	}
	clear(svc.servers)
	return done
}

// closeServer closes the listener and every connection; the port can be
// bound again as soon as it returns.
func closeServer(name dataplane.ServiceName, addr string, hs *httpServer) {
	if err := hs.srv.Close(); err != nil {
		klog.ErrorS(err, "Closing health check server", "service", name, "address", addr)
	}
}

// bindHosts returns the hosts every health check port listens on: "" (one
// dual-stack wildcard socket, like kube-proxy's 0.0.0.0 which Go opens as
// [::] with IPV6_V6ONLY off) when no --nodeport-addresses is set, else the
// node's addresses inside those prefixes.
func (s *ServiceHealthServer) bindHosts() ([]string, error) {
	if len(s.prefixes) == 0 {
		return []string{""}, nil
	}
	addrs, err := s.nodeAddrs()
	if err != nil {
		return nil, err
	}
	var hosts []string
	for _, a := range filterAddrs(addrs, s.prefixes) {
		hosts = append(hosts, a.String())
	}
	return hosts, nil
}

// filterAddrs keeps the addresses inside one of prefixes, sorted and
// de-duplicated. IPv6 link-local addresses are skipped: binding them needs
// a zone and load balancers never probe them.
func filterAddrs(addrs []netip.Addr, prefixes []netip.Prefix) []netip.Addr {
	var out []netip.Addr
	for _, a := range addrs {
		a = a.Unmap()
		if a.Is6() && a.IsLinkLocalUnicast() {
			continue
		}
		if slices.ContainsFunc(prefixes, func(p netip.Prefix) bool { return p.Contains(a) }) {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// interfaceAddrs lists the node's interface addresses.
func interfaceAddrs() ([]netip.Addr, error) {
	ifAddrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, ia := range ifAddrs {
		ipNet, ok := ia.(*net.IPNet)
		if !ok {
			continue
		}
		if a, ok := netip.AddrFromSlice(ipNet.IP); ok {
			out = append(out, a.Unmap())
		}
	}
	return out, nil
}

type wanted struct {
	port           uint16
	localEndpoints int
}

// wantedServices returns the health-checked Services of st: those with a
// port whose HealthCheckNodePort is set (translate sets it only for
// LoadBalancer Services with externalTrafficPolicy: Local), with their
// local endpoint counts.
//
// The count follows kube-proxy's EndpointsMap.LocalReadyEndpoints: distinct
// IPs of this node's ready endpoints over all the Service's ports (a pod
// serving ports 80 and 443 is one endpoint). Serving-but-terminating
// endpoints are not counted even when the dataplane still routes to them
// (the terminating fallback of CategorizeEndpoints): a node whose only
// endpoints are going away must fail its health check so the load balancer
// drains it.
func wantedServices(st *dataplane.State) map[dataplane.ServiceName]wanted {
	out := map[dataplane.ServiceName]wanted{}
	// Sorted so that, should a Service's ports ever disagree on the
	// health check port, the choice is stable: the first port's wins.
	names := st.SortedServicePorts()
	for _, spn := range names {
		sp := st.Services[spn]
		if sp.HealthCheckNodePort == 0 {
			continue
		}
		if _, ok := out[spn.ServiceName]; !ok {
			out[spn.ServiceName] = wanted{port: sp.HealthCheckNodePort}
		}
	}
	ips := map[dataplane.ServiceName]map[netip.Addr]struct{}{}
	for _, spn := range names {
		if _, ok := out[spn.ServiceName]; !ok {
			continue
		}
		for _, e := range st.Endpoints[spn] {
			if !e.Ready || e.NodeName == "" || e.NodeName != st.NodeName {
				continue
			}
			set := ips[spn.ServiceName]
			if set == nil {
				set = map[netip.Addr]struct{}{}
				ips[spn.ServiceName] = set
			}
			set[e.Addr.Addr()] = struct{}{}
		}
	}
	for name, set := range ips {
		w := out[name]
		w.localEndpoints = len(set)
		out[name] = w
	}
	return out
}

func sortedNames(m map[dataplane.ServiceName]wanted) []dataplane.ServiceName {
	names := make([]dataplane.ServiceName, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	slices.SortFunc(names, func(a, b dataplane.ServiceName) int {
		return dataplane.ServicePortName{ServiceName: a}.Compare(dataplane.ServicePortName{ServiceName: b})
	})
	return names
}
