// Command vmtest runs a Go test package inside a qemu VM booted from a stock
// Debian kernel (which has IPVS and dummy links, unlike the CI machines):
//
//	go run ./test/vm/cmd/vmtest -pkg ./test/ipvsvm [-timeout 15m] [-run REGEX] [-v]
//
// The switchyard agent (-agent, default ./cmd/switchyard) is built
// statically and put into the VM at /bin/switchyard (vm.AgentPath) for the
// end-to-end tests; -agent= leaves it out.
//
// It exits 0 only if the guest ran at least one test and all passed.
// Host packages come from scripts/ensure-deps.sh.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/switchyard/switchyard/test/vm"
)

func main() {
	pkg := flag.String("pkg", "./test/ipvsvm", "Go package whose tests run in the VM")
	timeout := flag.Duration("timeout", 15*time.Minute, "hard limit for the whole run, VM included")
	runRE := flag.String("run", "", "only run guest tests matching this regexp (-test.run)")
	verbose := flag.Bool("v", false, "verbose harness: kernel log, module loading, timings")
	noHostBins := flag.Bool("no-host-bins", false, "do not copy iptables/ipset host binaries into the VM")
	agent := flag.String("agent", "./cmd/switchyard", "Go package of the agent, built statically into the VM as "+vm.AgentPath+"; empty: none")
	mem := flag.Int("mem", 1024, "guest memory in MiB")
	cpus := flag.Int("smp", 2, "guest CPUs")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: vmtest [flags] [-- extra guest test flags]\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	log.SetFlags(0)

	logf := func(format string, args ...any) {
		if *verbose {
			log.Printf(format, args...)
		}
	}
	var args []string
	if *runRE != "" {
		args = append(args, "-test.run="+*runRE)
	}
	args = append(args, flag.Args()...)
	var bins []string
	if !*noHostBins {
		bins = vm.AvailableHostBinaries(vm.DefaultHostBinaries, logf)
	}

	var gobins []vm.GoBinary
	if *agent != "" {
		gobins = append(gobins, vm.GoBinary{Package: *agent, GuestPath: vm.AgentPath})
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	res, err := vm.Run(ctx, vm.Config{
		Package: *pkg, Timeout: *timeout, TestArgs: args, ExtraHostBinaries: bins, GoBinaries: gobins,
		MemoryMiB: *mem, CPUs: *cpus, KernelLog: *verbose, Out: os.Stdout,
		Logf: func(f string, a ...any) { log.Printf(f, a...) },
	})
	elapsed := time.Since(start).Round(100 * time.Millisecond)
	if res != nil {
		fmt.Printf("vmtest: %d passed, %d failed\n", res.Passed, res.Failed)
	}
	if err != nil {
		log.Printf("vmtest: FAIL %s after %v: %v", *pkg, elapsed, err)
		os.Exit(1)
	}
	log.Printf("vmtest: ok %s in %v", *pkg, elapsed)
}
