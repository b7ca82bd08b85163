// Command yardctl is switchyard's debugging CLI for a person on the node;
// see package cli.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/switchyard/switchyard/cmd/yardctl/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := cli.NewCommand(cli.Env{}).ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "yardctl:", err)
		os.Exit(1)
	}
}
