// Package controlplane runs a real Kubernetes control plane for tests: etcd
// and kube-apiserver (built by package binaries) on 127.0.0.1, with a static
// token file (an admin in system:masters plus any identities the test asks
// for), RBAC and Node authorization, and ServiceAccount tokens through the
// TokenRequest API. There is no controller-manager and no scheduler: objects
// are what the test writes (a deleted Namespace stays Terminating, a Service
// gets no EndpointSlices by itself).
//
// Everything lives in one temporary directory (etcd data, certificates,
// keys, tokens, logs) that Stop removes after killing both processes.
package controlplane

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/switchyard/switchyard/test/cluster/binaries"
)

// Token is a static identity in the apiserver's --token-auth-file.
type Token struct {
	Token  string // empty: generated
	User   string
	UID    string // empty: User
	Groups []string
}

// Options configure Start. The zero value is usable.
type Options struct {
	// Binaries to run. Zero: binaries.Build with the default cache (which
	// builds them first when the cache is cold: minutes).
	Binaries binaries.Paths
	// ServiceCIDR is --service-cluster-ip-range. Default 10.96.0.0/16.
	ServiceCIDR string
	// Tokens are extra static identities (the token file is read once, at
	// start). Generated tokens are filled in on the returned ControlPlane's
	// Tokens.
	Tokens []Token
	// APIServerArgs are appended to kube-apiserver's flags (later flags win).
	APIServerArgs []string
	// ReadyTimeout bounds the wait for /readyz. Default 60s.
	ReadyTimeout time.Duration
	// Log receives progress lines (and, from StartT, log tails on failure).
	Log io.Writer
}

// ControlPlane is a running etcd and kube-apiserver.
type ControlPlane struct {
	// Dir holds everything; removed by Stop.
	Dir string
	// URL is the apiserver, https://127.0.0.1:PORT.
	URL string
	// CAData verifies the apiserver's serving certificate (self-signed by
	// the apiserver, valid for 127.0.0.1, localhost and the first service
	// IP).
	CAData []byte
	// AdminToken authenticates as "admin" in system:masters.
	AdminToken string
	// Tokens are the static identities, admin first, tokens filled in.
	Tokens []Token
	// Kubeconfig is an admin kubeconfig file (in Dir).
	Kubeconfig string
	// EtcdURL is etcd's client URL (plain HTTP on 127.0.0.1).
	EtcdURL string
	// Binaries ran.
	Binaries binaries.Paths
	// StartTime is how long Start took, binaries aside: etcd and
	// kube-apiserver launched until /readyz answered ok.
	StartTime time.Duration

	etcd, apiserver *process
	// apiArgs start kube-apiserver again (StartAPIServer).
	apiArgs      []string
	readyTimeout time.Duration
	stopOnce     sync.Once
	stopErr      error
}

// Start builds (or finds) the binaries, starts etcd and kube-apiserver on
// free loopback ports and waits until /readyz is ok. On error nothing is
// left running and the directory is gone. Ports are picked by binding :0 and
// releasing, so another process may take one first: Start then retries a
// few times.
func Start(ctx context.Context, opts Options) (*ControlPlane, error) {
	if opts.Binaries == (binaries.Paths{}) {
		bins, err := binaries.BuildWith(ctx, binaries.Options{Log: opts.Log})
		if err != nil {
			return nil, err
		}
		opts.Binaries = bins
	}
	if opts.ServiceCIDR == "" {
		opts.ServiceCIDR = "10.96.0.0/16"
	}
	if opts.ReadyTimeout == 0 {
		opts.ReadyTimeout = 60 * time.Second
	}
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	var err error
	for attempt := 1; attempt <= 3; attempt++ {
		var cp *ControlPlane
		cp, err = start(ctx, opts)
		if err == nil {
			return cp, nil
		}
		if !errors.Is(err, errPortTaken) || ctx.Err() != nil {
			break
		}
		fmt.Fprintf(opts.Log, "controlplane: attempt %d: %v; retrying with other ports\n", attempt, err)
	}
	return nil, err
}

