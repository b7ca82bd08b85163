// Package socklbbench measures switchyard's socket-level load balancer
// (package ebpf) against the two other ways a pod reaches the same
// backends: dialing a backend pod IP directly, and a ClusterIP DNATed by
// the nftables dataplane. Everything is real kernel: network namespaces
// for the pods and the node, the nftables table in the node namespace, the
// BPF programs attached to a child cgroup the test process moves into.
// `make bench-ebpf` runs BenchmarkSocketLB and cmd/summary.
//
//	cli-dir  10.244.1.2 ─┐                               ┌─ 10.244.9.10:8080 be1
//	cli-dir2 10.244.4.2 ─┤                               ├─ 10.244.9.11:8080 be2
//	cli-nft  10.244.2.2 ─┼─ [node: nftables, forwarding] ┼─ 10.244.9.12:8080 be3
//	cli-lb   10.244.3.2 ─┘                               └─ 10.244.9.13:8080 be4
//	                                                        (one "backends" namespace)
//
// Each path has a client namespace of its own (one pod each, identical
// veths), so the paths never share conntrack tuples, TIME_WAIT sockets or
// ephemeral ports:
//
//   - direct: dials the backend pod IPs round robin.
//   - direct2: the same from another pod; the A/A control, whose ratio to
//     direct shows how far two identical paths drift apart on this machine.
//   - nftables: dials ClusterIP 10.96.0.10:80, which only nftables knows;
//     the process is outside the socket-LB cgroup.
//   - socketlb: dials ClusterIP 10.96.0.11:80, which only the socket LB
//     knows, from inside its cgroup. The node has no route for it, so
//     every reply proves the connect was translated.
//
// The direct paths run with no BPF program on their sockets: they are
// the cost of a connection with nothing in the way, and socketlb pays for
// all of the socket LB's programs (connect4, sockops counting, ...).
//
// Metrics:
//
//   - connect: one connection per op: socket, connect, one 64-byte
//     request and reply (payload and backend checked), the server's close
//     seen, close. The server closes first, as an HTTP/1.0 server would,
//     so no TIME_WAIT piles up on the client. conns/s.
//   - connect-par: the same from 4×GOMAXPROCS goroutines at once.
//   - rr: request/reply ping-pong of 64-byte messages on persistent
//     connections, one request at a time. req/s.
//   - rr-par: the same on 4×GOMAXPROCS persistent connections at once.
//
// The client side uses plain blocking syscalls (as netperf's TCP_CRR and
// TCP_RR do) so little but the kernel path is measured; the backends are
// Go servers. The paths take turns within every sub-benchmark (see
// BenchmarkSocketLB), because a 2-core machine drifts by far more than
// the 2% the socket LB is allowed to cost.
package socklbbench
