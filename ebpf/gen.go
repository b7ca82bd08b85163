package ebpf

// The BPF objects are generated from socklb.c and committed, so building
// needs no clang; `make generate` installs clang when missing and runs this.
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -tags linux -type l4addr -type service -type slot_key -type backend -type affinity_key -type affinity_value -type sock_key -type revnat_value -type udp_flow -type sock_record socklb socklb.c -- -I/usr/include/x86_64-linux-gnu -O2 -g -Wall -Werror
