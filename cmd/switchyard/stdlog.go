package main

import (
	"log"
	"strings"

	"k8s.io/klog/v2"
)

// stdlogToKlog routes the standard library logger into klog at V(4).
// vishvananda/netlink prints through it, e.g. "unknown ipset data attribute
// from kernel" for every set an ipset binary newer than the library created
// (kube-proxy's, Calico's): harmless, but noise on every full sync.
type stdlogToKlog struct{}

func (stdlogToKlog) Write(p []byte) (int, error) {
	klog.V(4).InfoS("Library log", "msg", strings.TrimSpace(string(p)))
	return len(p), nil
}

func routeStdlog() {
	log.SetFlags(0)
	log.SetOutput(stdlogToKlog{})
}
