// Package shed closes chosen TCP connections that have an end on this node,
// so the rebalancer's (conntrack/rebalance) shed connections really end
// and their clients reconnect onto idle backends.
//
// A Target names one socket by its network namespace cookie (what the
// socket LB records per socket: ebpf.Socket.NetnsCookie), its own and its
// peer's address, and optionally its socket cookie. NetnsIndex turns
// namespace cookies into handles by scanning /proc/*/ns/net and
// /run/netns. A Closer closes targets:
//
//   - SockDiag (CONFIG_INET_DIAG_DESTROY, Linux 4.5+, and the TCP
//     sock_diag handler: built in on the host's 6.18, the autoloaded
//     inet_diag and tcp_diag modules on Debian; its tests pass on both
//     6.18 and Debian's 6.1): a NETLINK_SOCK_DIAG socket opened inside the
//     target's namespace looks the socket up (SOCK_DIAG_BY_FAMILY), then
//     destroys it by cookie (SOCK_DESTROY), IPv4 and IPv6 alike (the
//     messages are encoded here: vishvananda/netlink's SocketDestroy is
//     IPv4-only). Listening sockets and sockets already in TIME_WAIT are
//     never destroyed. A kernel without the handler is ErrNotSupported.
//   - BPFIter (kernels with the bpf_sock_destroy kfunc, 6.5+: the host yes;
//     Debian's 6.1 no, ebpf.NewSockDestroyer fails there with
//     ebpf.ErrSockDestroyUnsupported): an iter/tcp program
//     (ebpf/sockdestroy.c), opened on a thread inside the target's
//     namespace, walks that namespace's TCP sockets and destroys those
//     whose cookie the Go side put in a map. Targets need their Cookie.
//   - Fake: in memory, with SockDiag's semantics, for tests.
//
// What each end sees. Both mechanisms end in the kernel's tcp_abort(sk,
// ECONNABORTED) on the chosen socket:
//
//   - The end whose socket is destroyed: pending and next reads, writes
//     and polls fail with ECONNABORTED ("software caused connection
//     abort"), then reads return EOF. The application only has to treat
//     it like any broken connection.
//   - Its peer: tcp_abort sends an RST (from ESTABLISHED, SYN_RECV,
//     FIN_WAIT1/2 and CLOSE_WAIT), so the peer's next read fails with
//     ECONNRESET (a write after that with EPIPE). If the peer is on
//     another node the RST crosses the network like any reset (conntrack
//     on the way marks the flow closed); if the RST is lost,
//     the peer learns at its next send (the destroyed socket is gone, so
//     the peer's segment draws another RST).
//
// So for a client pod on this node, destroy the client's socket (direction
// "out" in the socket LB): the client gets ECONNABORTED and reconnects,
// its new connect going through the socket LB to a backend it picks;
// the backend sees ECONNRESET and frees its side. For a backend pod on
// this node whose client is elsewhere (direction "in"), destroy the
// backend's socket: the backend sees ECONNABORTED, the remote client
// ECONNRESET, and it reconnects through its own node's Service path. A
// connection with both ends on this node needs only one of them closed.
//
// A target whose socket is gone already is NotFound, not an error. A
// target whose namespace is gone fails (ErrNetnsNotFound), alone. UDP has
// no connection to abort: clients of UDP Services move when their
// conntrack entries (or the socket LB's udp_flows) are cleared instead.
package shed
