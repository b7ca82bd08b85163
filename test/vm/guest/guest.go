// Package guest is the in-VM side of the test harness in package vm. A test
// package that needs the VM calls it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(guest.Main(m)) }
//
// and each test starts with guest.Required(t). On the host the tests skip;
// booted by `go run ./test/vm/cmd/vmtest -pkg <pkg>` the binary is PID 1:
// it sets up a minimal system, runs the tests and reports to the host.
package guest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/switchyard/switchyard/test/vm"
)

// setUpEnv marks the re-executed init: the system is set up already.
const setUpEnv = "SWITCHYARD_GUEST_SET_UP"

// InVM reports whether this process is the VM's init: PID 1 with the nonce
// the host put on the kernel command line (a container's PID 1 has none).
func InVM() bool { return os.Getpid() == 1 && os.Getenv(vm.NonceEnv) != "" }

// Required skips the test unless it runs inside the VM.
func Required(t testing.TB) {
	t.Helper()
	if !InVM() {
		t.Skip("needs the IPVS VM: run make test-vm")
	}
}

// Main runs the tests. On the host it is m.Run(). Invoked as modprobe (the
// initramfs links /sbin/modprobe to the binary) it loads modules and exits.
// As PID 1 it never returns: it powers the VM off after reporting.
func Main(m *testing.M) int {
	if filepath.Base(os.Args[0]) == "modprobe" {
		os.Exit(modprobeMain(os.Args[1:]))
	}
	if !InVM() {
		return m.Run()
	}
	code := 1
	if os.Getenv(setUpEnv) == "" {
		if err := setup(); err != nil {
			fmt.Printf("guest: setup failed: %v\n", err)
			fmt.Printf("%s nonce=%s exit=%d\n", vm.MarkerPrefix, os.Getenv(vm.NonceEnv), code)
			powerOff(code)
		}
		// Start again, still PID 1, now that /proc, /sys and bpffs are
		// mounted: package initializers ran before they were, and some
		// cache what they saw (cilium/ebpf reads /proc/self/mountinfo
		// once per process, in its rlimit package's init).
		os.Setenv(setUpEnv, "1")
		err := unix.Exec("/proc/self/exe", os.Args, os.Environ())
		fmt.Printf("guest: re-exec after setup failed: %v\n", err)
	} else {
		os.Args = append(os.Args[:1], initArgs()...)
		code = m.Run()
	}
	fmt.Printf("%s nonce=%s exit=%d\n", vm.MarkerPrefix, os.Getenv(vm.NonceEnv), code)
	powerOff(code)
	return code // unreachable: powerOff does not return
}

// setup turns the bare initramfs into a system the tests can use.
func setup() error {
	type mnt struct {
		fstype, target string
		optional       bool
	}
	for _, mt := range []mnt{
		{"proc", "/proc", false}, {"sysfs", "/sys", false}, {"devtmpfs", "/dev", false},
		{"tmpfs", "/tmp", false}, {"tmpfs", "/run", false},
		{"cgroup2", "/sys/fs/cgroup", true}, {"bpf", "/sys/fs/bpf", true},
	} {
		if err := os.MkdirAll(mt.target, 0o755); err != nil && !mt.optional {
			return fmt.Errorf("mkdir %s: %w", mt.target, err)
		}
		if err := unix.Mount(mt.fstype, mt.target, mt.fstype, 0, ""); err != nil && !mt.optional {
			return fmt.Errorf("mount %s: %w", mt.target, err)
		}
	}
	// Named network namespaces are bind mounts here (vishvananda/netns, ip netns).
	if err := os.MkdirAll("/run/netns", 0o755); err != nil {
		return fmt.Errorf("mkdir /run/netns: %w", err)
	}
	// The kernel starts init with HOME and TERM only; exec.LookPath needs PATH.
	os.Setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	os.Setenv("HOME", "/root")

	start := time.Now()
	n, err := loadAllModules(os.Getenv(vm.KernelLogEnv) != "")
	if err != nil {
		return err
	}
	fmt.Printf("guest: loaded %d modules in %v\n", n, time.Since(start).Round(time.Millisecond))

	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set lo up: %w", err)
	}
	// Clients in other namespaces reach services through the root namespace:
	// forwarding off breaks that path while root-namespace clients still work.
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
		return fmt.Errorf("enable ip_forward: %w", err)
	}
	return nil
}

// initArgs returns the words after "--" on the kernel command line, which
// the host uses for test flags.
func initArgs() []string {
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return nil
	}
	words := splitCmdline(string(b))
	for i, w := range words {
		if w == "--" {
			return words[i+1:]
		}
	}
	return nil
}

// splitCmdline splits like the kernel's parser: whitespace separates words,
// a double quote toggles quoting and is dropped.
func splitCmdline(s string) []string {
	var words []string
	var cur strings.Builder
	inQuote, inWord := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote, inWord = !inQuote, true
		case (r == ' ' || r == '\t' || r == '\n') && !inQuote:
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}

// powerOff flushes the console and ends the VM. PID 1 must not exit: the
// kernel would panic.
func powerOff(code int) {
	os.Stdout.Sync()
	// tcdrain: wait until the UART has sent everything, else qemu may exit
	// before the last lines (the marker) reach the host.
	_ = unix.IoctlSetInt(int(os.Stdout.Fd()), unix.TCSBRK, 1)
	status := byte(vm.DebugExitPass)
	if code != 0 {
		status = vm.DebugExitFail
	}
	// /dev/port offset = I/O port. qemu exits at once if isa-debug-exit is
	// there; elsewhere the write goes nowhere and we fall through.
	if f, err := os.OpenFile("/dev/port", os.O_WRONLY, 0); err == nil {
		_, _ = f.WriteAt([]byte{status}, vm.DebugExitPort)
		f.Close()
	}
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	for {
		time.Sleep(time.Hour)
	}
}
