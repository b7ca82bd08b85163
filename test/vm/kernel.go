// Package vm boots a stock Debian kernel under qemu (TCG, no KVM) with a
// static Go test binary as /init, so tests that need kernel features the
// development and CI machines lack (IPVS, dummy links) run against a real
// kernel. See /work/shared/notes/ipvs-vm.md for the measured recipe.
package vm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// Kernel is an unpacked kernel package with a module index.
type Kernel struct {
	Package    string // Debian package, e.g. linux-image-6.1.0-56-amd64
	Version    string // uname -r, e.g. 6.1.0-56-amd64
	Vmlinuz    string // path of the bootable image
	ModulesDir string // <root>/lib/modules/<Version>, with modules.dep
}

// metaPackage is what `apt-cache depends` resolves to the concrete image.
const metaPackage = "linux-image-amd64"

// EnsureKernel makes sure an unpacked, depmod'ed kernel is in cacheDir and
// returns it. The first call downloads the package with apt-get (never
// installs it); later calls reuse it through a stamp file. Concurrent callers
// are serialised with a lock file. SWITCHYARD_VM_KERNEL_PKG pins the package.
func EnsureKernel(ctx context.Context, cacheDir string, logf func(string, ...any)) (*Kernel, error) {
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("create vm cache: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(cacheDir, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open cache lock: %w", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return nil, fmt.Errorf("lock vm cache: %w", err)
	}

	pkg := os.Getenv("SWITCHYARD_VM_KERNEL_PKG")
	if pkg == "" {
		pkg, err = resolveKernelPackage(ctx, logf)
		if err != nil {
			// Offline or no apt lists: any kernel unpacked earlier will do.
			if k, cerr := cachedKernel(cacheDir); cerr == nil {
				logf("vm: %v; using cached %s", err, k.Package)
				return k, nil
			}
			return nil, err
		}
	}
	dir := filepath.Join(cacheDir, pkg)
	if _, err := os.Stat(filepath.Join(dir, "ready")); err == nil {
		return openKernel(pkg, filepath.Join(dir, "root"))
	}

	logf("vm: downloading and unpacking %s into %s", pkg, dir)
	if err := os.RemoveAll(dir); err != nil {
		return nil, fmt.Errorf("clean %s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	// apt-get download writes into the working directory; it drops privileges
	// to _apt when that user can write there, else it warns and downloads as root.
	if err := run(ctx, dir, "apt-get", "download", "-q", pkg); err != nil {
		return nil, fmt.Errorf("download kernel: %w", err)
	}
	debs, _ := filepath.Glob(filepath.Join(dir, "*.deb"))
	if len(debs) != 1 {
		return nil, fmt.Errorf("download kernel: expected one .deb in %s, found %d", dir, len(debs))
	}
	root := filepath.Join(dir, "root")
	if err := run(ctx, "", "dpkg-deb", "-x", debs[0], root); err != nil {
		return nil, fmt.Errorf("unpack kernel: %w", err)
	}
	k, err := openKernel(pkg, root)
	if err != nil {
		return nil, err
	}
	// The .deb ships no modules.dep; depmod builds it (and softdep/alias).
	if err := run(ctx, "", "depmod", "-b", root, k.Version); err != nil {
		return nil, fmt.Errorf("depmod: %w", err)
	}
	if err := os.Remove(debs[0]); err != nil {
		return nil, fmt.Errorf("remove kernel package: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ready"), []byte(k.Version+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("write stamp: %w", err)
	}
	return openKernel(pkg, root)
}

// resolveKernelPackage asks apt which image linux-image-amd64 points to,
// running `apt-get update` once when the package lists are empty.
func resolveKernelPackage(ctx context.Context, logf func(string, ...any)) (string, error) {
	for attempt := 0; ; attempt++ {
		out, err := exec.CommandContext(ctx, "apt-cache", "depends", metaPackage).Output()
		if err == nil {
			for _, line := range strings.Split(string(out), "\n") {
				if dep, ok := strings.CutPrefix(strings.TrimSpace(line), "Depends: "); ok &&
					strings.HasPrefix(dep, "linux-image-") {
					return dep, nil
				}
			}
		}
		if attempt > 0 {
			return "", fmt.Errorf("resolve %s with apt-cache: %s", metaPackage, errText(err, out))
		}
		logf("vm: apt-cache cannot resolve %s; running apt-get update", metaPackage)
		if err := run(ctx, "", "apt-get", "update", "-q"); err != nil {
			return "", fmt.Errorf("apt-get update: %w", err)
		}
	}
}

func errText(err error, out []byte) string {
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return fmt.Sprintf("%v: %s", err, bytes.TrimSpace(ee.Stderr))
		}
		return err.Error()
	}
	return fmt.Sprintf("no linux-image dependency in %q", bytes.TrimSpace(out))
}

// cachedKernel returns the newest-named ready kernel in the cache.
func cachedKernel(cacheDir string) (*Kernel, error) {
	stamps, _ := filepath.Glob(filepath.Join(cacheDir, "*", "ready"))
	if len(stamps) == 0 {
		return nil, errors.New("no cached kernel")
	}
	sort.Strings(stamps)
	dir := filepath.Dir(stamps[len(stamps)-1])
	return openKernel(filepath.Base(dir), filepath.Join(dir, "root"))
}

// openKernel finds the version (the single lib/modules/<v> directory) and
// the image in an unpacked package.
func openKernel(pkg, root string) (*Kernel, error) {
	var mods []string
	for _, d := range []string{"lib/modules", "usr/lib/modules"} {
		entries, err := os.ReadDir(filepath.Join(root, d))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("read kernel tree: %w", err)
		}
		for _, e := range entries {
			if e.IsDir() {
				mods = append(mods, filepath.Join(root, d, e.Name()))
			}
		}
	}
	if len(mods) != 1 {
		return nil, fmt.Errorf("kernel tree %s: want one modules directory, found %d", root, len(mods))
	}
	ver := filepath.Base(mods[0])
	img := filepath.Join(root, "boot", "vmlinuz-"+ver)
	if _, err := os.Stat(img); err != nil {
		return nil, fmt.Errorf("kernel image: %w", err)
	}
	return &Kernel{Package: pkg, Version: ver, Vmlinuz: img, ModulesDir: mods[0]}, nil
}

// run runs a command, returning its output in the error when it fails.
func run(ctx context.Context, dir, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}
