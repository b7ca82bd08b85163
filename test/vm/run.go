package vm

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Config describes one VM test run.
type Config struct {
	Package  string        // Go package holding the guest tests, e.g. ./test/ipvsvm
	CacheDir string        // kernel cache; DefaultCacheDir() when empty
	Timeout  time.Duration // hard limit for boot plus tests; 15m when zero
	TestArgs []string      // extra guest test flags, e.g. -test.run=TestX
	Modules  []string      // kernel modules (names/globs); DefaultModules when nil
	// ExtraHostBinaries are host tools copied, with their libraries, into the
	// guest at the same paths (see DefaultHostBinaries).
	ExtraHostBinaries []string
	// GoBinaries are Go programs built statically on the host and put into
	// the guest, e.g. the agent at AgentPath for end-to-end tests.
	GoBinaries []GoBinary
	MemoryMiB  int       // 1024 when zero
	CPUs       int       // 2 when zero
	KernelLog  bool      // boot without "quiet" and log module loading
	Out        io.Writer // the guest console; os.Stdout when nil
	Logf       func(string, ...any)
}

// GoBinary is a Go main package built with CGO_ENABLED=0 (so it runs in the
// guest without libc) and placed at GuestPath.
type GoBinary struct {
	Package   string // e.g. ./cmd/switchyard
	GuestPath string // absolute, e.g. AgentPath
}

// AgentPath is where `vmtest -agent` puts the switchyard binary; guest
// tests that drive the real agent exec it from there.
const AgentPath = "/bin/switchyard"

// Result is what the guest reported.
type Result struct {
	Passed, Failed int      // "--- PASS" / "--- FAIL" lines, subtests included
	FailedTests    []string // names from "--- FAIL:" lines
	Elapsed        time.Duration
}

// Guest/host protocol. The guest prints the marker line with the nonce the
// host put into its environment (so test output cannot fake it), then
// writes the status byte to the isa-debug-exit port; qemu exits with
// (byte<<1)|1. If that port is missing the guest powers off (qemu status 0)
// and the marker alone decides.
const (
	MarkerPrefix   = "SWITCHYARD-VM-RESULT"
	NonceEnv       = "SWITCHYARD_VM_NONCE"
	KernelLogEnv   = "SWITCHYARD_VM_KERNEL_LOG"
	DebugExitPort  = 0xf4
	DebugExitPass  = 0x10
	DebugExitFail  = 0x11
	qemuStatusPass = DebugExitPass<<1 | 1
)

// DefaultCacheDir is $SWITCHYARD_VM_CACHE, else <module root>/.cache/vm.
func DefaultCacheDir() (string, error) {
	if d := os.Getenv("SWITCHYARD_VM_CACHE"); d != "" {
		return filepath.Abs(d)
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find module root: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, ".cache", "vm"), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("find module root: no go.mod above the working directory")
		}
		dir = parent
	}
}

// Run builds the test binary and initramfs, boots the VM and returns an
// error unless the guest ran at least one test and all of them passed.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	start := time.Now()
	if cfg.Timeout == 0 {
		cfg.Timeout = 15 * time.Minute
	}
	if cfg.Out == nil {
		cfg.Out = os.Stdout
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	if cfg.CacheDir == "" {
		d, err := DefaultCacheDir()
		if err != nil {
			return nil, err
		}
		cfg.CacheDir = d
	}
	// The deadline covers preparation too: a stuck download must not hang CI.
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()

	work, err := os.MkdirTemp("", "switchyard-vm-")
	if err != nil {
		return nil, fmt.Errorf("create work dir: %w", err)
	}
	defer os.RemoveAll(work)

	// Fetching the kernel (slow only the first time) and compiling overlap.
	static, gch, err := startGoBuilds(ctx, cfg.GoBinaries, work)
	if err != nil {
		return nil, err
	}
	type kres struct {
		k   *Kernel
		err error
	}
	kch := make(chan kres, 1)
	go func() {
		k, err := EnsureKernel(ctx, cfg.CacheDir, cfg.Logf)
		kch <- kres{k, err}
	}()
	bin := filepath.Join(work, "guest.test")
	berr := BuildTestBinary(ctx, cfg.Package, bin)
	for range cfg.GoBinaries {
		berr = errors.Join(berr, <-gch)
	}
	kr := <-kch
	if berr != nil {
		return nil, berr
	}
	if kr.err != nil {
		return nil, kr.err
	}
	cfg.Logf("vm: kernel %s, binaries built (%v)", kr.k.Version, time.Since(start).Round(time.Millisecond))

	initrd := filepath.Join(work, "initramfs.cpio.gz")
	if err := BuildInitramfs(ctx, InitramfsConfig{
		Kernel: kr.k, TestBinary: bin, Modules: cfg.Modules, ExtraHostBinaries: cfg.ExtraHostBinaries,
		StaticBinaries: static,
	}, initrd, cfg.Logf); err != nil {
		return nil, err
	}
	if fi, err := os.Stat(initrd); err == nil {
		cfg.Logf("vm: initramfs %.1f MiB, booting (%v)", float64(fi.Size())/(1<<20), time.Since(start).Round(time.Millisecond))
	}
	res, err := Boot(ctx, kr.k, initrd, cfg)
	if res != nil {
		res.Elapsed = time.Since(start)
	}
	return res, err
}

