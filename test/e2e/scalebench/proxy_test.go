package scalebench

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/switchyard/switchyard/dataplane"
	synft "github.com/switchyard/switchyard/nftables"
	"github.com/switchyard/switchyard/test/cluster/controlplane"
	"github.com/switchyard/switchyard/test/e2e/nodeproc"
	"github.com/switchyard/switchyard/test/netnstest"
)

// Proxy kinds, by the names of -scale.proxies.
const (
	Switchyard = "switchyard"
	KPNFT      = "kube-proxy-nftables"
	KPIPT      = "kube-proxy-iptables"
)

// nodeName is the Node every proxy stands for (each in its own namespace).
const nodeName = "node"

// clusterCIDR is given to every proxy (masquerade decisions: the same rules
// for all).
const clusterCIDR = "10.244.0.0/16"

// proxy is one running proxy in its namespace.
type proxy struct {
	*nodeproc.Proc
	kind string
	ns   *netnstest.NS

	mu   sync.Mutex
	conn *nftables.Conn // netlink, in ns
}

// startProxy makes a namespace (lo up), a forwarder to the API server in
// it, and starts kind there with the admin token. t.Cleanup stops it
// (SIGTERM, SIGKILL after 5 s) before the namespace goes.
func startProxy(t *testing.T, cp *controlplane.ControlPlane, kind string) *proxy {
	t.Helper()
	short := map[string]string{Switchyard: "sb-sy", KPNFT: "sb-kpn", KPIPT: "sb-kpi"}[kind]
	ns := netnstest.New(t, short)
	server := "https://" + netnstest.Forward(t, ns, "127.0.0.1:6443", strings.TrimPrefix(cp.URL, "https://"))
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := cp.WriteKubeconfig(kubeconfig, server, cp.AdminToken); err != nil {
		t.Fatal(err)
	}
	var bin string
	var args []string
	switch kind {
	case Switchyard:
		bin = agentBin
		args = []string{
			"--dataplane", "nftables",
			"--kubeconfig", kubeconfig,
			"--hostname-override", nodeName,
			"--cluster-cidr", clusterCIDR,
			"--state-dir", filepath.Join(dir, "state"),
			"--api-socket", filepath.Join(dir, "api.sock"),
			"--bpf-pin-path", filepath.Join(dir, "bpf"),
			"--healthz-bind-address", "127.0.0.1:10256",
			"--metrics-bind-address", "127.0.0.1:10249",
		}
	case KPNFT, KPIPT:
		bin = bins.Proxy
		args = []string{
			"--proxy-mode", strings.TrimPrefix(kind, "kube-proxy-"),
			"--kubeconfig", kubeconfig,
			"--hostname-override", nodeName,
			"--cluster-cidr", clusterCIDR,
			"--healthz-bind-address", "127.0.0.1:10256",
			"--metrics-bind-address", "127.0.0.1:10249",
			// nf_conntrack_max is global: leave the machine's alone.
			"--conntrack-max-per-core", "0",
		}
	default:
		t.Fatalf("unknown proxy %q", kind)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "PATH="+os.Getenv("PATH")+":/usr/sbin:/sbin")
	p := &proxy{kind: kind, ns: ns}
	p.Proc = nodeproc.Start(t, ns, kind, filepath.Join(dir, kind+".log"), cmd)
	// Runs before the process is stopped (cleanups run last first).
	t.Cleanup(p.closeConn)
	return p
}

// nft is a netlink socket in the proxy's namespace (one per proxy; its
// probes run one at a time).
func (p *proxy) nft() (*nftables.Conn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conn != nil {
		return p.conn, nil
	}
	c, err := nftables.New(nftables.AsLasting(), nftables.WithNetNSFd(int(p.ns.NsHandle())))
	if err != nil {
		return nil, err
	}
	p.conn = c
	return c, nil
}

func (p *proxy) closeConn() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conn != nil {
		_ = p.conn.CloseLasting()
		p.conn = nil
	}
}

// errAbsent: the object looked up is not (yet) in the kernel.
var errAbsent = errors.New("absent")

// programmed reports whether the kernel in p's namespace sends svc
// (namespace/name, port "p", TCP) to endpoint ep, reading only that
// Service's objects:
//
//   - switchyard: the elements of the numgen map of its svc- chain's DNAT
//     rule (named __map-<chain>, see nftables/names.go);
//   - kube-proxy nftables: the anonymous map of its service- chain's rule
//     holds IP . PORT (its DNAT map; with affinity, a vmap to
//     "goto endpoint-...__IP/PORT");
//   - kube-proxy iptables (iptables-nft: table ip nat): its KUBE-SVC- chain
//     jumps to the KUBE-SEP- chain of the endpoint.
func (p *proxy) programmed(svc string, ep netip.AddrPort) (bool, error) {
	c, err := p.nft()
	if err != nil {
		return false, err
	}
	ok, err := p.lookup(c, svc, ep)
	if err != nil && !errors.Is(err, errAbsent) && !errors.Is(err, syscall.ENOENT) && !strings.Contains(err.Error(), "no such file") {
		// A socket in an unknown state: start over next time.
		p.closeConn()
		return false, err
	}
	return ok, nil
}

