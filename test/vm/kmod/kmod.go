// Package kmod reads a kernel's module index (modules.dep, modules.softdep,
// modules.alias, modules.builtin as written by depmod) and computes load
// orders. The host uses it to pick the modules that go into the VM's
// initramfs, the guest uses it to load them and to act as a tiny modprobe.
// It is pure Go and has no dependencies so the static guest binary can use it.
package kmod

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// Index is a parsed module index of one kernel version.
type Index struct {
	Dir      string              // lib/modules/<version>
	Paths    map[string]string   // module name -> path relative to Dir
	Deps     map[string][]string // module name -> dependency names (modules.dep)
	Pre      map[string][]string // softdep pre: names or aliases
	Post     map[string][]string // softdep post: names or aliases
	Aliases  []Alias             // modules.alias, in file order
	Builtin  map[string]bool     // modules.builtin
	depOrder []string            // modules.dep line order
}

// Alias is one "alias PATTERN MODULE" line; PATTERN may hold shell globs.
type Alias struct{ Pattern, Module string }

// Name normalises a module name or file name: modprobe treats '-' and '_'
// alike, and depmod lists files with their .ko(.xz|.zst|.gz) suffix.
func Name(s string) string {
	s = path.Base(s)
	if i := strings.Index(s, ".ko"); i >= 0 {
		s = s[:i]
	}
	return strings.ReplaceAll(s, "-", "_")
}

// Load parses the index files in dir. modules.dep is required, the others
// are optional (a filtered initramfs copy may lack them).
func Load(dir string) (*Index, error) {
	ix := &Index{
		Dir: dir, Paths: map[string]string{}, Deps: map[string][]string{},
		Pre: map[string][]string{}, Post: map[string][]string{}, Builtin: map[string]bool{},
	}
	if err := ix.eachLine("modules.dep", true, func(line string) {
		file, deps, ok := strings.Cut(line, ":")
		if !ok {
			return
		}
		n := Name(file)
		ix.Paths[n] = file
		ix.depOrder = append(ix.depOrder, n)
		for _, d := range strings.Fields(deps) {
			ix.Deps[n] = append(ix.Deps[n], Name(d))
		}
	}); err != nil {
		return nil, err
	}
	if err := ix.eachLine("modules.softdep", false, func(line string) {
		// "softdep MODULE pre: a b post: c"
		f := strings.Fields(line)
		if len(f) < 3 || f[0] != "softdep" {
			return
		}
		n, into := Name(f[1]), ix.Pre
		for _, w := range f[2:] {
			switch w {
			case "pre:":
				into = ix.Pre
			case "post:":
				into = ix.Post
			default:
				into[n] = append(into[n], w)
			}
		}
	}); err != nil {
		return nil, err
	}
	if err := ix.eachLine("modules.alias", false, func(line string) {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == "alias" {
			ix.Aliases = append(ix.Aliases, Alias{Pattern: f[1], Module: Name(f[2])})
		}
	}); err != nil {
		return nil, err
	}
	if err := ix.eachLine("modules.builtin", false, func(line string) {
		ix.Builtin[Name(line)] = true
	}); err != nil {
		return nil, err
	}
	return ix, nil
}

func (ix *Index) eachLine(name string, required bool, fn func(string)) error {
	f, err := os.Open(filepath.Join(ix.Dir, name))
	if err != nil {
		if !required && errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("read module index: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" && !strings.HasPrefix(line, "#") {
			fn(line)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read %s: %w", name, err)
	}
	return nil
}

// Modules returns all module names in modules.dep order.
func (ix *Index) Modules() []string { return append([]string(nil), ix.depOrder...) }

// Resolve maps a module name, alias or glob (e.g. "nft_*") to module names.
// builtin reports a name compiled into the kernel (nothing to load).
func (ix *Index) Resolve(name string) (mods []string, builtin bool) {
	n := Name(name)
	if _, ok := ix.Paths[n]; ok {
		return []string{n}, false
	}
	if ix.Builtin[n] {
		return nil, true
	}
	seen := map[string]bool{}
	add := func(m string) {
		if _, ok := ix.Paths[m]; ok && !seen[m] {
			seen[m] = true
			mods = append(mods, m)
		}
	}
	if strings.ContainsAny(name, "*?[") {
		for _, m := range ix.depOrder {
			if ok, _ := path.Match(n, m); ok {
				add(m)
			}
		}
		return mods, false
	}
	// Aliases are matched on the raw name: they may legitimately contain '-'.
	for _, a := range ix.Aliases {
		if ok, _ := path.Match(a.Pattern, name); ok {
			if ix.Builtin[a.Module] {
				builtin = true
			}
			add(a.Module)
		}
	}
	return mods, builtin && len(mods) == 0
}

// LoadOrder returns the modules to load for the given names, each after its
// dependencies and softdep "pre:" modules and before its "post:" modules.
// Softdeps are best effort, as in modprobe: unknown ones are ignored.
// (libcrc32c's dependency on a crc32c implementation is only a softdep, so
// skipping softdeps gives a libcrc32c that fails to load.)
func (ix *Index) LoadOrder(names ...string) []string {
	var order []string
	visited := map[string]bool{}
	var visit func(m string)
	visit = func(m string) {
		if visited[m] {
			return
		}
		visited[m] = true
		for _, p := range ix.Pre[m] {
			mods, _ := ix.Resolve(p)
			for _, pm := range mods {
				visit(pm)
			}
		}
		for _, d := range ix.Deps[m] {
			visit(d)
		}
		order = append(order, m)
		for _, p := range ix.Post[m] {
			mods, _ := ix.Resolve(p)
			for _, pm := range mods {
				visit(pm)
			}
		}
	}
	for _, n := range names {
		visit(Name(n))
	}
	return order
}

// Subset returns the contents of modules.dep, modules.softdep and
// modules.alias restricted to mods (which should be closed under LoadOrder),
// ready to be written next to the module files in an initramfs.
func (ix *Index) Subset(mods []string) map[string][]byte {
	in := map[string]bool{}
	for _, m := range mods {
		in[m] = true
	}
	var dep, soft, alias bytes.Buffer
	for _, m := range ix.depOrder {
		if !in[m] {
			continue
		}
		fmt.Fprintf(&dep, "%s:", ix.Paths[m])
		for _, d := range ix.Deps[m] {
			fmt.Fprintf(&dep, " %s", ix.Paths[d])
		}
		dep.WriteByte('\n')
		if len(ix.Pre[m])+len(ix.Post[m]) > 0 {
			fmt.Fprintf(&soft, "softdep %s", m)
			if len(ix.Pre[m]) > 0 {
				fmt.Fprintf(&soft, " pre: %s", strings.Join(ix.Pre[m], " "))
			}
			if len(ix.Post[m]) > 0 {
				fmt.Fprintf(&soft, " post: %s", strings.Join(ix.Post[m], " "))
			}
			soft.WriteByte('\n')
		}
	}
	for _, a := range ix.Aliases {
		if in[a.Module] {
			fmt.Fprintf(&alias, "alias %s %s\n", a.Pattern, a.Module)
		}
	}
	var builtin bytes.Buffer
	b := make([]string, 0, len(ix.Builtin))
	for m := range ix.Builtin {
		b = append(b, m)
	}
	sort.Strings(b)
	for _, m := range b {
		fmt.Fprintf(&builtin, "%s.ko\n", m)
	}
	return map[string][]byte{
		"modules.dep": dep.Bytes(), "modules.softdep": soft.Bytes(),
		"modules.alias": alias.Bytes(), "modules.builtin": builtin.Bytes(),
	}
}