// startGoBuilds validates bins and builds each into dir concurrently. It
// returns the guest path -> host file map for the initramfs and a channel
// that receives one result (nil or an error) per binary.
func startGoBuilds(ctx context.Context, bins []GoBinary, dir string) (map[string]string, <-chan error, error) {
	static := map[string]string{}
	for i, b := range bins {
		if b.Package == "" || !path.IsAbs(b.GuestPath) || path.Clean(b.GuestPath) == "/init" {
			return nil, nil, fmt.Errorf("go binary %q: needs a package and an absolute guest path other than /init, got %q", b.Package, b.GuestPath)
		}
		gp := path.Clean(b.GuestPath)
		if _, dup := static[gp]; dup {
			return nil, nil, fmt.Errorf("go binary %q: guest path %s used twice", b.Package, gp)
		}
		static[gp] = filepath.Join(dir, fmt.Sprintf("gobin-%d-%s", i, path.Base(gp)))
	}
	ch := make(chan error, len(bins))
	for _, b := range bins {
		go func() { ch <- BuildGoBinary(ctx, b.Package, static[path.Clean(b.GuestPath)]) }()
	}
	return static, ch, nil
}

// BuildGoBinary compiles a main package into a static binary (no cgo, so it
// runs in the guest, which has no libc). Symbol and DWARF tables are left
// out (-s -w): the agent shrinks from ~44 to ~31 MB, which the initramfs
// compressor and the guest's decompression under TCG both feel; panics
// still print function names and lines.
func BuildGoBinary(ctx context.Context, pkg, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build %s for the guest: %w\n%s", pkg, err, b)
	}
	return nil
}

// BuildTestBinary compiles pkg's tests into a static binary (no cgo, so it
// runs as /init with no libc in the guest).
func BuildTestBinary(ctx context.Context, pkg, out string) error {
	cmd := exec.CommandContext(ctx, "go", "test", "-c", "-trimpath", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build guest tests %s: %w\n%s", pkg, err, b)
	}
	// `go test -c` on a package without test files succeeds and writes nothing.
	if _, err := os.Stat(out); err != nil {
		return fmt.Errorf("build guest tests %s: no test binary (no test files?): %w", pkg, err)
	}
	return nil
}

// Boot runs qemu until the guest powers off, the deadline in ctx passes or
// cfg.Timeout elapses, streaming the console to cfg.Out.
func Boot(ctx context.Context, k *Kernel, initrd string, cfg Config) (*Result, error) {
	if cfg.Timeout == 0 {
		cfg.Timeout = 15 * time.Minute
	}
	if cfg.Out == nil {
		cfg.Out = os.Stdout
	}
	if cfg.MemoryMiB == 0 {
		cfg.MemoryMiB = 1024
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = 2
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()

	nonceBytes := make([]byte, 8)
	_, _ = rand.Read(nonceBytes)
	nonce := hex.EncodeToString(nonceBytes)
	appendLine, err := kernelCmdline(ctx, nonce, cfg)
	if err != nil {
		return nil, err
	}
	args := []string{
		"-nographic", "-no-reboot", "-nic", "none",
		"-m", strconv.Itoa(cfg.MemoryMiB), "-smp", strconv.Itoa(cfg.CPUs),
		// -cpu max: with qemu64, crc32c-intel (libcrc32c's softdep) has no SSE4.2.
		"-cpu", "max", "-accel", "tcg",
		"-kernel", k.Vmlinuz, "-initrd", initrd, "-append", appendLine,
		"-device", fmt.Sprintf("isa-debug-exit,iobase=%#x,iosize=0x04", DebugExitPort),
	}
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	cmd.Stdin = nil // /dev/null: CI has no terminal
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start qemu (run scripts/ensure-deps.sh): %w", err)
	}
	waitErr := make(chan error, 1)
	go func() {
		err := cmd.Wait()
		pw.Close()
		waitErr <- err
	}()

	sc := newScanner(nonce)
	sc.scan(pr, cfg.Out, func() {
		// The guest should power off right after the marker; do not let a
		// wedged shutdown eat the rest of the budget.
		time.AfterFunc(30*time.Second, cancel)
	})
	err = <-waitErr
	res := &Result{Passed: sc.passed, Failed: sc.failed, FailedTests: sc.failedTests}

	status := -1
	var ee *exec.ExitError
	switch {
	case err == nil:
		status = 0
	case errors.As(err, &ee) && ee.Exited():
		status = ee.ExitCode()
	}
	if !sc.marker {
		if ctx.Err() != nil {
			return res, fmt.Errorf("vm killed after the %v timeout without a result (hung guest?)", cfg.Timeout)
		}
		why := "the guest exited without printing its result"
		if sc.panicked {
			why = "the guest kernel panicked (a test binary that panics or times out as PID 1 ends this way)"
		}
		return res, fmt.Errorf("%s (qemu status %d)", why, status)
	}
	if sc.exitCode != 0 {
		return res, fmt.Errorf("guest tests failed (exit %d): %d passed, %d failed %v", sc.exitCode, sc.passed, sc.failed, sc.failedTests)
	}
	if status != qemuStatusPass && status != 0 {
		return res, fmt.Errorf("guest reported success but qemu exited with status %d (%v)", status, err)
	}
	if sc.passed == 0 {
		return res, errors.New("no test passed in the guest: zero tests ran (check -run) or all were skipped")
	}
	return res, nil
}

