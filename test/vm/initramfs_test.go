package vm

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// A static binary lands at its guest path next to /init, executable.
func TestBuildInitramfsStaticBinaries(t *testing.T) {
	dir := t.TempDir()
	modDir := filepath.Join(dir, "lib", "modules", "6.1.0-test")
	if err := os.MkdirAll(modDir, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(p, content string) string {
		t.Helper()
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write(filepath.Join(modDir, "modules.dep"), "")
	testBin := write(filepath.Join(dir, "guest.test"), "test binary")
	agent := write(filepath.Join(dir, "agent"), "agent binary")
	out := filepath.Join(dir, "initramfs.cpio.gz")
	err := BuildInitramfs(context.Background(), InitramfsConfig{
		Kernel:         &Kernel{Version: "6.1.0-test", ModulesDir: modDir},
		TestBinary:     testBin,
		Modules:        []string{},
		StaticBinaries: map[string]string{AgentPath: agent},
	}, out, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	gz, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := readCpio(t, gz)
	if e := got["bin/switchyard"]; e.data != "agent binary" || e.mode != sIFREG|0o755 {
		t.Errorf("bin/switchyard: %+v", e)
	}
	if e := got["init"]; e.data != "test binary" || e.mode != sIFREG|0o755 {
		t.Errorf("init: %+v", e)
	}
}

func TestStartGoBuildsRejectsBadPaths(t *testing.T) {
	for _, bins := range [][]GoBinary{
		{{Package: "./cmd/switchyard", GuestPath: "bin/switchyard"}},
		{{Package: "./cmd/switchyard", GuestPath: "/init"}},
		{{Package: "", GuestPath: AgentPath}},
		{{Package: "./a", GuestPath: AgentPath}, {Package: "./b", GuestPath: "/bin/../bin/switchyard"}},
	} {
		if _, _, err := startGoBuilds(context.Background(), bins, t.TempDir()); err == nil {
			t.Errorf("%+v accepted", bins)
		}
	}
}
