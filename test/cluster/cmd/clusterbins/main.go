// Command clusterbins builds (or finds in the cache) the test control
// plane's kube-apiserver, kube-proxy and etcd and prints where they are:
// `make cluster-bins` runs it. Flags: -cache DIR (default: the user cache
// dir's switchyard-cluster, or $SWITCHYARD_CLUSTER_CACHE), -q (print only
// the cache entry's directory).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/switchyard/switchyard/test/cluster/binaries"
)

func main() {
	cache := flag.String("cache", "", "cache root (default: $SWITCHYARD_CLUSTER_CACHE or the user cache dir)")
	quiet := flag.Bool("q", false, "print only the directory holding the binaries")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	opts := binaries.Options{CacheRoot: *cache}
	if !*quiet {
		opts.Log = os.Stderr
	}
	p, err := binaries.BuildWith(ctx, opts)
	if err != nil {
		fmt.Fprintf(os.Stderr, "clusterbins: %v\n", err)
		os.Exit(1)
	}
	if *quiet {
		fmt.Println(p.Dir)
		return
	}
	fmt.Printf("kube-apiserver %s\nkube-proxy     %s\netcd           %s\n(%s)\n", p.APIServer, p.Proxy, p.Etcd, time.Since(start).Round(time.Millisecond))
}
