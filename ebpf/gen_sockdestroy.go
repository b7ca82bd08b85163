package ebpf

// The socket-destroy iterator (sockdestroy.c), generated and committed
// like socklb's objects; `make generate` runs this too.
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -tags linux sockdestroy sockdestroy.c -- -I/usr/include/x86_64-linux-gnu -O2 -g -Wall -Werror
