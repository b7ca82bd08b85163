package agentapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/conntrack/rebalance"
	"github.com/switchyard/switchyard/dataplane"
)

// DefaultSocket is where the agent serves the API and yardctl connects.
const DefaultSocket = "/run/switchyard/switchyard.sock"

// API paths.
const (
	PathStatus    = "/v1/status"
	PathServices  = "/v1/services"
	PathIPVS      = "/v1/ipvs"
	PathNFTables  = "/v1/nftables"
	PathConntrack = "/v1/conntrack"
	PathTrace     = "/v1/trace"
	PathSync      = "/v1/sync"
)

// Syncer is the sync loop as the API uses it; *dataplane.Syncer is one.
type Syncer interface {
	// View calls f with the State of the last sync (nil before the
	// first), which f must not keep.
	View(f func(st *dataplane.State))
	// RequestFull schedules a full sync.
	RequestFull()
	// Status reports the last successful sync, the last error and the
	// number of successful syncs.
	Status() (lastSuccess time.Time, lastErr error, syncs int)
}

// Config is what a Server serves.
type Config struct {
	// Socket is the unix socket path (DefaultSocket when empty).
	Socket string
	// Version, NodeName and SyncChain are shown by /v1/status.
	Version   string
	NodeName  string
	SyncChain string
	// StartTime is when the agent started; zero means when NewServer ran.
	StartTime time.Time
	// Syncer is required.
	Syncer Syncer
	// Inspector reads the kernel dataplane; nil answers 404 on /v1/ipvs
	// and /v1/nftables and shows model weights only.
	Inspector Inspector
	// Conntrack lists flows for /v1/conntrack and the nftables connection
	// counts; nil answers 404 there and leaves counts unknown.
	Conntrack FlowLister
	// SocketLB is the BPF socket load balancer when it runs: its
	// connection counts go to /v1/services, its sockets to /v1/conntrack.
	// nil when it does not run.
	SocketLB SocketLB
	// Rebalance reports the connection rebalancer's last round per
	// opted-in Service port (in /v1/conntrack); nil when it does not run.
	Rebalance RebalanceStatuses
}

// RebalanceStatuses is the rebalancer as the API sees it
// (rebalance.Recorder).
type RebalanceStatuses interface {
	Statuses() map[dataplane.ServicePortName]rebalance.Status
}

// Server serves the API on a unix socket.
type Server struct {
	cfg   Config
	start time.Time
	ln    *net.UnixListener
	srv   *http.Server
	done  chan error

	closeOnce sync.Once
	closeErr  error
}

type peerKey struct{}

// NewServer listens on cfg.Socket and starts serving.
//
// The directory is created (0700) if missing. A socket already there is
// replaced when nothing answers on it (a crashed agent's), and refused
// when something does (another agent) or when it is not a socket. The
// socket is made in a private directory and renamed into place once it is
// chmod 0600, so at no time can a user other than root connect; each
// connection's peer is also checked (SO_PEERCRED) to be root or the
// agent's own user.
func NewServer(cfg Config) (*Server, error) {
	if cfg.Syncer == nil {
		return nil, errors.New("agent api: nil Syncer")
	}
	if cfg.Socket == "" {
		cfg.Socket = DefaultSocket
	}
	ln, err := listen(cfg.Socket)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, start: cfg.StartTime, ln: ln, done: make(chan error, 1)}
	if s.start.IsZero() {
		s.start = time.Now()
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+PathStatus, s.handleStatus)
	mux.HandleFunc("GET "+PathServices, s.handleServices)
	mux.HandleFunc("GET "+PathIPVS, s.handleTable(KindIPVS))
	mux.HandleFunc("GET "+PathNFTables, s.handleTable(KindNFTables))
	mux.HandleFunc("GET "+PathConntrack, s.handleConntrack)
	mux.HandleFunc("GET "+PathTrace, s.handleTrace)
	mux.HandleFunc("POST "+PathSync, s.handleSync)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Errorf("no such endpoint %s %s", r.Method, r.URL.Path))
	})
	s.srv = &http.Server{
		Handler:           s.authorize(mux),
		ReadHeaderTimeout: 10 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, peerKey{}, peerUID(c))
		},
	}
	go func() { s.done <- s.srv.Serve(ln) }()
	return s, nil
}

