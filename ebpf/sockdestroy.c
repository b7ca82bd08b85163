// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//go:build ignore

// Socket destroy by cookie for the rebalancer (conntrack/shed.BPFIter).
//
// An iter/tcp program visits every TCP socket of the network namespace of
// the thread that opened the iterator; the Go side (sockdestroy.go) puts
// the cookies of the sockets to close in destroy_cookies, opens and reads
// the iterator once, and reads back what happened to each. The
// bpf_sock_destroy kfunc (Linux 6.5+) aborts a socket like sock_diag's
// SOCK_DESTROY: tcp_abort(sk, ECONNABORTED), an RST to the peer.
//
// The few kernel types used are declared here with preserve_access_index
// (CO-RE relocates the fields against the running kernel's BTF), so this
// builds with the same plain headers as socklb.c, without a vmlinux.h.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char __license[] SEC("license") = "Dual BSD/GPL";

struct sock_common {
	unsigned char skc_state;
} __attribute__((preserve_access_index));

struct bpf_iter_meta;

struct bpf_iter__tcp {
	struct bpf_iter_meta *meta;
	struct sock_common *sk_common;
	__u32 uid;
} __attribute__((preserve_access_index));

extern int bpf_sock_destroy(struct sock_common *sk) __ksym;

// TCP states (include/net/tcp_states.h) that are not a live connection or
// not a full socket: never destroyed, reported as gone.
#define TCP_TIME_WAIT 6
#define TCP_CLOSE 7
#define TCP_LISTEN 10
#define TCP_NEW_SYN_RECV 12

#define ENOENT 2

// Values in destroy_cookies: PENDING until the program meets the socket,
// then bpf_sock_destroy's result (0 or -errno), or -ENOENT for a socket
// that is no live connection.
#define PENDING 1

// Sized like the Go side's batches (sockDestroyBatch).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);   // socket cookie
	__type(value, __s32); // PENDING, then the outcome
} destroy_cookies SEC(".maps");

SEC("iter/tcp")
int destroy_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *sk = ctx->sk_common;
	if (!sk)
		return 0; // the end of the iteration
	__u64 cookie = bpf_get_socket_cookie(sk);
	__s32 *outcome = bpf_map_lookup_elem(&destroy_cookies, &cookie);
	if (!outcome || *outcome != PENDING)
		return 0;
	switch (sk->skc_state) {
	case TCP_TIME_WAIT:
	case TCP_CLOSE:
	case TCP_LISTEN:
	case TCP_NEW_SYN_RECV:
		*outcome = -ENOENT;
		return 0;
	}
	*outcome = bpf_sock_destroy(sk);
	return 0;
}
