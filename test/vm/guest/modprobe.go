package guest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/switchyard/switchyard/test/vm/kmod"
)

func moduleIndex() (*kmod.Index, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return nil, fmt.Errorf("uname: %w", err)
	}
	return kmod.Load(filepath.Join("/lib/modules", unix.ByteSliceToString(u.Release[:])))
}

// loadAllModules preloads every module in the initramfs, dependencies first.
// Preloading beats relying on the kernel's on-demand request_module: some
// users (netfilter, moby/ipvs) only try once and fail quietly.
func loadAllModules(verbose bool) (int, error) {
	ix, err := moduleIndex()
	if err != nil {
		return 0, err
	}
	n := 0
	var failed []string
	for _, m := range ix.LoadOrder(ix.Modules()...) {
		if err := insmod(ix, m); err != nil {
			failed = append(failed, fmt.Sprintf("%s (%v)", m, err))
			continue
		}
		if verbose {
			fmt.Printf("guest: loaded %s\n", m)
		}
		n++
	}
	if len(failed) > 0 {
		// Not fatal: tests that need a missing module fail with their own error.
		fmt.Printf("guest: modules that failed to load: %s\n", strings.Join(failed, ", "))
	}
	return n, nil
}

// insmod loads one module file; "already loaded" counts as success.
func insmod(ix *kmod.Index, name string) error {
	p := filepath.Join(ix.Dir, ix.Paths[name])
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("open module: %w", err)
	}
	defer f.Close()
	flags := 0
	if strings.HasSuffix(p, ".xz") || strings.HasSuffix(p, ".zst") || strings.HasSuffix(p, ".gz") {
		// Newer Debian kernels ship compressed modules; the kernel inflates them.
		flags = unix.MODULE_INIT_COMPRESSED_FILE
	}
	if err := unix.FinitModule(int(f.Fd()), "", flags); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("finit_module %s: %w", name, err)
	}
	return nil
}

// modprobeMain is a tiny modprobe for the callers in the VM: the kernel's
// request_module runs `modprobe -q -- NAME` (NAME often an alias such as
// net-pf-16-proto-12 or ip_set_hash:ip,port), moby/ipvs runs
// `modprobe -va ip_vs`. Options are ignored except -a (all names are
// modules) and -r (unsupported); exit 0 when everything is (now) loaded.
func modprobeMain(args []string) int {
	var names []string
	quiet, endOfOpts := false, false
	for _, a := range args {
		switch {
		case strings.Contains(a, "="): // module parameter: not supported, ignored
		case endOfOpts || !strings.HasPrefix(a, "-"):
			names = append(names, a)
		case a == "--":
			endOfOpts = true
		case strings.HasPrefix(a, "-r") || a == "--remove":
			fmt.Fprintln(os.Stderr, "modprobe: removal not supported in the test VM")
			return 1
		case strings.Contains(a, "q"):
			quiet = true
		}
	}
	ix, err := moduleIndex()
	if err != nil {
		fmt.Fprintf(os.Stderr, "modprobe: %v\n", err)
		return 1
	}
	code := 0
	for _, n := range names {
		mods, builtin := ix.Resolve(n)
		if builtin {
			continue
		}
		if len(mods) == 0 {
			if !quiet {
				fmt.Fprintf(os.Stderr, "modprobe: module %s not found in the test VM\n", n)
			}
			code = 1
			continue
		}
		for _, m := range ix.LoadOrder(mods...) {
			if err := insmod(ix, m); err != nil {
				if !quiet {
					fmt.Fprintf(os.Stderr, "modprobe: %v\n", err)
				}
				code = 1
			}
		}
	}
	return code
}
