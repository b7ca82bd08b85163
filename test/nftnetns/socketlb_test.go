package nftnetns

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	cebpf "github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/switchyard/switchyard/agentapi"
	"github.com/switchyard/switchyard/cmd/yardctl/cli"
	"github.com/switchyard/switchyard/test/agentspec"
	"github.com/switchyard/switchyard/test/netnstest"
)

// The BPF socket load balancer (--bpf-socket-lb) next to the nftables
// dataplane, end to end with the agent binary. The programs attach to a
// child cgroup made for the test (never the machine's cgroup v2 root) and
// pin under a private bpf file system; this test process enters that
// cgroup, so the sockets it opens in the client namespace are the ones
// translated. Nothing else runs in parallel with these tests.
//
// How a translated connection is told apart from one the nftables
// dataplane DNATs: the client (10.99.0.2) is outside --cluster-cidr, so
// nftables masquerades its ClusterIP traffic and the backend sees the
// node's address; a socket the socket load balancer connected straight to
// the backend keeps the client's address and port.

// socketLBService is the ClusterIP Service of the socket-LB tests.
func socketLBService(topo *agentspec.Topology) agentspec.Service {
	return agentspec.Service{Name: "web", ClusterIP: netip.MustParseAddr("10.96.0.80"), Port: 80, Backends: topo.Backends}
}

// webPort is the Service port's name as the agent reports it.
const webPort = agentspec.Namespace + "/web:p/tcp"

// exchange is one echo request on a new TCP connection from the client.
type exchange struct {
	conn    net.Conn
	backend agentspec.Backend
	// seen is the source the backend saw; translated: it is the
	// connection's own local address (no masquerade: the socket load
	// balancer connected it straight to the backend).
	seen       netip.AddrPort
	translated bool
}

// dialService connects from the client to addr, exchanges one line and
// reports who answered and whether the socket was translated. The caller
// closes the connection.
func dialService(topo *agentspec.Topology, addr, msg string) (exchange, error) {
	c, err := netnstest.Dial(topo.Client, "tcp", addr, 3*time.Second)
	if err != nil {
		return exchange{}, err
	}
	reply, err := netnstest.Exchange(c, msg, 3*time.Second)
	if err != nil {
		c.Close()
		return exchange{}, err
	}
	id, remote, err := netnstest.ReplyID(reply)
	if err != nil {
		c.Close()
		return exchange{}, err
	}
	be, ok := topo.Backend(id)
	if !ok {
		c.Close()
		return exchange{}, fmt.Errorf("reply %q from no backend of the topology", reply)
	}
	seen, err := netip.ParseAddrPort(remote)
	if err != nil {
		c.Close()
		return exchange{}, fmt.Errorf("reply %q: %w", reply, err)
	}
	local := netip.MustParseAddrPort(c.LocalAddr().String())
	return exchange{conn: c, backend: be, seen: seen, translated: seen == local}, nil
}

// peerName is getpeername(2) of a TCP connection.
func peerName(t *testing.T, c net.Conn) netip.AddrPort {
	t.Helper()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var sa unix.Sockaddr
	var serr error
	if err := raw.Control(func(fd uintptr) { sa, serr = unix.Getpeername(int(fd)) }); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatalf("getpeername: %v", serr)
	}
	sa4, ok := sa.(*unix.SockaddrInet4)
	if !ok {
		t.Fatalf("getpeername: %T, want an IPv4 address", sa)
	}
	return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), uint16(sa4.Port))
}

// held is the client's open connections by local address.
type held map[netip.AddrPort]exchange

// perBackend counts them by backend address.
func (h held) perBackend() map[string]uint64 {
	out := map[string]uint64{}
	for _, x := range h {
		out[netip.AddrPortFrom(x.backend.Addr, agentspec.TargetPort).String()]++
	}
	return out
}

// checkHeld exchanges a line on every held connection: each still
// reaches its backend.
func (h held) check(t *testing.T, when string) {
	t.Helper()
	for local, x := range h {
		reply, err := netnstest.Exchange(x.conn, "again", 5*time.Second)
		if err != nil {
			t.Fatalf("%s: held connection %s: %v", when, local, err)
		}
		if id, _, _ := netnstest.ReplyID(reply); id != x.backend.ID {
			t.Fatalf("%s: held connection %s answered %q, want %s", when, local, reply, x.backend.ID)
		}
	}
}

