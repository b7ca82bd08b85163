// Package ebpf is switchyard's socket-level load balancer and connection
// counter: BPF programs at the cgroup v2 socket hooks (socklb.c, compiled
// by bpf2go into the committed socklb_bpf*.{go,o}) and the Go side that
// loads and attaches them, fills their maps from the dataplane model and
// reads the counters back.
//
// Traffic that starts on the node (pods and host processes in the attached
// cgroup) to a Service frontend connects straight to a backend:
// cgroup/connect4/6 (TCP, connected UDP) and cgroup/sendmsg4/6 (UDP)
// rewrite the destination, cgroup/getpeername4/6 and cgroup/recvmsg4/6
// show the frontend again. A sockops program counts established TCP
// connections per backend, both for sockets of this node connected to a
// backend (direction "out") and for connections accepted by backends on
// this node ("in"), and keeps one record per counted socket.
//
// SocketLB composes with the packet dataplane (IPVS or nftables): that
// still programs every Service for traffic from other nodes, and any
// socket the programs do not translate (unknown frontend, no endpoint, a
// map being rewritten, SCTP) falls through to it.
//
// Map layout (all addresses 16 bytes, IPv4 as IPv4-mapped IPv6, ports in
// host byte order):
//
//	frontends     {addr, port, proto, kind} -> service id   (NodePort: unspecified addr)
//	services      id -> {count, gen, affinity timeout, flags, max conns}
//	slots         {id, gen, 1..count} -> backend id      (a backend repeats by weight)
//	backends      backend id -> {addr, port, proto}       (ids are per service)
//	local_addrs   node addresses where NodePorts translate
//	affinity      LRU {client netns cookie, id} -> {backend id, last use}
//	revnat        LRU {socket cookie, backend} -> {frontend, id}   (UDP; TCP without counting)
//	udp_flows     LRU {socket cookie, frontend} -> {backend id, id}
//	backend_addrs every backend address:port of a TCP Service port (what sockops counts)
//	conn_counts   {backend, direction} -> established connections
//	sock_records  socket cookie -> {local, remote, frontend, id, established, netns}
//
// A TCP socket connect4/6 translates gets its sock_records entry at
// connect (established 0: pending), which getpeername reverses; sockops
// completes it when the connection is established and deletes it when the
// socket closes or the connect fails. Other counted sockets (direct
// connections to a backend, connections a backend on this node accepts)
// get theirs when established. Without counting (NoConnectionCounting,
// no sockops program) TCP uses revnat like UDP.
//
// # Connection limits
//
// switchyard.io/max-connections-per-backend N (TCP ports) is the service
// entry's max_conns. A connect whose first choice of backend (the random
// slot, the less loaded of two, or the client's affinity backend) already
// has N established connections from this node (conn_counts, direction
// "out") walks the slots after it, at most 64, for a backend below N;
// when there is none, or the affinity backend is full, connect fails at
// once with ECONNREFUSED (bpf_set_retval; a bare refusal would be EPERM).
// TestVMMaxConnectionsSocketLB shows it on the Debian 6.1 kernel, the
// host tests on 6.18; a kernel whose verifier does not offer the helper
// to connect programs rejects the whole socket LB (Probe fails). It is
// refused rather than left untranslated because
// the packet dataplane behind does not see these sockets in its own
// counts and would let the connection through.
//
// The count is the node's, per backend: every established connection of
// an attached socket to the backend address counts, whichever Service (or
// none) it came through, and a connection counts from establishment, so
// connects racing in parallel can overshoot N by the number in flight.
// The packet dataplane limits what it translates (traffic from other
// nodes, pods outside the cgroup) separately. Without connection counting
// (NoConnectionCounting) a limited Service is not translated at all, and
// the packet dataplane enforces the limit. UDP is not limited.
//
// Writes are ordered so that a program never follows a dangling reference
// into a half-written service: backends first, then the slots of a new
// generation, then the service entry that flips to it, then frontends;
// stale frontends go next, and stale slots, services and backends only
// after a grace period (rcuGrace) in which programs mid-lookup finish.
//
// Maps and links are pinned under a bpffs directory (Config.PinPath), so
// an agent restart reuses the maps and replaces the programs in the pinned
// links without a moment untranslated.
package ebpf