// StartT is Start for tests: it fails t on error and stops the control plane
// in t.Cleanup, logging the tails of etcd's and kube-apiserver's logs first
// when the test failed.
func StartT(t testing.TB, opts Options) *ControlPlane {
	t.Helper()
	if opts.Log == nil {
		opts.Log = testWriter{t}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	cp, err := Start(ctx, opts)
	if err != nil {
		t.Fatalf("control plane: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("control plane logs (%s):\n%s", cp.Dir, cp.LogTails(40))
		}
		if err := cp.Stop(); err != nil {
			t.Errorf("control plane stop: %v", err)
		}
	})
	t.Logf("control plane at %s ready in %s", cp.URL, cp.StartTime.Round(time.Millisecond))
	return cp
}

var errPortTaken = errors.New("port taken")

func start(ctx context.Context, opts Options) (_ *ControlPlane, err error) {
	removeOrphans()
	dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", dirPrefix, os.Getpid()))
	if err != nil {
		return nil, fmt.Errorf("control plane dir: %w", err)
	}
	cp := &ControlPlane{Dir: dir, Binaries: opts.Binaries}
	defer func() {
		if err != nil {
			if tails := cp.LogTails(20); tails != "" {
				err = fmt.Errorf("%w\n%s", err, tails)
			}
			_ = cp.Stop()
		}
	}()

	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	etcdClient, etcdPeer, apiPort := ports[0], ports[1], ports[2]
	cp.EtcdURL = fmt.Sprintf("http://127.0.0.1:%d", etcdClient)
	cp.URL = fmt.Sprintf("https://127.0.0.1:%d", apiPort)

	cp.Tokens = append([]Token{{User: "admin", Groups: []string{"system:masters"}}}, opts.Tokens...)
	var tokenFile bytes.Buffer
	for i := range cp.Tokens {
		tok := &cp.Tokens[i]
		if tok.Token == "" {
			tok.Token = randomToken()
		}
		if tok.UID == "" {
			tok.UID = tok.User
		}
		if tok.User == "" || strings.ContainsAny(tok.Token+tok.User+tok.UID+strings.Join(tok.Groups, ""), ",\"\n") {
			return nil, fmt.Errorf("token %d: needs a user, and no commas, quotes or newlines", i)
		}
		fmt.Fprintf(&tokenFile, "%s,%s,%s", tok.Token, tok.User, tok.UID)
		if len(tok.Groups) > 0 {
			fmt.Fprintf(&tokenFile, ",\"%s\"", strings.Join(tok.Groups, ","))
		}
		tokenFile.WriteString("\n")
	}
	cp.AdminToken = cp.Tokens[0].Token
	if err := os.WriteFile(filepath.Join(dir, "tokens.csv"), tokenFile.Bytes(), 0o600); err != nil {
		return nil, fmt.Errorf("token file: %w", err)
	}
	if err := writeServiceAccountKey(filepath.Join(dir, "sa.key"), filepath.Join(dir, "sa.pub")); err != nil {
		return nil, err
	}

	began := time.Now()
	// etcd and the apiserver start together: the apiserver retries etcd
	// until it answers, which saves etcd's own start time.
	peer := fmt.Sprintf("http://127.0.0.1:%d", etcdPeer)
	cp.etcd, err = startProcess(dir, "etcd", opts.Binaries.Etcd,
		"--name", "default",
		"--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", cp.EtcdURL,
		"--advertise-client-urls", cp.EtcdURL,
		"--listen-peer-urls", peer,
		"--initial-advertise-peer-urls", peer,
		"--initial-cluster", "default="+peer,
		// Throwaway data: no fsync (etcd's start and every write are much
		// faster on a busy disk).
		"--unsafe-no-fsync",
		"--log-level", "warn",
	)
	if err != nil {
		return nil, err
	}
	args := []string{
		"--etcd-servers", cp.EtcdURL,
		"--bind-address", "127.0.0.1",
		"--secure-port", strconv.Itoa(apiPort),
		"--advertise-address", "127.0.0.1",
		// The endpoint reconciler refuses a loopback advertise address;
		// without it the kubernetes Service has no endpoints, which no
		// test here needs.
		"--endpoint-reconciler-type", "none",
		"--cert-dir", filepath.Join(dir, "certs"),
		"--token-auth-file", filepath.Join(dir, "tokens.csv"),
		"--authorization-mode", "Node,RBAC",
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file", filepath.Join(dir, "sa.pub"),
		"--service-account-signing-key-file", filepath.Join(dir, "sa.key"),
		"--service-cluster-ip-range", opts.ServiceCIDR,
		// Priority and fairness bootstraps its configuration objects
		// before /readyz turns ok; nothing here needs it.
		"--enable-priority-and-fairness=false",
		"--profiling=false",
	}
	cp.apiArgs, cp.readyTimeout = append(args, opts.APIServerArgs...), opts.ReadyTimeout
	cp.apiserver, err = startProcess(dir, "kube-apiserver", opts.Binaries.APIServer, cp.apiArgs...)
	if err != nil {
		return nil, err
	}

	if err := cp.waitReady(ctx, opts.ReadyTimeout); err != nil {
		return nil, err
	}
	cp.StartTime = time.Since(began)

	cp.Kubeconfig = filepath.Join(dir, "admin.kubeconfig")
	if err := cp.WriteKubeconfig(cp.Kubeconfig, cp.URL, cp.AdminToken); err != nil {
		return nil, err
	}
	fmt.Fprintf(opts.Log, "controlplane: %s ready in %s (etcd %s, dir %s)\n", cp.URL, cp.StartTime.Round(time.Millisecond), cp.EtcdURL, dir)
	return cp, nil
}

