package scalebench

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/switchyard/switchyard/test/cluster/binaries"
)

var (
	benchFlag   = flag.Bool("scale.bench", false, "run the scale benchmark (builds the agent and the control plane; needs root)")
	scalesFlag  = flag.String("scale.services", "1000,10000,30000", "comma-separated numbers of Services, run in increasing order on one API server")
	epsFlag     = flag.Int("scale.endpoints", 5, "endpoints per Service (one EndpointSlice each)")
	samplesFlag = flag.Int("scale.samples", 30, "single EndpointSlice changes timed per scale")
	idleFlag    = flag.Duration("scale.idle", 30*time.Second, "idle CPU window")
	churnFlag   = flag.Duration("scale.churn", 30*time.Second, "churn CPU window")
	rateFlag    = flag.Int("scale.churn-rate", 50, "endpoint changes per second during churn")
	proxiesFlag = flag.String("scale.proxies", "switchyard,kube-proxy-nftables,kube-proxy-iptables", "proxies to run (switchyard is the reference of the ratios)")
	iptMaxFlag  = flag.Int("scale.iptables-max", 10000, "run kube-proxy in iptables mode only up to this many Services (its cold sync took 4.6 min at 10k on 2 cores; superlinear)")
	pngFlag     = flag.String("scale.png", "", "write the chart here (PNG)")
	mdFlag      = flag.String("scale.md", "", "also write the markdown report here")
)

var (
	agentBin   string
	bins       binaries.Paths
	skipReason string
)

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if !*benchFlag {
		skipReason = "scale benchmark: run with -scale.bench (make bench-scale)"
		return m.Run()
	}
	if os.Geteuid() != 0 {
		skipReason = "scale benchmark needs root (network namespaces, nftables)"
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "switchyard-scalebench-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "scalebench:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	agentBin = filepath.Join(dir, "switchyard")
	build := exec.CommandContext(ctx, "go", "build", "-o", agentBin, "./cmd/switchyard")
	build.Dir = filepath.Join("..", "..", "..")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "scalebench: go build ./cmd/switchyard: %v\n%s", err, out)
		return 1
	}
	if bins, err = binaries.BuildWith(ctx, binaries.Options{Log: os.Stderr}); err != nil {
		fmt.Fprintln(os.Stderr, "scalebench: control plane binaries:", err)
		return 1
	}
	return m.Run()
}