func (p *proxy) lookup(c *nftables.Conn, svc string, ep netip.AddrPort) (bool, error) {
	ns, name, _ := strings.Cut(svc, "/")
	ip4 := ep.Addr().As4()
	port := []byte{byte(ep.Port() >> 8), byte(ep.Port())}
	switch p.kind {
	case Switchyard:
		chain, _, _, _ := synft.ServicePortChains(dataplane.ServicePortName{
			ServiceName: dataplane.ServiceName{Namespace: ns, Name: name}, Port: "p", Protocol: dataplane.TCP})
		t := &nftables.Table{Name: "switchyard", Family: nftables.TableFamilyIPv4}
		elems, err := c.GetSetElements(&nftables.Set{Table: t, Name: "__map-" + chain})
		if err != nil {
			return false, err
		}
		for _, e := range elems {
			if len(e.Val) >= 6 && bytes.Equal(e.Val[:4], ip4[:]) && bytes.Equal(e.Val[4:6], port) {
				return true, nil
			}
		}
		return false, nil
	case KPNFT:
		base := ns + "/" + name + "/tcp/p"
		chain := "service-" + kpHashAndTruncate(base)
		want := "endpoint-" + kpHashAndTruncate(base+"__"+ep.Addr().String()+"/"+strconv.Itoa(int(ep.Port())))
		t := &nftables.Table{Name: "kube-proxy", Family: nftables.TableFamilyIPv4}
		rules, err := c.GetRules(t, &nftables.Chain{Name: chain, Table: t})
		if err != nil {
			return false, err
		}
		for _, r := range rules {
			for _, e := range r.Exprs {
				l, ok := e.(*expr.Lookup)
				if !ok || !l.IsDestRegSet || l.SetName == "" {
					continue
				}
				elems, err := c.GetSetElements(&nftables.Set{Table: t, Name: l.SetName})
				if err != nil {
					return false, err
				}
				for _, el := range elems {
					// Endpoint chains ("goto endpoint-...": affinity)
					// or, as here, a direct DNAT map (ip . port).
					if el.VerdictData != nil && el.VerdictData.Chain == want ||
						len(el.Val) >= 6 && bytes.Equal(el.Val[:4], ip4[:]) && bytes.Equal(el.Val[4:6], port) {
						return true, nil
					}
				}
			}
		}
		return false, nil
	case KPIPT:
		spn := ns + "/" + name + ":p"
		chain := "KUBE-SVC-" + kpPortProtoHash(spn+"tcp")
		want := "KUBE-SEP-" + kpPortProtoHash(spn+"tcp"+ep.String())
		t := &nftables.Table{Name: "nat", Family: nftables.TableFamilyIPv4}
		rules, err := c.GetRules(t, &nftables.Chain{Name: chain, Table: t})
		if err != nil {
			return false, err
		}
		for _, r := range rules {
			for _, e := range r.Exprs {
				if v, ok := e.(*expr.Verdict); ok && v.Chain == want {
					return true, nil
				}
			}
		}
		return false, nil
	}
	return false, fmt.Errorf("unknown proxy %q", p.kind)
}

// kpHashAndTruncate is kube-proxy's nftables chain-name base
// (pkg/proxy/nftables: hashAndTruncate; our names never reach its
// truncation length).
func kpHashAndTruncate(name string) string {
	sum := sha256.Sum256([]byte(name))
	return base32.StdEncoding.EncodeToString(sum[:])[:8] + "-" + name
}

// kpPortProtoHash is kube-proxy's iptables chain hash (pkg/proxy/iptables:
// portProtoHash and servicePortEndpointChainName): the first 16 base32
// characters of sha256(servicePortName + protocol [+ "ip:port"]).
func kpPortProtoHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return base32.StdEncoding.EncodeToString(sum[:])[:16]
}

// waitProgrammed polls programmed every interval until true, the deadline,
// or the proxy's exit; it returns when it saw it.
func (p *proxy) waitProgrammed(ctx context.Context, svc string, ep netip.AddrPort, interval time.Duration) (time.Time, error) {
	var lastErr error
	for {
		ok, err := p.programmed(svc, ep)
		now := time.Now()
		if ok {
			return now, nil
		}
		if err != nil {
			lastErr = err
		}
		select {
		case <-ctx.Done():
			return now, fmt.Errorf("%s: %s -> %s not in the kernel: %w (last error: %v)", p.kind, svc, ep, ctx.Err(), lastErr)
		case <-p.Done():
			return now, fmt.Errorf("%s exited: %s", p.kind, p.LogTail(10))
		case <-time.After(interval):
		}
	}
}

// healthy reports whether /healthz on 127.0.0.1:10256 in the namespace
// answers 200.
func (p *proxy) healthy() bool {
	code, _, err := nodeproc.Get(context.Background(), p.ns, "127.0.0.1:10256", "/healthz", time.Second)
	return err == nil && code == http.StatusOK
}

// cpu is the CPU time so far of the proxy's process group: every live
// process in it (kube-proxy's running nft or iptables-restore included)
// plus the leader's reaped children. A child's time moves from the first
// to the second when it is reaped, so the sum has no gap and no jump.
func (p *proxy) cpu() time.Duration {
	pgid := p.Pid()
	ents, _ := os.ReadDir("/proc")
	var ticks int64
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f := procStat(pid)
		// pgrp is field 5 of stat: 2 here.
		if len(f) < 15 || f[2] != strconv.Itoa(pgid) {
			continue
		}
		// utime, stime (fields 14, 15); the leader's cutime, cstime
		// (16, 17).
		fields := []int{11, 12}
		if pid == pgid {
			fields = append(fields, 13, 14)
		}
		for _, i := range fields {
			v, _ := strconv.ParseInt(f[i], 10, 64)
			ticks += v
		}
	}
	return time.Duration(ticks) * time.Second / 100 // USER_HZ
}

// procStat is /proc/pid/stat's fields after the command name (field 3
// first); nil when unreadable.
func procStat(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 > len(s) {
		return nil
	}
	return strings.Fields(s[i+2:])
}

// mem is VmRSS and VmHWM (peak) in bytes.
func (p *proxy) mem() (rss, peak uint64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Pid()))
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmRSS":
			rss = kb << 10
		case "VmHWM":
			peak = kb << 10
		}
	}
	return rss, peak
}