// waitReady waits for the serving certificate (written by the apiserver
// before it serves) and then for /readyz to say ok, failing early when
// either process exits.
func (cp *ControlPlane) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	certFile := filepath.Join(cp.Dir, "certs", "apiserver.crt")
	var client *http.Client
	var last string
	for {
		if err := cp.exited(); err != nil {
			return err
		}
		if client == nil {
			if ca, err := os.ReadFile(certFile); err == nil && bytes.Count(ca, []byte("END CERTIFICATE")) >= 1 {
				cp.CAData = ca
				cfg := cp.Config(cp.AdminToken)
				cfg.Timeout = 2 * time.Second
				c, err := rest.HTTPClientFor(cfg)
				if err != nil {
					return fmt.Errorf("readyz client: %w", err)
				}
				client = c
			}
		}
		if client != nil {
			last = probe(ctx, client, cp.URL+"/readyz")
			if last == "" {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube-apiserver not ready after %s: %s", timeout, last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// probe GETs url; "" when it answered 200 ok, else why not.
func probe(ctx context.Context, c *http.Client, url string) string {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err.Error()
	}
	resp, err := c.Do(req)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode == http.StatusOK {
		return ""
	}
	return fmt.Sprintf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
}

// exited reports a process that has ended, as an error wrapping
// errPortTaken when its log says a port was in use.
func (cp *ControlPlane) exited() error {
	for _, p := range []*process{cp.etcd, cp.apiserver} {
		if p == nil {
			continue
		}
		select {
		case <-p.done:
			log, _ := os.ReadFile(p.logPath)
			if bytes.Contains(log, []byte("address already in use")) {
				return fmt.Errorf("%s exited: %w", p.name, errPortTaken)
			}
			return fmt.Errorf("%s exited early: %v", p.name, p.err)
		default:
		}
	}
	return nil
}

// Config is a rest.Config for the apiserver authenticating with token
// (any static token or a ServiceAccount token).
func (cp *ControlPlane) Config(token string) *rest.Config {
	return &rest.Config{
		Host:            cp.URL,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: cp.CAData},
		QPS:             -1, // no client-side rate limit in tests
	}
}

// AdminConfig is Config(AdminToken).
func (cp *ControlPlane) AdminConfig() *rest.Config { return cp.Config(cp.AdminToken) }

// Client is an admin clientset.
func (cp *ControlPlane) Client() (kubernetes.Interface, error) {
	return kubernetes.NewForConfig(cp.AdminConfig())
}

// WriteKubeconfig writes a kubeconfig for server (cp.URL, or the address
// of a forwarder to it, which must present itself as 127.0.0.1 or
// localhost for the certificate to match) authenticating with token.
func (cp *ControlPlane) WriteKubeconfig(path, server, token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["test"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: cp.CAData}
	cfg.AuthInfos["test"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "test"}
	cfg.CurrentContext = "test"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("write kubeconfig: %w", err)
	}
	return nil
}