// Socket is the path served.
func (s *Server) Socket() string { return s.cfg.Socket }

// Close stops serving (in-flight requests get up to 5 s) and removes the
// socket.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err := s.srv.Shutdown(ctx)
		if serr := <-s.done; !errors.Is(serr, http.ErrServerClosed) {
			err = errors.Join(err, serr)
		}
		if rerr := os.Remove(s.cfg.Socket); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			err = errors.Join(err, rerr)
		}
		s.closeErr = err
	})
	return s.closeErr
}

func listen(path string) (*net.UnixListener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("agent api: create %s: %w", dir, err)
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}
	tmpDir, err := os.MkdirTemp(dir, ".switchyard-api-")
	if err != nil {
		return nil, fmt.Errorf("agent api: %w", err)
	}
	defer os.RemoveAll(tmpDir)
	tmp := filepath.Join(tmpDir, "sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("agent api: listen: %w", err)
	}
	// The path changes below; Close removes it.
	ln.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("agent api: chmod socket: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		return nil, fmt.Errorf("agent api: %w", err)
	}
	return ln, nil
}

// removeStale removes a socket nothing answers on.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("agent api: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("agent api: %s exists and is not a socket; not replacing it", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("agent api: another process serves %s", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("agent api: remove stale socket: %w", err)
	}
	return nil
}

// peerUID is the connecting process's uid, -1 when unknown.
func peerUID(c net.Conn) int {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return -1
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return -1
	}
	uid := -1
	_ = raw.Control(func(fd uintptr) {
		if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
			uid = int(cred.Uid)
		}
	})
	return uid
}

// authorize refuses peers other than root and the agent's own user.
func (s *Server) authorize(next http.Handler) http.Handler {
	self := os.Geteuid()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		uid, _ := r.Context().Value(peerKey{}).(int)
		if uid != 0 && uid != self {
			writeError(w, http.StatusForbidden, fmt.Errorf("uid %d may not use the agent api", uid))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// state returns a private copy of the model of the last sync (nil before
// the first), taken under View: kernel reads then run without holding up
// the sync loop.
func (s *Server) state() *dataplane.State {
	var out *dataplane.State
	s.cfg.Syncer.View(func(st *dataplane.State) {
		if st != nil {
			out = copyState(st)
		}
	})
	return out
}

func copyState(st *dataplane.State) *dataplane.State {
	out := &dataplane.State{
		Services:  make(map[dataplane.ServicePortName]*dataplane.ServicePort, len(st.Services)),
		Endpoints: make(map[dataplane.ServicePortName][]dataplane.Endpoint, len(st.Endpoints)),
		NodeName:  st.NodeName,
		NodeZone:  st.NodeZone,
		NodeIPs:   slices.Clone(st.NodeIPs),
		Weights:   make(map[dataplane.ServicePortName]map[netip.AddrPort]int, len(st.Weights)),
	}
	for n, w := range st.Weights {
		out.Weights[n] = maps.Clone(w)
	}
	for n, sp := range st.Services {
		c := *sp
		c.ClusterIPs, c.ExternalIPs, c.LoadBalancerIPs = slices.Clone(sp.ClusterIPs), slices.Clone(sp.ExternalIPs), slices.Clone(sp.LoadBalancerIPs)
		c.LoadBalancerSourceRanges = slices.Clone(sp.LoadBalancerSourceRanges)
		if sp.Rebalance != nil {
			r := *sp.Rebalance
			c.Rebalance = &r
		}
		out.Services[n] = &c
	}
	for n, eps := range st.Endpoints {
		c := make([]dataplane.Endpoint, len(eps))
		for i, e := range eps {
			e.ZoneHints, e.NodeHints = slices.Clone(e.ZoneHints), slices.Clone(e.NodeHints)
			c[i] = e
		}
		out.Endpoints[n] = c
	}
	return out
}

func (s *Server) kind() string {
	if s.cfg.Inspector == nil {
		return ""
	}
	return s.cfg.Inspector.Kind()
}

func (s *Server) status() Status {
	last, lastErr, syncs := s.cfg.Syncer.Status()
	st := Status{Version: s.cfg.Version, Dataplane: s.kind(), SyncChain: s.cfg.SyncChain, NodeName: s.cfg.NodeName,
		StartTime: s.start.UTC(), Syncs: syncs, SocketLB: s.cfg.SocketLB != nil}
	if !last.IsZero() {
		t := last.UTC()
		st.LastSync = &t
	}
	if lastErr != nil {
		st.LastError = lastErr.Error()
	}
	s.cfg.Syncer.View(func(m *dataplane.State) {
		if m == nil {
			return
		}
		st.ServicePorts = len(m.Services)
		for _, eps := range m.Endpoints {
			st.Endpoints += len(eps)
		}
	})
	return st
}

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, s.status())
}

