package agentapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMain doubles as the helper that connects as another user (see
// runAs).
func TestMain(m *testing.M) {
	if path := os.Getenv("AGENTAPI_TEST_CONNECT"); path != "" {
		os.Exit(connectHelper(path))
	}
	os.Exit(m.Run())
}

// connectHelper connects to the socket, asks for the status and prints
// what happened: "errno <name>", "http <code>" or "ok".
func connectHelper(path string) int {
	c, err := net.Dial("unix", path)
	if err != nil {
		var errno syscall.Errno
		if errors.As(err, &errno) {
			fmt.Printf("errno %d\n", int(errno))
			return 0
		}
		fmt.Printf("error %v\n", err)
		return 1
	}
	c.Close()
	_, err = NewClient(path).Status(context.Background())
	var ae *APIError
	switch {
	case errors.As(err, &ae):
		fmt.Printf("http %d\n", ae.StatusCode)
	case err != nil:
		fmt.Printf("error %v\n", err)
		return 1
	default:
		fmt.Println("ok")
	}
	return 0
}

// runAs runs the connect helper as uid/gid 65534 (nobody) and returns its
// output. The test binary is copied where that user may execute it.
func runAs(t *testing.T, socket string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a helper as another user")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := publicDir(t)
	bin := filepath.Join(dir, "helper")
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin)
	cmd.Env = []string{"AGENTAPI_TEST_CONNECT=" + socket}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper as uid 65534: %v\n%s", err, out)
	}
	return strings.TrimSpace(string(out))
}

// publicDir is a temporary directory anyone may enter (t.TempDir's are
// 0700), removed after the test.
func publicDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "agentapi-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func startServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func TestServerSocket(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run", "switchyard")
	sock := filepath.Join(dir, "switchyard.sock")
	s, err := NewServer(Config{Socket: sock, Syncer: &fakeSyncer{}})
	if err != nil {
		t.Fatal(err)
	}
	di, err := os.Stat(dir)
	if err != nil || di.Mode().Perm() != 0o700 {
		t.Errorf("socket directory: %v, mode %v; want 0700", err, di.Mode().Perm())
	}
	fi, err := os.Lstat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want a socket with 0600", fi.Mode())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want the socket only", len(entries))
	}
	if _, err := NewClient(sock).Status(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(sock); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket left after Close: %v", err)
	}
	if _, err := NewClient(sock).Status(context.Background()); !errors.Is(err, ErrAgentDown) {
		t.Errorf("status after Close: %v, want ErrAgentDown", err)
	}
}

// A crashed agent's socket is replaced; a live agent's or another file is
// left alone.
func TestServerExistingPath(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "s.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	s := startServer(t, Config{Socket: sock, Syncer: &fakeSyncer{}})
	if _, err := NewServer(Config{Socket: sock, Syncer: &fakeSyncer{}}); err == nil || !strings.Contains(err.Error(), "another process") {
		t.Errorf("second server on a live socket: %v", err)
	}
	if _, err := NewClient(s.Socket()).Status(context.Background()); err != nil {
		t.Errorf("first server broken by the second: %v", err)
	}

	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := NewServer(Config{Socket: file, Syncer: &fakeSyncer{}}); err == nil {
		t.Error("server replaced a regular file")
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "x" {
		t.Errorf("regular file changed: %q, %v", b, err)
	}
}

// The socket's mode refuses other users: connect(2) fails with EACCES.
func TestSocketRefusesNonRoot(t *testing.T) {
	dir := publicDir(t)
	sock := filepath.Join(dir, "switchyard.sock")
	startServer(t, Config{Socket: sock, Syncer: &fakeSyncer{}})
	if got, want := runAs(t, sock), fmt.Sprintf("errno %d", int(syscall.EACCES)); got != want {
		t.Errorf("uid 65534 connecting: %q, want %q (EACCES)", got, want)
	}
}

// Should the socket's mode be opened up, the peer check still refuses.
func TestPeerCheckRefusesNonRoot(t *testing.T) {
	dir := publicDir(t)
	sock := filepath.Join(dir, "switchyard.sock")
	startServer(t, Config{Socket: sock, Syncer: &fakeSyncer{}})
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}
	if got := runAs(t, sock); got != "http 403" {
		t.Errorf("uid 65534 on an open socket: %q, want http 403", got)
	}
}

