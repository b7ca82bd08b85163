// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//go:build ignore

// Socket-level load balancing and connection accounting for switchyard.
//
// cgroup/connect{4,6} and cgroup/sendmsg{4,6} rewrite the destination of a
// socket aimed at a Service frontend to one of its backends, so traffic
// that starts on the node needs no per-packet NAT; cgroup/getpeername{4,6}
// and cgroup/recvmsg{4,6} translate the backend back to the frontend so
// applications see the address they asked for. sockops counts established
// TCP connections per backend and keeps one record per such socket for the
// rebalancer.
//
// Every miss (unknown frontend, a service with no slot, a backend deleted
// under our feet) leaves the socket untranslated: the packet dataplane
// (IPVS or nftables), which still programs every Service, then handles it.
// That makes a half-written map harmless and lets the agent update maps
// without pausing traffic.
//
// Addresses are 16 bytes everywhere, IPv4 as IPv4-mapped IPv6
// (::ffff:a.b.c.d); ports in maps are in host byte order.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char __license[] SEC("license") = "Dual BSD/GPL";

#define AF_INET 2
#define AF_INET6 10
#define PROTO_TCP 6
#define PROTO_UDP 17

// Frontend kinds (l4addr.tag in the frontends map).
#define FRONTEND_VIP 0      // a ClusterIP, external IP or load-balancer IP
#define FRONTEND_NODEPORT 1 // addr unspecified: any local address of the node

// Connection directions (l4addr.tag in the counts map and sock_record.dir).
#define DIR_OUT 0 // this node's socket connected to the backend
#define DIR_IN 1  // a backend on this node accepted the connection

// PICK_FULL: pick_backend found every backend at the service's max_conns.
#define PICK_FULL 0xffffffffU
// MAX_LIMIT_SCAN bounds the slots pick_backend looks at for a backend
// below the connection limit (the verifier needs a bound; a service with
// more slots is refused when the ones looked at are full).
#define MAX_LIMIT_SCAN 64
#define ECONNREFUSED 111

#define SERVICE_AFFINITY 1   // service.flags: ClientIP session affinity
#define SERVICE_LEAST_CONN 2 // service.flags: steer to the less loaded of two random picks

// count_connections is set by the loader: 0 when sockops is not attached
// (connection counting off), so translated TCP sockets keep their reverse
// translation in revnat, which evicts, rather than in sock_records, which
// only sockops cleans up.
volatile const __u8 count_connections = 1;

struct l4addr {
	__u8 addr[16];
	__u16 port;
	__u8 proto;
	__u8 tag;
};

// services is keyed by service id. Its slots live in the slots map under
// (id, gen, 1..count); the agent writes a new generation's slots first and
// then flips gen and count here with one update, so a lookup never mixes
// two generations.
struct service {
	__u32 count;
	__u32 gen;
	__u32 affinity_timeout; // seconds; 0 without affinity
	__u32 flags;
	// max_conns is switchyard.io/max-connections-per-backend (TCP; 0:
	// none): a backend with this many established connections from this
	// node (conn_counts, DIR_OUT) takes no new one.
	__u32 max_conns;
};

struct slot_key {
	__u32 svc_id;
	__u16 gen;
	__u16 slot;
};

struct backend {
	struct l4addr addr; // tag unused
};

struct affinity_key {
	__u64 netns_cookie; // the client's network namespace: one pod, or the host
	__u32 svc_id;
	__u32 pad;
};

struct affinity_value {
	__u64 last_ns;
	__u32 backend_id;
	__u32 pad;
};

// sock_key names a socket's view of one peer: reverse translation
// (revnat) and UDP flow pinning (udp_flows).
struct sock_key {
	__u64 cookie;
	struct l4addr peer; // tag unused
	__u32 pad;
};

struct revnat_value {
	struct l4addr frontend; // tag unused
	__u32 svc_id;
};

struct udp_flow {
	__u32 backend_id;
	__u32 svc_id;
};