// kernelCmdline builds -append: KEY=VAL words become init's environment,
// words after "--" the test binary's flags (the guest reads them back from
// /proc/cmdline). The kernel's parser honours double quotes only.
func kernelCmdline(ctx context.Context, nonce string, cfg Config) (string, error) {
	// edd=off skips a BIOS disk probe (no disks here) that also prints
	// a stray half line before the kernel's first message.
	parts := []string{"console=ttyS0", "panic=-1", "mitigations=off", "edd=off", NonceEnv + "=" + nonce}
	if cfg.KernelLog {
		parts = append(parts, KernelLogEnv+"=1")
	} else {
		parts = append(parts, "quiet")
	}
	parts = append(parts, "--", "-test.v=true")
	hasTimeout := false
	for _, a := range cfg.TestArgs {
		hasTimeout = hasTimeout || strings.HasPrefix(strings.TrimLeft(a, "-"), "test.timeout")
	}
	if !hasTimeout {
		// Leave room for boot and shutdown so a stuck test panics with
		// goroutine dumps instead of being killed silently by the host.
		budget := cfg.Timeout
		if dl, ok := ctx.Deadline(); ok {
			budget = time.Until(dl)
		}
		margin := min(max(budget/10, 20*time.Second), 2*time.Minute)
		parts = append(parts, "-test.timeout="+(budget-margin).Round(time.Second).String())
	}
	for _, a := range cfg.TestArgs {
		if strings.ContainsAny(a, "\"\n") {
			return "", fmt.Errorf("guest test argument %q: quotes and newlines cannot pass the kernel command line", a)
		}
		if strings.ContainsAny(a, " \t") {
			a = `"` + a + `"`
		}
		parts = append(parts, a)
	}
	line := strings.Join(parts, " ")
	if len(line) > 2000 { // x86 COMMAND_LINE_SIZE is 2048
		return "", fmt.Errorf("kernel command line too long (%d bytes)", len(line))
	}
	return line, nil
}

// scanner follows the console: test counts, the result marker, panics.
type scanner struct {
	markerRE       *regexp.Regexp
	marker         bool
	exitCode       int
	passed, failed int
	failedTests    []string
	panicked       bool
}

var (
	passRE = regexp.MustCompile(`^\s*--- PASS: `)
	failRE = regexp.MustCompile(`^\s*--- FAIL: (\S+)`)
	ansiRE = regexp.MustCompile(`\x1b(\[[0-9;?]*[A-Za-z]|[c78])`)
)

func newScanner(nonce string) *scanner {
	return &scanner{markerRE: regexp.MustCompile(MarkerPrefix + ` nonce=` + nonce + ` exit=(\d+)`)}
}

func (s *scanner) scan(r io.Reader, out io.Writer, onMarker func()) {
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadString('\n')
		if line != "" {
			// The serial console ends lines with \r\n; SeaBIOS and the kernel
			// send terminal resets that would garble a terminal or CI log.
			line = ansiRE.ReplaceAllString(strings.TrimRight(line, "\r\n"), "")
			fmt.Fprintln(out, line)
			s.line(line, onMarker)
		}
		if err != nil {
			return
		}
	}
}

func (s *scanner) line(line string, onMarker func()) {
	switch {
	case passRE.MatchString(line):
		s.passed++
	case failRE.MatchString(line):
		s.failed++
		s.failedTests = append(s.failedTests, failRE.FindStringSubmatch(line)[1])
	case strings.Contains(line, "Kernel panic"):
		s.panicked = true
	}
	if m := s.markerRE.FindStringSubmatch(line); m != nil && !s.marker {
		s.marker = true
		s.exitCode, _ = strconv.Atoi(m[1])
		onMarker()
	}
}