// Stop kills kube-apiserver, then etcd (SIGTERM, SIGKILL after a few
// seconds), and removes Dir. Safe to call more than once.
func (cp *ControlPlane) Stop() error {
	cp.stopOnce.Do(func() {
		var errs []error
		// The apiserver first: without etcd its shutdown waits on
		// retries.
		for _, p := range []*process{cp.apiserver, cp.etcd} {
			if p != nil {
				p.stop(5 * time.Second)
			}
		}
		if err := os.RemoveAll(cp.Dir); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", cp.Dir, err))
		}
		cp.stopErr = errors.Join(errs...)
	})
	return cp.stopErr
}

// StopAPIServer stops kube-apiserver only (SIGTERM, SIGKILL after a few
// seconds); etcd keeps the objects. Clients then find no API server, as in
// an outage, until StartAPIServer.
func (cp *ControlPlane) StopAPIServer() {
	cp.apiserver.stop(5 * time.Second)
}

// StartAPIServer starts kube-apiserver again with the same flags, port and
// data, and waits for /readyz. Its log continues in the same file.
func (cp *ControlPlane) StartAPIServer(ctx context.Context) error {
	select {
	case <-cp.apiserver.done:
	default:
		return errors.New("kube-apiserver is still running")
	}
	p, err := startProcess(cp.Dir, "kube-apiserver", cp.Binaries.APIServer, cp.apiArgs...)
	if err != nil {
		return err
	}
	cp.apiserver = p
	return cp.waitReady(ctx, cp.readyTimeout)
}

// LogTails is the last n lines of each process's log.
func (cp *ControlPlane) LogTails(n int) string {
	var b strings.Builder
	for _, p := range []*process{cp.etcd, cp.apiserver} {
		if p == nil {
			continue
		}
		log, err := os.ReadFile(p.logPath)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(log), "\n"), "\n")
		if len(lines) > n {
			lines = lines[len(lines)-n:]
		}
		fmt.Fprintf(&b, "--- %s (last %d lines)\n%s\n", p.name, len(lines), strings.Join(lines, "\n"))
	}
	return b.String()
}

// process is a child writing to its own log file in the control plane's
// directory.
type process struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{}
	err     error // valid after done
}

func startProcess(dir, name, path string, args ...string) (*process, error) {
	logPath := filepath.Join(dir, name+".log")
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%s log: %w", name, err)
	}
	cmd := exec.Command(path, args...)
	cmd.Stdout = log
	cmd.Stderr = log
	cmd.Dir = dir
	// Its own process group, and SIGKILL if the test process dies without
	// running Stop (a panic, a timeout's os.Exit).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, logPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		log.Close()
		close(p.done)
	}()
	return p, nil
}

// stop sends SIGTERM and, after grace, SIGKILL to the process group;
// bounded: returns within grace plus a few seconds.
func (p *process) stop(grace time.Duration) {
	pgid := p.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(grace):
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
	}
}

// dirPrefix starts every control plane directory's name, followed by the
// test process's pid.
const dirPrefix = "switchyard-cp-"

// removeOrphans removes the directories of control planes whose test
// process is gone: one killed by `go test -timeout` runs no cleanup (its
// etcd and kube-apiserver die with it, by Pdeathsig, but the directory
// stays).
func removeOrphans() {
	matches, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*-*"))
	for _, m := range matches {
		pidStr, _, ok := strings.Cut(strings.TrimPrefix(filepath.Base(m), dirPrefix), "-")
		pid, err := strconv.Atoi(pidStr)
		if !ok || err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			_ = os.RemoveAll(m)
		}
	}
}

// freePorts returns n distinct ports that were free on 127.0.0.1 a moment
// ago (all held open together so they differ).
func freePorts(n int) ([]int, error) {
	var ports []int
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("free port: %w", err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func writeServiceAccountKey(keyPath, pubPath string) error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return fmt.Errorf("service account key: %w", err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return fmt.Errorf("service account key: %w", err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600); err != nil {
		return fmt.Errorf("service account key: %w", err)
	}
	if err := os.WriteFile(pubPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644); err != nil {
		return fmt.Errorf("service account key: %w", err)
	}
	return nil
}

func randomToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// testWriter sends progress lines to t.Log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