// sock_record describes one TCP socket, keyed by its socket cookie: a
// socket connect4/6 translated from the connect on (established_ns 0
// until it is established), and every counted established socket: what
// getpeername reverses and what the rebalancer chooses from. Keeping the
// translation here rather than in socket storage (whose first use
// allocates, ~1.5 us) makes the connect path one hash insert.
struct sock_record {
	struct l4addr local;
	struct l4addr remote;
	struct l4addr frontend; // zero unless the socket was translated here
	__u32 svc_id;           // 0 unless translated here
	__u64 established_ns;   // bpf_ktime_get_ns at establishment
	__u64 netns_cookie;
	__u8 dir;
	__u8 pad[7];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct l4addr);
	__type(value, __u32); // service id
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} frontends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct service);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct slot_key);
	__type(value, __u32); // backend id
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, __u32);
	__type(value, struct backend);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} backends SEC(".maps");

// local_addrs holds the node's addresses: NodePorts translate only there.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u8[16]);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} local_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct affinity_key);
	__type(value, struct affinity_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct sock_key);
	__type(value, struct revnat_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} revnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct sock_key);
	__type(value, struct udp_flow);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} udp_flows SEC(".maps");

// backend_addrs lists every backend address:port (TCP) of every Service:
// only connections to or from these are counted.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct l4addr);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} backend_addrs SEC(".maps");

// conn_counts: established connections per backend and direction (tag).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct l4addr);
	__type(value, __u64);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} conn_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, __u64);
	__type(value, struct sock_record);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sock_records SEC(".maps");


static __always_inline void set_v4(__u8 *addr, __u32 ip4)
{
	__builtin_memset(addr, 0, 10);
	addr[10] = 0xff;
	addr[11] = 0xff;
	__builtin_memcpy(addr + 12, &ip4, 4);
}

static __always_inline int is_v4(const __u8 *addr)
{
	__u64 lo;
	__u32 mid;
	__builtin_memcpy(&lo, addr, 8);
	__builtin_memcpy(&mid, addr + 8, 4);
	return lo == 0 && mid == bpf_htonl(0x0000ffff);
}

static __always_inline void get_v6(__u8 *addr, const __u32 *ip6)
{
	// ctx fields allow 4-byte loads only: copy word by word.
	__u32 w0 = ip6[0], w1 = ip6[1], w2 = ip6[2], w3 = ip6[3];
	__builtin_memcpy(addr, &w0, 4);
	__builtin_memcpy(addr + 4, &w1, 4);
	__builtin_memcpy(addr + 8, &w2, 4);
	__builtin_memcpy(addr + 12, &w3, 4);
}

// load is this node's established connections to a backend (0 when
// sockops has counted none).
static __always_inline __u64 load(const struct l4addr *addr)
{
	struct l4addr key = *addr;
	key.proto = PROTO_TCP;
	key.tag = DIR_OUT;
	__u64 *n = bpf_map_lookup_elem(&conn_counts, &key);
	return n ? *n : 0;
}

// full reports whether a backend holds the service's connection limit.
static __always_inline int full(const struct service *svc, const struct backend *be)
{
	return svc->max_conns && load(&be->addr) >= svc->max_conns;
}

// pick_backend chooses a backend of svc_id for the client namespace
// netns: the affinity entry while it is fresh and its backend still
// exists, else a random slot (slots repeat a backend by its weight).
// With a connection limit, a full first choice makes it walk the slots
// after it (at most MAX_LIMIT_SCAN) for one with room; it returns
// PICK_FULL when there is none, and for a client whose affinity backend
// is full (moving it would break the affinity).
static __always_inline __u32 pick_backend(void *ctx, __u32 svc_id, struct service *svc,
					  struct backend **out)
{
	struct affinity_key akey = {.svc_id = svc_id};
	__u64 now = 0;
	struct backend *be;
	__u32 id;

	// Clock and namespace cookie only for affinity: connect is the hot path.
	if (svc->flags & SERVICE_AFFINITY) {
		akey.netns_cookie = bpf_get_netns_cookie(ctx);
		now = bpf_ktime_get_ns();
		struct affinity_value *av = bpf_map_lookup_elem(&affinity, &akey);
		if (av && now - av->last_ns <= (__u64)svc->affinity_timeout * 1000000000ULL) {
			be = bpf_map_lookup_elem(&backends, &av->backend_id);
			if (be) {
				if (full(svc, be))
					return PICK_FULL;
				av->last_ns = now;
				*out = be;
				return av->backend_id;
			}
		}
	}

