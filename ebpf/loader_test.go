package ebpf

import (
	"os"
	"testing"
)

// TestProgramsPassVerifier loads every program into this kernel: the
// verifier accepts them, and each has the attach type the loader uses.
func TestProgramsPassVerifier(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("loading BPF programs needs root")
	}
	objs, err := loadObjects("", true)
	if err != nil {
		t.Fatal(err)
	}
	defer objs.Close()
	for _, a := range attachments {
		p := a.prog(objs)
		if p == nil {
			t.Fatalf("%s: not loaded", a.name)
		}
		info, err := p.Info()
		if err != nil {
			t.Fatalf("%s: %v", a.name, err)
		}
		if info.Name == "" {
			t.Errorf("%s: program has no name", a.name)
		}
	}
}