// yardctl runs yardctl in process against the agent's API socket.
func yardctl(a *agentspec.Agent, args ...string) (string, error) {
	var out, errOut bytes.Buffer
	cmd := cli.NewCommand(cli.Env{Stdout: &out, Stderr: &errOut})
	cmd.SetArgs(append([]string{"--socket", a.StateDir + "/api.sock"}, args...))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cmd.ExecuteContext(ctx); err != nil {
		return out.String(), fmt.Errorf("yardctl %v: %w (%s)", args, err, errOut.String())
	}
	return out.String(), nil
}

func yardctlJSON(a *agentspec.Agent, into any, args ...string) error {
	out, err := yardctl(a, append(args, "-o", "json")...)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	return dec.Decode(into)
}

// expectCounts waits until the metrics, yardctl services and yardctl
// conntrack all show exactly the held connections: per backend "out"
// counts, the Service sum, and one translated socket record each.
func expectCounts(t *testing.T, env *agentspec.Env, a *agentspec.Agent, web agentspec.Service, h held, when string) {
	t.Helper()
	want := h.perBackend()
	a.Eventually(when+": the held connections in /metrics", agentspec.Deadline, func() (bool, string) {
		text, err := env.Metrics()
		if err != nil {
			return false, err.Error()
		}
		if v, ok := agentspec.Sample(text, `switchyard_bpf_socket_lb_enabled{requested="true"}`); !ok || v != 1 {
			return false, fmt.Sprintf("switchyard_bpf_socket_lb_enabled{requested=\"true\"} = %v (present %v), want 1", v, ok)
		}
		for _, be := range web.Backends {
			addr := netip.AddrPortFrom(be.Addr, agentspec.TargetPort).String()
			series := fmt.Sprintf(`switchyard_bpf_backend_connections{backend="%s",direction="out",service="%s"}`, addr, webPort)
			v, ok := agentspec.Sample(text, series)
			if float64(want[addr]) != v || (want[addr] > 0 && !ok) {
				return false, fmt.Sprintf("%s = %v (present %v), want %d", series, v, ok, want[addr])
			}
		}
		series := fmt.Sprintf(`switchyard_bpf_service_connections{direction="out",service="%s"}`, webPort)
		if v, ok := agentspec.Sample(text, series); !ok || v != float64(len(h)) {
			return false, fmt.Sprintf("%s = %v (present %v), want %d", series, v, ok, len(h))
		}
		return true, ""
	})
	a.Eventually(when+": the held connections in yardctl services", agentspec.Deadline, func() (bool, string) {
		var sl agentapi.ServiceList
		if err := yardctlJSON(a, &sl, "services", agentspec.Namespace+"/web"); err != nil {
			return false, err.Error()
		}
		if len(sl.Services) != 1 || len(sl.Services[0].Backends) != len(web.Backends) {
			return false, fmt.Sprintf("%+v", sl)
		}
		for _, b := range sl.Services[0].Backends {
			if b.BPFConnections == nil || b.BPFConnections.Out != want[b.Address] || b.BPFConnections.In != 0 {
				return false, fmt.Sprintf("backend %s: bpfConnections %+v, want out %d in 0", b.Address, b.BPFConnections, want[b.Address])
			}
		}
		return true, ""
	})
	a.Eventually(when+": the held connections in yardctl conntrack", agentspec.Deadline, func() (bool, string) {
		var r agentapi.ConntrackReport
		if err := yardctlJSON(a, &r, "conntrack", agentspec.Namespace+"/web"); err != nil {
			return false, err.Error()
		}
		if !r.SocketLB {
			return false, "socketLB false"
		}
		got := map[netip.AddrPort]agentapi.SocketLBSocket{}
		for _, s := range r.Sockets {
			local, err := netip.ParseAddrPort(s.Local)
			if err != nil {
				return false, fmt.Sprintf("socket %+v: %v", s, err)
			}
			got[local] = s
		}
		if len(got) != len(h) {
			return false, fmt.Sprintf("%d sockets %+v, want the %d held", len(got), r.Sockets, len(h))
		}
		for local, x := range h {
			s, ok := got[local]
			backend := netip.AddrPortFrom(x.backend.Addr, agentspec.TargetPort).String()
			if !ok || s.Direction != "out" || s.Remote != backend || s.Frontend != web.Addr() || s.Service != webPort ||
				s.Established.IsZero() || time.Since(s.Established) > 10*time.Minute || time.Since(s.Established) < -time.Minute {
				return false, fmt.Sprintf("held %s (to %s): socket %+v, want out to %s from frontend %s of %s", local, x.backend.ID, s, backend, web.Addr(), webPort)
			}
		}
		return true, ""
	})
	table, err := yardctl(a, "conntrack")
	if err != nil {
		t.Fatal(err)
	}
	for local := range h {
		if !strings.Contains(table, local.String()) || !strings.Contains(table, "Socket load balancer") {
			t.Errorf("%s: yardctl conntrack does not list held %s in its socket load balancer table:\n%s", when, local, table)
		}
	}
}

