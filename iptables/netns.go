package iptables

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// nsRunner runs fn in some network namespace and returns its error.
type nsRunner func(fn func() error) error

// runHere runs fn in the caller's namespace.
func runHere(fn func() error) error { return fn() }

// runInNetNS returns an nsRunner that runs fn on a fresh OS thread switched
// into ns.
//
// A namespace is a property of a thread, and a child process starts in the
// namespace of the thread that forked it; Go forks from the calling
// goroutine's thread, so iptables exec'd by go-iptables inside fn runs in
// ns. Files opened by fn (/proc/sys/net/...) and sockets it creates also
// belong to ns.
//
// The goroutine locks its thread and exits without unlocking it: the Go
// runtime then discards the thread instead of returning it, still in ns, to
// the pool. That costs a thread creation per call, which is negligible next
// to an exec.
func runInNetNS(ns netns.NsHandle) nsRunner {
	return func(fn func() error) error {
		errc := make(chan error, 1)
		go func() {
			runtime.LockOSThread()
			if err := netns.Set(ns); err != nil {
				errc <- fmt.Errorf("enter netns: %w", err)
				return
			}
			errc <- fn()
		}()
		return <-errc
	}
}
