package agentspec

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"time"
)

// BuildAgent builds the agent (./cmd/switchyard of the main module, with
// the main module's own dependencies, whichever module the caller's test
// is in) into dir and returns its path. env is added to the build's
// environment (e.g. "CGO_ENABLED=0" to build it as the image does), args
// to go build's flags. An error means the build failed; a missing go
// command is an error too.
func BuildAgent(dir string, env []string, args ...string) (string, error) {
	root, err := mainModuleDir()
	if err != nil {
		return "", err
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("no go toolchain in PATH to build the agent: %w", err)
	}
	bin := filepath.Join(dir, "switchyard")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, append(append([]string{"build"}, args...), "-o", bin, "./cmd/switchyard")...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/switchyard: %w\n%s", err, out)
	}
	return bin, nil
}

// mainModuleDir is the main module's root: two levels above this file.
func mainModuleDir() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("cannot locate the agentspec package source")
	}
	root := filepath.Dir(filepath.Dir(filepath.Dir(file)))
	if _, err := os.Stat(filepath.Join(root, "cmd", "switchyard")); err != nil {
		return "", fmt.Errorf("main module root %s: %w", root, err)
	}
	return root, nil
}