	struct slot_key skey = {
		.svc_id = svc_id,
		.gen = (__u16)svc->gen,
		.slot = (__u16)(bpf_get_prandom_u32() % svc->count) + 1,
	};
	__u32 *bid = bpf_map_lookup_elem(&slots, &skey);
	if (!bid)
		return 0;
	id = *bid;
	be = bpf_map_lookup_elem(&backends, &id);
	if (!be)
		return 0;
	if ((svc->flags & SERVICE_LEAST_CONN) && svc->count > 1) {
		// Power of two choices over this node's established
		// connections (sockops counts): reconnects of a rebalanced
		// Service land on the less loaded backends.
		skey.slot = (__u16)(bpf_get_prandom_u32() % svc->count) + 1;
		__u32 *bid2 = bpf_map_lookup_elem(&slots, &skey);
		if (bid2 && *bid2 != id) {
			__u32 id2 = *bid2;
			struct backend *be2 = bpf_map_lookup_elem(&backends, &id2);
			if (be2 && load(&be2->addr) < load(&be->addr)) {
				id = id2;
				be = be2;
			}
		}
	}
	if (full(svc, be)) {
		__u32 start = skey.slot - 1, found = 0;
		for (__u32 i = 1; i < MAX_LIMIT_SCAN; i++) {
			if (i >= svc->count)
				break;
			skey.slot = (__u16)((start + i) % svc->count) + 1;
			__u32 *next = bpf_map_lookup_elem(&slots, &skey);
			if (!next)
				continue;
			__u32 nid = *next;
			struct backend *nbe = bpf_map_lookup_elem(&backends, &nid);
			if (nbe && !full(svc, nbe)) {
				id = nid;
				be = nbe;
				found = 1;
				break;
			}
		}
		if (!found)
			return PICK_FULL;
	}
	if (svc->flags & SERVICE_AFFINITY) {
		struct affinity_value av = {.last_ns = now, .backend_id = id};
		bpf_map_update_elem(&affinity, &akey, &av, BPF_ANY);
	}
	*out = be;
	return id;
}

// lookup_service finds the service behind dst, trying NodePorts on the
// node's own addresses after exact frontends.
static __always_inline __u32 lookup_service(struct l4addr *dst, struct service *svc)
{
	__u32 *id = bpf_map_lookup_elem(&frontends, dst);
	if (!id) {
		if (!bpf_map_lookup_elem(&local_addrs, dst->addr))
			return 0;
		// NodePort keys have an unspecified address of the family:
		// ::ffff:0.0.0.0 for IPv4, :: for IPv6.
		struct l4addr np = {.port = dst->port, .proto = dst->proto, .tag = FRONTEND_NODEPORT};
		if (is_v4(dst->addr)) {
			np.addr[10] = 0xff;
			np.addr[11] = 0xff;
		}
		id = bpf_map_lookup_elem(&frontends, &np);
		if (!id)
			return 0;
	}
	__u32 svc_id = *id;
	struct service *s = bpf_map_lookup_elem(&services, &svc_id);
	if (!s)
		return 0;
	// Copy at once: the agent's next update may recycle the element.
	*svc = *s;
	if (svc->count == 0)
		return 0;
	return svc_id;
}

