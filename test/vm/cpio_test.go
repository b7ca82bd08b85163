package vm

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

type cpioEntry struct {
	mode       uint32
	rmaj, rmin uint32
	data       string
}

// readCpio is a minimal newc reader for checking what writeTo produced.
func readCpio(t *testing.T, gz []byte) (map[string]cpioEntry, []string) {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]cpioEntry{}
	var order []string
	align := func(n int) int { return (n + 3) &^ 3 }
	for off := 0; ; {
		h := raw[off : off+110]
		if string(h[:6]) != "070701" {
			t.Fatalf("bad magic at %d", off)
		}
		field := func(i int) uint32 {
			v, err := strconv.ParseUint(string(h[6+8*i:14+8*i]), 16, 32)
			if err != nil {
				t.Fatal(err)
			}
			return uint32(v)
		}
		size, nameSize := int(field(6)), int(field(11))
		name := string(raw[off+110 : off+110+nameSize-1])
		off = align(off + 110 + nameSize)
		if name == "TRAILER!!!" {
			return out, order
		}
		out[name] = cpioEntry{mode: field(1), rmaj: field(9), rmin: field(10), data: string(raw[off : off+size])}
		order = append(order, name)
		off = align(off + size)
	}
}

func TestArchive(t *testing.T) {
	host := filepath.Join(t.TempDir(), "bin")
	if err := os.WriteFile(host, []byte("#!binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	a := newArchive()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(a.symlink("lib", "usr/lib"))
	must(a.file("lib/modules/6.1/modules.dep", []byte("x.ko:\n"), 0o644))
	must(a.charDev("dev/console", 5, 1))
	must(a.hostFile("init", host, 0o755))
	must(a.symlink("sbin/modprobe", "/init"))
	var buf bytes.Buffer
	must(a.writeTo(&buf))

	got, order := readCpio(t, buf.Bytes())
	if e := got["usr/lib/modules/6.1/modules.dep"]; e.data != "x.ko:\n" || e.mode != sIFREG|0o644 {
		t.Errorf("file under symlinked lib not redirected: %+v", got)
	}
	if e := got["lib"]; e.mode != sIFLNK|0o777 || e.data != "usr/lib" {
		t.Errorf("lib symlink: %+v", e)
	}
	if e := got["dev/console"]; e.mode != sIFCHR|0o600 || e.rmaj != 5 || e.rmin != 1 {
		t.Errorf("dev/console: %+v", e)
	}
	if e := got["init"]; e.data != "#!binary" || e.mode != sIFREG|0o755 {
		t.Errorf("init: %+v", e)
	}
	if got["sbin/modprobe"].data != "/init" || got["sbin"].mode != sIFDIR|0o755 {
		t.Errorf("modprobe link or sbin dir missing: %+v", got)
	}
	pos := map[string]int{}
	for i, n := range order {
		pos[n] = i
	}
	if pos["usr"] > pos["usr/lib"] || pos["usr/lib"] > pos["usr/lib/modules"] {
		t.Errorf("directories not before their contents: %v", order)
	}
}