// prober keeps making requests from the client to a Service, one new
// connection every few milliseconds, and counts how they were served.
type prober struct {
	stop chan struct{}
	done chan struct{}

	mu                         sync.Mutex
	translated, untranslated   int
	failures                   []string
	untranslatedSeen, answered []string
}

// maxProbes bounds a prober: at 20 ms apart, some 40 s.
const maxProbes = 2000

func startProber(t *testing.T, topo *agentspec.Topology, addr string) *prober {
	p := &prober{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for i := 0; i < maxProbes; i++ {
			select {
			case <-p.stop:
				return
			default:
			}
			x, err := dialService(topo, addr, "probe"+strconv.Itoa(i))
			p.mu.Lock()
			switch {
			case err != nil:
				p.failures = append(p.failures, err.Error())
			case x.translated:
				p.translated++
			default:
				p.untranslated++
				p.untranslatedSeen = append(p.untranslatedSeen, x.backend.ID+" saw "+x.seen.String())
			}
			p.mu.Unlock()
			if err == nil {
				x.conn.Close()
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	t.Cleanup(p.halt)
	return p
}

// probes is how many requests the prober has made.
func (p *prober) probes() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.translated + p.untranslated + len(p.failures)
}

// waitMore waits (bounded) until the prober has made n more requests, so
// each phase of a restart is covered by some.
func (p *prober) waitMore(t *testing.T, what string, n int) {
	t.Helper()
	before := p.probes()
	deadline := time.Now().Add(agentspec.Deadline)
	for p.probes() < before+n {
		if time.Now().After(deadline) {
			t.Fatalf("%s: the prober made %d requests in %v, want %d", what, p.probes()-before, agentspec.Deadline, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// halt stops the prober and waits for it (idempotent).
func (p *prober) halt() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	<-p.done
}

// TestNFTAgentSocketLB: with --bpf-socket-lb the agent attaches the
// socket load balancer to the cgroup given; a TCP connection from a client
// to a ClusterIP is connected straight to a backend (the backend sees the
// client's own address and port) while the application's getpeername
// shows the ClusterIP; the connections held open show, per backend, on
// /metrics, in yardctl services and, socket by socket with frontend and
// Service, in yardctl conntrack. A restart (SIGTERM, start) while
// connections are held keeps every new connection translated throughout
// (the links stay pinned) and the held ones working and counted; with the
// agent stopped, --cleanup detaches and unpins: the pin directory is gone,
// no program is left on the cgroup and a new connect is not translated.
func TestNFTAgentSocketLB(t *testing.T) {
	requireAgent(t)
	probeNFTables(t)
	cg := netnstest.NewCgroup(t, "sy-socklb")
	pin := netnstest.NewBPFFS(t) + "/switchyard"
	env := newNFTEnv(t)
	topo := env.NewTopology(t, 2)
	a := env.NewAgent(t)
	a.PinPath = pin
	a.ExtraArgs = []string{"--bpf-socket-lb", "--bpf-cgroup-path", cg.Path}
	web := socketLBService(topo)
	a.WriteService(web)
	// Every socket this process opens from now on (the clients; the
	// echo servers listen since NewTopology, outside it) is one the
	// programs see, and so is the agent, started from it.
	cg.Enter(t)

	a.Start()
	a.WaitLog(`"BPF socket load balancing enabled".*`)
	if start := a.WaitLog(`"Starting switchyard".*`); !strings.Contains(start, "nftables+socketlb") {
		t.Errorf("start line without the socket load balancer right after the nftables dataplane: %s", start)
	}
	env.DP.WaitProgrammed(t, a, web)
	// The socket LB syncs right after nftables in the same chain.
	a.Eventually("a translated connection to the ClusterIP", agentspec.Deadline, func() (bool, string) {
		x, err := dialService(topo, web.Addr(), "first")
		if err != nil {
			return false, err.Error()
		}
		x.conn.Close()
		return x.translated, fmt.Sprintf("%s saw %s (masqueraded: nftables served it)", x.backend.ID, x.seen)
	})

	// Every new connection is translated, to every backend in turn (the
	// choice is random: bounded like agentspec's Spread).
	ids := map[string]int{}
	for i := 0; i < 60 && (i < 6 || len(ids) < len(topo.Backends)); i++ {
		x, err := dialService(topo, web.Addr(), "req"+strconv.Itoa(i))
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		x.conn.Close()
		if !x.translated {
			t.Errorf("request %d: %s saw %s, not the client's own socket: not translated", i, x.backend.ID, x.seen)
		}
		ids[x.backend.ID]++
	}
	if len(ids) != len(topo.Backends) {
		t.Errorf("replies per backend %v, want every backend of %d", ids, len(topo.Backends))
	}

	// Held connections: getpeername shows the ClusterIP, the kernel's
	// socket goes to the backend.
	h := held{}
	hold := func(n int) {
		t.Helper()
		for range n {
			x, err := dialService(topo, web.Addr(), "hold")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { x.conn.Close() })
			if !x.translated {
				t.Fatalf("held connection: %s saw %s: not translated", x.backend.ID, x.seen)
			}
			if got := peerName(t, x.conn); got.String() != web.Addr() {
				t.Errorf("getpeername of a translated socket: %s, want the ClusterIP %s", got, web.Addr())
			}
			if got := x.conn.RemoteAddr().String(); got != web.Addr() {
				t.Errorf("RemoteAddr: %s, want %s", got, web.Addr())
			}
			h[netip.MustParseAddrPort(x.conn.LocalAddr().String())] = x
		}
	}
	hold(3)
	expectCounts(t, env, a, web, h, "3 held")
	table, err := yardctl(a, "services")
	if err != nil || !strings.Contains(table, "bpf out/in") {
		t.Errorf("yardctl services table without the BPF counts (%v):\n%s", err, table)
	}

	// Restart while connections are held, with a client connecting all
	// along.
	p := startProber(t, topo, web.Addr())
	p.waitMore(t, "agent running", 3)
	if err := a.Stop(syscall.SIGTERM); err != nil {
		t.Errorf("agent exit after SIGTERM: %v", err)
	}
	p.waitMore(t, "agent stopped", 5)
	if log := a.Current().Log(); !strings.Contains(log, "Released the socket load balancer") {
		t.Error("no line saying the socket load balancer was released (Close, not Cleanup) at shutdown")
	}
	if _, err := os.Stat(pin + "/links"); err != nil {
		t.Errorf("pinned links after SIGTERM: %v", err)
	}
	h.check(t, "agent stopped")
	for i := range 3 {
		x, err := dialService(topo, web.Addr(), "down")
		if err != nil {
			t.Fatalf("request %d with the agent stopped: %v", i, err)
		}
		x.conn.Close()
		if !x.translated {
			t.Errorf("request %d with the agent stopped: %s saw %s: not translated", i, x.backend.ID, x.seen)
		}
	}
	a.Start()
	a.WaitLog(`"BPF socket load balancing enabled".*`)
	p.waitMore(t, "new agent attached", 3)
	a.WaitSyncs(1) // past the first (full) sync
	p.waitMore(t, "new agent synced", 3)
	p.halt()
	p.mu.Lock()
	if p.untranslated > 0 || len(p.failures) > 0 || p.translated < 14 {
		t.Errorf("across the restart: %d connections translated, %d not (%v), %d failed (%v); want every one translated",
			p.translated, p.untranslated, p.untranslatedSeen, len(p.failures), p.failures)
	} else {
		t.Logf("across the restart: %d new connections, all translated", p.translated)
	}
	p.mu.Unlock()
	h.check(t, "after the restart")
	hold(1)
	expectCounts(t, env, a, web, h, "after the restart, 4 held")

	// --cleanup with the agent stopped.
	if err := a.Stop(syscall.SIGTERM); err != nil {
		t.Errorf("agent exit after SIGTERM: %v", err)
	}
	// A listener on the ClusterIP inside the client's namespace answers
	// only connections the socket load balancer leaves alone.
	netnstest.AddAddr(t, topo.Client, "lo", netip.PrefixFrom(web.ClusterIP, 32))
	netnstest.StartEchoServer(t, topo.Client, "tcp", web.Addr(), "local")
	if x, err := dialService(topo, web.Addr(), "pinned"); err != nil || !x.translated {
		t.Errorf("agent stopped, ClusterIP also local to the client: %+v %v, want translated to a backend", x, err)
	} else {
		x.conn.Close()
	}
	out, err := a.RunCleanup()
	if err != nil || !regexp.MustCompile(`"Cleanup done" dataplane="[^"]*socketlb`).MatchString(out) {
		t.Fatalf("switchyard --cleanup: %v\n%s", err, out)
	}
	if _, err := os.Stat(pin); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin directory %s after --cleanup: %v, want it gone", pin, err)
	}
	expectNoPrograms(t, cg.Path)
	reply, err := netnstest.Request(topo.Client, "tcp", web.Addr(), "after", 3*time.Second)
	if id, _, _ := netnstest.ReplyID(reply); err != nil || id != "local" {
		t.Errorf("connect to the ClusterIP after --cleanup: %q %v, want the client's own listener (not translated)", reply, err)
	}
}

// expectNoPrograms checks that no BPF program is attached to the cgroup
// at any hook the socket load balancer uses.
func expectNoPrograms(t *testing.T, cgroup string) {
	t.Helper()
	f, err := os.Open(cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, at := range []cebpf.AttachType{
		cebpf.AttachCGroupSockOps, cebpf.AttachCGroupInet4Connect, cebpf.AttachCGroupInet6Connect,
		cebpf.AttachCGroupUDP4Sendmsg, cebpf.AttachCGroupUDP6Sendmsg, cebpf.AttachCGroupUDP4Recvmsg, cebpf.AttachCGroupUDP6Recvmsg,
		cebpf.AttachCgroupInet4GetPeername, cebpf.AttachCgroupInet6GetPeername,
	} {
		r, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: at})
		if err != nil {
			t.Errorf("query %v programs of %s: %v", at, cgroup, err)
			continue
		}
		if len(r.Programs) > 0 {
			t.Errorf("%d %v programs still attached to %s after --cleanup", len(r.Programs), at, cgroup)
		}
	}
}

// TestNFTAgentSocketLBUnsupported: when the socket load balancer cannot
// attach (here: no such cgroup), the agent logs one clear line saying it
// is disabled and why, exposes switchyard_bpf_socket_lb_enabled 0 with
// requested="true", says so in its API, and serves the Services through
// nftables (masqueraded, as without the socket load balancer).
func TestNFTAgentSocketLBUnsupported(t *testing.T) {
	requireAgent(t)
	probeNFTables(t)
	// A private bpf file system: the failure must be the cgroup's, and
	// nothing may touch the machine's /sys/fs/bpf.
	pin := netnstest.NewBPFFS(t) + "/switchyard"
	env := newNFTEnv(t)
	topo := env.NewTopology(t, 2)
	a := env.NewAgent(t)
	a.PinPath = pin
	a.ExtraArgs = []string{"--bpf-socket-lb", "--bpf-cgroup-path", "/nonexistent"}
	web := socketLBService(topo)
	a.WriteService(web)
	a.Start()
	line := a.WaitLog(`.*"BPF socket load balancing disabled.*`)
	if !strings.HasPrefix(line, "E") || !strings.Contains(line, "/nonexistent") || !strings.Contains(line, "through the nftables dataplane") {
		t.Errorf("the disabled line does not say why and what still serves: %s", line)
	}
	if n := strings.Count(a.Current().Log(), "BPF socket load balancing disabled"); n != 1 {
		t.Errorf("%d lines saying socket load balancing is disabled, want 1", n)
	}
	if start := a.WaitLog(`"Starting switchyard".*`); strings.Contains(start, "socketlb") {
		t.Errorf("socket load balancer in the chain although it could not attach: %s", start)
	}
	env.DP.WaitProgrammed(t, a, web)
	a.Eventually("switchyard_bpf_socket_lb_enabled 0, requested", agentspec.Deadline, func() (bool, string) {
		text, err := env.Metrics()
		if err != nil {
			return false, err.Error()
		}
		v, ok := agentspec.Sample(text, `switchyard_bpf_socket_lb_enabled{requested="true"}`)
		return ok && v == 0, fmt.Sprintf("value %v, present %v", v, ok)
	})
	var st agentapi.Status
	if err := yardctlJSON(a, &st, "status"); err != nil || st.SocketLB {
		t.Errorf("yardctl status: socketLB %v (%v), want false", st.SocketLB, err)
	}
	rs := env.Spread(t, "ClusterIP without the socket load balancer", topo.Client, "tcp", web.Addr(), 4, topo.Backends...)
	agentspec.ExpectSources(t, "ClusterIP without the socket load balancer", topo, rs, agentspec.Masqueraded)
}