// translate rewrites dst (a frontend) to a backend and records the reverse
// translation for this socket. For UDP sendmsg (pin_flow) the socket keeps
// its backend per frontend, as a conntrack entry would for its 5-tuple.
// It returns 0 when dst stays as it is, and -1 when the connect must be
// refused: every backend is at the service's connection limit.
static __always_inline int translate(struct bpf_sock_addr *ctx, struct l4addr *dst, int want_v4, int pin_flow)
{
	struct service svc;
	struct backend *be = 0;
	__u32 svc_id, be_id = 0;
	struct sock_key fkey = {};

	svc_id = lookup_service(dst, &svc);
	if (!svc_id)
		return 0;
	// The limit counts established TCP connections (sockops): UDP is
	// not limited, and without sockops nothing is counted here, so a
	// limited service is left to the packet dataplane, which counts its
	// own connections and enforces the limit on them.
	if (dst->proto != PROTO_TCP)
		svc.max_conns = 0;
	else if (svc.max_conns && !count_connections)
		return 0;

	if (pin_flow) {
		fkey.cookie = bpf_get_socket_cookie(ctx);
		fkey.peer = *dst;
		fkey.peer.tag = 0;
		struct udp_flow *fl = bpf_map_lookup_elem(&udp_flows, &fkey);
		if (fl && fl->svc_id == svc_id) {
			__u32 id = fl->backend_id;
			be = bpf_map_lookup_elem(&backends, &id);
			if (be)
				be_id = id;
		}
	}
	if (!be_id)
		be_id = pick_backend(ctx, svc_id, &svc, &be);
	if (be_id == PICK_FULL)
		return -1;
	if (!be_id || !be)
		return 0;
	if (want_v4 && !is_v4(be->addr.addr))
		return 0;
	if (pin_flow) {
		struct udp_flow fl = {.backend_id = be_id, .svc_id = svc_id};
		bpf_map_update_elem(&udp_flows, &fkey, &fl, BPF_ANY);
	}

	if (dst->proto == PROTO_TCP && count_connections) {
		// sockops completes the record when the connection is
		// established and deletes it when the socket closes (or the
		// connect fails).
		__u64 cookie = bpf_get_socket_cookie(ctx);
		struct sock_record rec = {.frontend = *dst, .remote = be->addr, .svc_id = svc_id, .dir = DIR_OUT};
		rec.frontend.tag = 0;
		rec.remote.proto = PROTO_TCP;
		rec.remote.tag = 0;
		bpf_map_update_elem(&sock_records, &cookie, &rec, BPF_ANY);
	} else {
		if (!pin_flow)
			fkey.cookie = bpf_get_socket_cookie(ctx);
		struct sock_key rkey = {.cookie = fkey.cookie};
		rkey.peer = be->addr;
		rkey.peer.proto = dst->proto;
		rkey.peer.tag = 0;
		struct revnat_value rv = {.frontend = *dst, .svc_id = svc_id};
		rv.frontend.tag = 0;
		bpf_map_update_elem(&revnat, &rkey, &rv, BPF_ANY);
	}

	*dst = be->addr;
	return 1;
}

// refuse fails a connect at once with ECONNREFUSED (bpf_set_retval; a
// bare "return 0" would give EPERM), what a client over the limit also
// gets from the packet dataplanes (a TCP reset, an ICMP port
// unreachable). Leaving the connect untranslated instead would not limit
// it: the packet dataplane's counts do not hold the sockets translated
// here (they never pass its NAT), so it would let the connection through.
static __always_inline int refuse(void)
{
	bpf_set_retval(-ECONNREFUSED);
	return 0;
}

static __always_inline int sock4_forward(struct bpf_sock_addr *ctx, int pin_flow)
{
	struct l4addr dst = {};
	__u32 proto = ctx->protocol;

	if (proto != PROTO_TCP && proto != PROTO_UDP)
		return 1;
	set_v4(dst.addr, ctx->user_ip4);
	dst.port = bpf_ntohs((__u16)ctx->user_port);
	dst.proto = proto;
	int r = translate(ctx, &dst, 1, pin_flow);
	if (r < 0)
		return refuse();
	if (r) {
		__u32 ip4;
		__builtin_memcpy(&ip4, dst.addr + 12, 4);
		ctx->user_ip4 = ip4;
		ctx->user_port = bpf_htons(dst.port);
	}
	return 1;
}

