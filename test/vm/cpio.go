package vm

import (
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// archive collects initramfs entries and writes them as a gzip'd newc cpio,
// which the kernel unpacks into its rootfs. No root and no cpio tool needed:
// device nodes are just headers.
type archive struct {
	entries map[string]*entry // key: path without leading '/'
}

type entry struct {
	mode         uint32 // file type and permission bits
	hostPath     string // regular file: copied from here at write time
	data         []byte // regular file contents, or symlink target
	major, minor uint32 // device nodes
}

const (
	sIFDIR  = 0o040000
	sIFREG  = 0o100000
	sIFLNK  = 0o120000
	sIFCHR  = 0o020000
	maxLink = 40
)

func newArchive() *archive { return &archive{entries: map[string]*entry{}} }

// resolve rewrites p so no parent component is a symlink already in the
// archive: the kernel's unpacker would otherwise replace that symlink by a
// directory (e.g. usrmerge's lib -> usr/lib brought in with host binaries).
func (a *archive) resolve(p string) (string, error) {
	p = strings.TrimPrefix(path.Clean("/"+p), "/")
	for n := 0; n < maxLink; n++ {
		parts := strings.Split(p, "/")
		changed := false
		for i := 1; i < len(parts); i++ {
			prefix := strings.Join(parts[:i], "/")
			if e := a.entries[prefix]; e != nil && e.mode&0o170000 == sIFLNK {
				tgt := string(e.data)
				if !strings.HasPrefix(tgt, "/") {
					tgt = path.Join(path.Dir("/"+prefix), tgt)
				}
				p = strings.TrimPrefix(path.Clean(tgt+"/"+strings.Join(parts[i:], "/")), "/")
				changed = true
				break
			}
		}
		if !changed {
			return p, nil
		}
	}
	return "", fmt.Errorf("initramfs path %s: too many symlinks", p)
}

// add inserts an entry after creating its parent directories.
func (a *archive) add(p string, e *entry) error {
	p, err := a.resolve(p)
	if err != nil {
		return err
	}
	if p == "" {
		return nil
	}
	if dir := path.Dir(p); dir != "." {
		if err := a.add(dir, &entry{mode: sIFDIR | 0o755}); err != nil {
			return err
		}
	}
	if old := a.entries[p]; old != nil {
		if old.mode&0o170000 != e.mode&0o170000 {
			return fmt.Errorf("initramfs path %s added twice with different types", p)
		}
		if e.mode&0o170000 == sIFDIR {
			return nil
		}
	}
	a.entries[p] = e
	return nil
}

func (a *archive) dir(p string) error { return a.add(p, &entry{mode: sIFDIR | 0o755}) }

func (a *archive) file(p string, data []byte, perm uint32) error {
	return a.add(p, &entry{mode: sIFREG | perm, data: data})
}

func (a *archive) hostFile(p, host string, perm uint32) error {
	return a.add(p, &entry{mode: sIFREG | perm, hostPath: host})
}

func (a *archive) symlink(p, target string) error {
	return a.add(p, &entry{mode: sIFLNK | 0o777, data: []byte(target)})
}

func (a *archive) charDev(p string, major, minor uint32) error {
	return a.add(p, &entry{mode: sIFCHR | 0o600, major: major, minor: minor})
}

// addHostPath copies a host file into the archive at the same path,
// recreating every symlink met on the way (/lib64 -> usr/lib64,
// /usr/sbin/iptables -> /etc/alternatives/iptables -> ...), so names and
// relative links behave in the guest as on the host.
func (a *archive) addHostPath(p string) error {
	for n := 0; n < maxLink; n++ {
		p = filepath.Clean(p)
		parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
		redirected := false
		for i := range parts {
			cur := "/" + strings.Join(parts[:i+1], "/")
			fi, err := os.Lstat(cur)
			if err != nil {
				return fmt.Errorf("host path: %w", err)
			}
			switch {
			case fi.Mode()&os.ModeSymlink != 0:
				tgt, err := os.Readlink(cur)
				if err != nil {
					return fmt.Errorf("host path: %w", err)
				}
				if err := a.symlink(cur, tgt); err != nil {
					return err
				}
				if !filepath.IsAbs(tgt) {
					tgt = filepath.Join(filepath.Dir(cur), tgt)
				}
				p = filepath.Join(append([]string{tgt}, parts[i+1:]...)...)
				redirected = true
			case i == len(parts)-1 && fi.Mode().IsRegular():
				return a.hostFile(cur, cur, uint32(fi.Mode().Perm()))
			case fi.IsDir():
				if i == len(parts)-1 {
					return a.dir(cur)
				}
			default:
				return fmt.Errorf("host path %s: unsupported file type %v", cur, fi.Mode().Type())
			}
			if redirected {
				break
			}
		}
		if !redirected {
			return nil
		}
	}
	return fmt.Errorf("host path %s: too many symlinks", p)
}

// writeTo writes the gzip'd newc cpio. Sorted paths put every directory
// before its contents.
func (a *archive) writeTo(w io.Writer) error {
	names := make([]string, 0, len(a.entries))
	for n := range a.entries {
		names = append(names, n)
	}
	sort.Strings(names)
	// BestSpeed: the guest's decompression runs under TCG, and the archive
	// is mostly the test binary; better ratios cost host time for little gain.
	zw, err := gzip.NewWriterLevel(w, gzip.BestSpeed)
	if err != nil {
		return fmt.Errorf("gzip: %w", err)
	}
	for i, n := range names {
		if err := writeEntry(zw, uint32(i+1), n, a.entries[n]); err != nil {
			return err
		}
	}
	if err := writeHeader(zw, 0, "TRAILER!!!", 0, 0, 0, 0, 1); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("gzip: %w", err)
	}
	return nil
}

func writeEntry(w io.Writer, ino uint32, name string, e *entry) error {
	data := e.data
	if e.hostPath != "" {
		var err error
		if data, err = os.ReadFile(e.hostPath); err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}
	}
	nlink := uint32(1)
	if e.mode&0o170000 == sIFDIR {
		nlink = 2
	}
	if err := writeHeader(w, ino, name, e.mode, uint32(len(data)), e.major, e.minor, nlink); err != nil {
		return err
	}
	if _, err := w.Write(data); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	return pad(w, len(data))
}

// writeHeader writes a "070701" header: 13 eight-digit hex fields, then the
// NUL-terminated name; name and data are each padded to 4 bytes.
func writeHeader(w io.Writer, ino uint32, name string, mode, size, rmajor, rminor, nlink uint32) error {
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		ino, mode, 0, 0, nlink, 0, size, 0, 0, rmajor, rminor, len(name)+1, 0)
	if _, err := io.WriteString(w, hdr+name+"\x00"); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	return pad(w, len(hdr)+len(name)+1)
}

func pad(w io.Writer, n int) error {
	if r := n % 4; r != 0 {
		if _, err := w.Write(make([]byte, 4-r)); err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}
	}
	return nil
}