func (s *Server) handleServices(w http.ResponseWriter, r *http.Request) {
	st := s.state()
	if st == nil {
		writeJSON(w, &ServiceList{Dataplane: s.kind(), Services: []Service{}})
		return
	}
	names := SelectPorts(st, r.URL.Query().Get("namespace"), r.URL.Query().Get("name"))
	var (
		kernel map[dataplane.ServicePortName][]KernelBackend
		sched  func(*dataplane.ServicePort) string
		flows  []Flow
		err    error
	)
	if insp := s.cfg.Inspector; insp != nil {
		sched = insp.Scheduler
		if kernel, err = insp.Backends(st, names); err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
	}
	if kernel == nil && s.cfg.Conntrack != nil && len(names) > 0 {
		if flows, err = s.cfg.Conntrack.ListFlows(); err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		if flows == nil {
			flows = []Flow{}
		}
	}
	sl := ServicesFrom(st, names, s.kind(), sched, kernel, flows)
	if s.cfg.SocketLB != nil {
		conns, err := s.cfg.SocketLB.Connections()
		if err != nil {
			writeError(w, http.StatusInternalServerError, fmt.Errorf("socket load balancer: %w", err))
			return
		}
		AddBPFConnections(sl, conns)
	}
	writeJSON(w, sl)
}

func (s *Server) handleTable(kind string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.kind() != kind {
			writeError(w, http.StatusNotFound, fmt.Errorf("the agent's dataplane is %q, not %s", s.kind(), kind))
			return
		}
		st := s.state()
		if st == nil {
			writeError(w, http.StatusServiceUnavailable, errNoState)
			return
		}
		t, err := s.cfg.Inspector.Table(st)
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		writeJSON(w, t)
	}
}

func (s *Server) handleConntrack(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Conntrack == nil {
		writeError(w, http.StatusNotFound, errors.New("the agent reads no conntrack table"))
		return
	}
	st := s.state()
	if st == nil {
		writeError(w, http.StatusServiceUnavailable, errNoState)
		return
	}
	flows, err := s.cfg.Conntrack.ListFlows()
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	ns, name := r.URL.Query().Get("namespace"), r.URL.Query().Get("name")
	names := SelectPorts(st, ns, name)
	report := ConntrackFrom(st, names, flows)
	if s.cfg.Rebalance != nil {
		AddRebalance(report, st, s.cfg.Rebalance.Statuses())
	}
	if s.cfg.SocketLB != nil {
		socks, err := s.cfg.SocketLB.Sockets()
		if err != nil {
			writeError(w, http.StatusInternalServerError, fmt.Errorf("socket load balancer: %w", err))
			return
		}
		report.SocketLB = true
		report.Sockets = SocketsFrom(st, names, ns != "" || name != "", socks)
	}
	writeJSON(w, report)
}

func (s *Server) handleTrace(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	dest := q.Get("destination")
	if p := q.Get("protocol"); p != "" {
		dest += "/" + p
	}
	dst, proto, err := ParseDestination(dest)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	st := s.state()
	if st == nil {
		writeError(w, http.StatusServiceUnavailable, errNoState)
		return
	}
	writeJSON(w, TraceFrom(st, dst, proto, s.cfg.Inspector))
}

func (s *Server) handleSync(w http.ResponseWriter, r *http.Request) {
	st := s.status()
	s.cfg.Syncer.RequestFull()
	klog.InfoS("Full sync requested through the agent api")
	writeJSON(w, &SyncResponse{Requested: true, Status: st})
}

func writeJSON(w http.ResponseWriter, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(append(b, '\n'))
}

func writeError(w http.ResponseWriter, code int, err error) {
	b, _ := json.Marshal(Error{Error: err.Error()})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}