static __always_inline int sock6_forward(struct bpf_sock_addr *ctx, int pin_flow)
{
	struct l4addr dst = {};
	__u32 proto = ctx->protocol;

	if (proto != PROTO_TCP && proto != PROTO_UDP)
		return 1;
	get_v6(dst.addr, ctx->user_ip6);
	dst.port = bpf_ntohs((__u16)ctx->user_port);
	dst.proto = proto;
	// An IPv6 socket reaches an IPv4 frontend through its IPv4-mapped
	// address; the backend is then IPv4-mapped too.
	int r = translate(ctx, &dst, 0, pin_flow);
	if (r < 0)
		return refuse();
	if (r) {
		__u32 w[4];
		__builtin_memcpy(w, dst.addr, 16);
		ctx->user_ip6[0] = w[0];
		ctx->user_ip6[1] = w[1];
		ctx->user_ip6[2] = w[2];
		ctx->user_ip6[3] = w[3];
		ctx->user_port = bpf_htons(dst.port);
	}
	return 1;
}

// reverse rewrites a backend peer back to the frontend the socket asked for.
static __always_inline int same_l4(const struct l4addr *a, const struct l4addr *b)
{
	__u64 a0, a1, b0, b1;
	__builtin_memcpy(&a0, a->addr, 8);
	__builtin_memcpy(&a1, a->addr + 8, 8);
	__builtin_memcpy(&b0, b->addr, 8);
	__builtin_memcpy(&b1, b->addr + 8, 8);
	return a0 == b0 && a1 == b1 && a->port == b->port && a->proto == b->proto;
}

static __always_inline int reverse(struct bpf_sock_addr *ctx, struct l4addr *peer)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	if (peer->proto == PROTO_TCP && count_connections) {
		struct sock_record *rec = bpf_map_lookup_elem(&sock_records, &cookie);
		if (!rec || !rec->svc_id || !same_l4(&rec->remote, peer))
			return 0;
		*peer = rec->frontend;
		return 1;
	}
	struct sock_key key = {.cookie = cookie};
	key.peer = *peer;
	struct revnat_value *rv = bpf_map_lookup_elem(&revnat, &key);
	if (!rv)
		return 0;
	*peer = rv->frontend;
	return 1;
}

static __always_inline int sock4_reverse(struct bpf_sock_addr *ctx)
{
	struct l4addr peer = {};
	__u32 proto = ctx->protocol;

	if (proto != PROTO_TCP && proto != PROTO_UDP)
		return 1;
	set_v4(peer.addr, ctx->user_ip4);
	peer.port = bpf_ntohs((__u16)ctx->user_port);
	peer.proto = proto;
	if (reverse(ctx, &peer) && is_v4(peer.addr)) {
		__u32 ip4;
		__builtin_memcpy(&ip4, peer.addr + 12, 4);
		ctx->user_ip4 = ip4;
		ctx->user_port = bpf_htons(peer.port);
	}
	return 1;
}

static __always_inline int sock6_reverse(struct bpf_sock_addr *ctx)
{
	struct l4addr peer = {};
	__u32 proto = ctx->protocol;

	if (proto != PROTO_TCP && proto != PROTO_UDP)
		return 1;
	get_v6(peer.addr, ctx->user_ip6);
	peer.port = bpf_ntohs((__u16)ctx->user_port);
	peer.proto = proto;
	if (reverse(ctx, &peer)) {
		__u32 w[4];
		__builtin_memcpy(w, peer.addr, 16);
		ctx->user_ip6[0] = w[0];
		ctx->user_ip6[1] = w[1];
		ctx->user_ip6[2] = w[2];
		ctx->user_ip6[3] = w[3];
		ctx->user_port = bpf_htons(peer.port);
	}
	return 1;
}

SEC("cgroup/connect4")
int sock4_connect(struct bpf_sock_addr *ctx) { return sock4_forward(ctx, 0); }

SEC("cgroup/connect6")
int sock6_connect(struct bpf_sock_addr *ctx) { return sock6_forward(ctx, 0); }

SEC("cgroup/sendmsg4")
int sock4_sendmsg(struct bpf_sock_addr *ctx) { return sock4_forward(ctx, 1); }

SEC("cgroup/sendmsg6")
int sock6_sendmsg(struct bpf_sock_addr *ctx) { return sock6_forward(ctx, 1); }

SEC("cgroup/recvmsg4")
int sock4_recvmsg(struct bpf_sock_addr *ctx) { return sock4_reverse(ctx); }

SEC("cgroup/recvmsg6")
int sock6_recvmsg(struct bpf_sock_addr *ctx) { return sock6_reverse(ctx); }

