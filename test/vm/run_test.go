package vm

import (
	"context"
	"strings"
	"testing"
	"time"
)

func TestKernelCmdline(t *testing.T) {
	line, err := kernelCmdline(context.Background(), "abc", Config{
		Timeout: 10 * time.Minute, TestArgs: []string{"-test.run=A|B", "-test.skip=X Y"},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"console=ttyS0 ", "panic=-1 ", NonceEnv + "=abc ", " quiet -- -test.v=true -test.timeout=9m0s",
		" -test.run=A|B \"-test.skip=X Y\"",
	} {
		if !strings.Contains(line, want) {
			t.Errorf("cmdline %q lacks %q", line, want)
		}
	}
	if _, err := kernelCmdline(context.Background(), "abc", Config{TestArgs: []string{`-x="y"`}}); err == nil {
		t.Error("quotes in a test argument accepted")
	}
}

func TestScanner(t *testing.T) {
	console := "=== RUN   TestA\r\n\x1b[2J--- PASS: TestA (0.1s)\r\n" +
		"    --- FAIL: TestB/sub (0.0s)\r\n" +
		"SWITCHYARD-VM-RESULT nonce=forged exit=0\r\n" +
		"SWITCHYARD-VM-RESULT nonce=n1 exit=1\r\n"
	s := newScanner("n1")
	var out strings.Builder
	marked := 0
	s.scan(strings.NewReader(console), &out, func() { marked++ })
	if !s.marker || s.exitCode != 1 || marked != 1 {
		t.Errorf("marker %v exit %d (callbacks %d), want the nonce'd marker with exit 1", s.marker, s.exitCode, marked)
	}
	if s.passed != 1 || s.failed != 1 || len(s.failedTests) != 1 || s.failedTests[0] != "TestB/sub" {
		t.Errorf("counts %d passed %d failed %v", s.passed, s.failed, s.failedTests)
	}
	if strings.ContainsAny(out.String(), "\r\x1b") {
		t.Errorf("console output not cleaned: %q", out.String())
	}
}