func TestServerEndpoints(t *testing.T) {
	last := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	syncer := &fakeSyncer{st: testState(), last: last, err: errors.New("ipvs: boom"), syncs: 7}
	table := &IPVSTable{Source: SourceAgent, VirtualServers: []IPVSVirtualServer{}}
	sock := filepath.Join(t.TempDir(), "api.sock")
	startServer(t, Config{Socket: sock, Version: "v1.2.3", NodeName: "node-a", SyncChain: "ipvs+conntrack",
		Syncer: syncer, Inspector: &fakeInspector{kind: KindIPVS, table: table}, Conntrack: fakeFlows(testFlows())})
	c := NewClient(sock)
	ctx := context.Background()

	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Version != "v1.2.3" || st.Dataplane != KindIPVS || st.SyncChain != "ipvs+conntrack" || st.NodeName != "node-a" ||
		st.LastSync == nil || !st.LastSync.Equal(last) || st.LastError != "ipvs: boom" || st.Syncs != 7 ||
		st.ServicePorts != 3 || st.Endpoints != 5 || st.StartTime.IsZero() {
		t.Errorf("status %+v", st)
	}

	sl, err := c.Services(ctx, "default", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(sl.Services) != 2 || sl.Dataplane != KindIPVS {
		t.Errorf("services of default: %+v", sl)
	}
	if sl, err = c.Services(ctx, "", "api"); err != nil || len(sl.Services) != 1 || sl.Services[0].Namespace != "shop" {
		t.Errorf("services named api: %+v, %v", sl, err)
	}

	if got, err := c.IPVS(ctx); err != nil || got.Source != SourceAgent {
		t.Errorf("ipvs: %+v, %v", got, err)
	}
	if _, err := c.NFTables(ctx); !IsNotFound(err) {
		t.Errorf("nftables on an IPVS agent: %v, want 404", err)
	}

	ct, err := c.Conntrack(ctx, "default", "web")
	if err != nil || len(ct.Services) != 1 || ct.Services[0].Established != 5 {
		t.Errorf("conntrack of web: %+v, %v", ct, err)
	}

	tr, err := c.Trace(ctx, "10.96.0.10:80/tcp")
	if err != nil || len(tr.Matches) != 1 || tr.Matches[0].Result != "forward" || tr.Protocol != "TCP" {
		t.Errorf("trace: %+v, %v", tr, err)
	}
	if _, err := c.Trace(ctx, "nonsense"); err == nil || !strings.Contains(err.Error(), "HTTP 400") {
		t.Errorf("bad trace destination: %v", err)
	}

	sr, err := c.Sync(ctx)
	if err != nil || !sr.Requested || sr.Status.Syncs != 7 {
		t.Errorf("sync: %+v, %v", sr, err)
	}
	if syncer.requests != 1 {
		t.Errorf("RequestFull called %d times, want 1", syncer.requests)
	}

	// Reads do not sync; GET on /v1/sync does not either.
	resp, err := rawGet(sock, PathSync)
	if err != nil {
		t.Fatal(err)
	}
	if resp != http.StatusNotFound && resp != http.StatusMethodNotAllowed {
		t.Errorf("GET %s: %d", PathSync, resp)
	}
	if syncer.requests != 1 {
		t.Errorf("RequestFull called %d times after reads, want 1", syncer.requests)
	}
	if code, _ := rawGet(sock, "/nope"); code != http.StatusNotFound {
		t.Errorf("unknown path: %d", code)
	}
}

// Before the first sync there is no model: status and services answer,
// the rest says why it cannot.
func TestServerBeforeFirstSync(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "api.sock")
	startServer(t, Config{Socket: sock, Syncer: &fakeSyncer{}, Inspector: &fakeInspector{kind: KindNFTables}, Conntrack: fakeFlows{}})
	c := NewClient(sock)
	ctx := context.Background()
	st, err := c.Status(ctx)
	if err != nil || st.LastSync != nil || st.Syncs != 0 || st.LastError != "" {
		t.Errorf("status: %+v, %v", st, err)
	}
	if sl, err := c.Services(ctx, "", ""); err != nil || len(sl.Services) != 0 {
		t.Errorf("services: %+v, %v", sl, err)
	}
	for what, err := range map[string]error{
		"nftables":  second(c.NFTables(ctx)),
		"trace":     second(c.Trace(ctx, "10.0.0.1:80")),
		"conntrack": second(c.Conntrack(ctx, "", "")),
	} {
		var ae *APIError
		if !errors.As(err, &ae) || ae.StatusCode != http.StatusServiceUnavailable || !strings.Contains(ae.Message, "not synced") {
			t.Errorf("%s before the first sync: %v", what, err)
		}
	}
}

func second[T any](_ T, err error) error { return err }

func rawGet(sock, path string) (int, error) {
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := hc.Get("http://switchyard" + path)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var e Error
	if resp.StatusCode != http.StatusOK && json.Unmarshal(b, &e) != nil {
		return resp.StatusCode, fmt.Errorf("error body not JSON: %q", b)
	}
	return resp.StatusCode, nil
}