SEC("cgroup/getpeername4")
int sock4_getpeername(struct bpf_sock_addr *ctx) { return sock4_reverse(ctx); }

SEC("cgroup/getpeername6")
int sock6_getpeername(struct bpf_sock_addr *ctx) { return sock6_reverse(ctx); }

static __always_inline void sockops_addrs(struct bpf_sock_ops *skops, struct l4addr *local,
					  struct l4addr *remote)
{
	if (skops->family == AF_INET) {
		set_v4(local->addr, skops->local_ip4);
		set_v4(remote->addr, skops->remote_ip4);
	} else {
		get_v6(local->addr, skops->local_ip6);
		get_v6(remote->addr, skops->remote_ip6);
	}
	local->port = (__u16)skops->local_port; // host order
	// remote_port holds the network-order port in its upper 16 bits.
	remote->port = bpf_ntohs((__u16)(skops->remote_port >> 16));
	local->proto = PROTO_TCP;
	remote->proto = PROTO_TCP;
}

static __always_inline void count(struct l4addr *key, __s64 delta)
{
	__u64 *n = bpf_map_lookup_elem(&conn_counts, key);
	if (!n) {
		if (delta < 0)
			return;
		__u64 zero = 0;
		bpf_map_update_elem(&conn_counts, key, &zero, BPF_NOEXIST);
		n = bpf_map_lookup_elem(&conn_counts, key);
		if (!n)
			return;
	}
	if (delta < 0 && *n == 0)
		return;
	__sync_fetch_and_add(n, delta);
}

static __always_inline void count_established(struct bpf_sock_ops *skops, __u8 dir)
{
	struct sock_record rec = {.dir = dir};
	struct sock_record *pending = 0;
	struct l4addr key;
	__u64 cookie = bpf_get_socket_cookie(skops);

	sockops_addrs(skops, &rec.local, &rec.remote);
	if (dir == DIR_OUT) {
		key = rec.remote;
		pending = bpf_map_lookup_elem(&sock_records, &cookie);
	} else {
		key = rec.local;
	}
	key.tag = 0;
	if (pending) {
		// Translated by connect4/6: complete the record in place.
		if (pending->established_ns || !same_l4(&pending->remote, &key))
			return;
		pending->local = rec.local;
		pending->netns_cookie = bpf_get_netns_cookie(skops);
		pending->established_ns = bpf_ktime_get_ns();
	} else {
		// Any other connection to or from a backend.
		if (!bpf_map_lookup_elem(&backend_addrs, &key))
			return;
		rec.established_ns = bpf_ktime_get_ns();
		rec.netns_cookie = bpf_get_netns_cookie(skops);
		if (bpf_map_update_elem(&sock_records, &cookie, &rec, BPF_NOEXIST))
			return; // the table is full: stay exact, count nothing
		// Ask for state changes so the close is seen.
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
	}
	key.tag = dir;
	count(&key, 1);
}

static __always_inline void count_closed(struct bpf_sock_ops *skops)
{
	__u64 cookie = bpf_get_socket_cookie(skops);
	struct sock_record *rec = bpf_map_lookup_elem(&sock_records, &cookie);
	if (!rec)
		return;
	if (rec->established_ns) {
		struct l4addr key;
		if (rec->dir == DIR_OUT)
			key = rec->remote;
		else
			key = rec->local;
		key.tag = rec->dir;
		count(&key, -1);
	}
	bpf_map_delete_elem(&sock_records, &cookie);
}

// watch_translated asks for state changes of a socket connect4/6
// translated, so its record goes when the connect fails too.
static __always_inline void watch_translated(struct bpf_sock_ops *skops)
{
	__u64 cookie = bpf_get_socket_cookie(skops);
	if (bpf_map_lookup_elem(&sock_records, &cookie))
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

SEC("sockops")
int sockops_count(struct bpf_sock_ops *skops)
{
	if (skops->family != AF_INET && skops->family != AF_INET6)
		return 1;
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		watch_translated(skops);
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		count_established(skops, DIR_OUT);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		count_established(skops, DIR_IN);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] == BPF_TCP_CLOSE)
			count_closed(skops);
		break;
	}
	return 1;
}
