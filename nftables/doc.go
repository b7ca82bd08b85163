// Package nftables is switchyard's nftables dataplane: Services are
// programmed into one table per family, "ip switchyard" and "ip6
// switchyard", through netlink (github.com/google/nftables; no nft
// binary). Nothing outside those tables is touched, by Sync or by Cleanup,
// which deletes both.
//
// # Layout
//
// The semantics are kube-proxy's nftables mode; the layout is our own.
//
//	nat-prerouting, nat-output (nat, dstnat)  -> jump services
//	services:
//	    ip daddr . meta l4proto . th dport vmap @service-ips
//	    fib daddr type local ip daddr != 127.0.0.0/8 [ip daddr PREFIX] meta l4proto . th dport vmap @service-nodeports
//	service-ips   (ipv4_addr . inet_proto . inet_service : verdict)  cluster, external, LB IP -> goto svc-...
//	service-nodeports (inet_proto . inet_service : verdict)          NodePort -> goto svc-...
//	svc-HASH-ns/name/proto/port, one per Service port with Cluster-policy endpoints:
//	    ip daddr != CLUSTER-IP jump mark-for-masquerade     (external traffic, externalTrafficPolicy Cluster)
//	    ip daddr CLUSTER-IP jump mark-if-outside-cluster    (cluster IP from outside the cluster CIDRs)
//	    dnat to numgen random mod N map { 0 : ip . port, ... } comment "endpoints N digest D"
//	    with switchyard.io/max-connections-per-backend N (TCP), instead:
//	    add @limit-N-HASH-... { numgen random mod K map { ... } ct count N } dnat to numgen random mod K map { ... }
//	    reject with tcp reset comment "over N connections per backend"
//	local-HASH-..., the same over this node's endpoints (traffic policy Local)
//	ext-HASH-..., external traffic of externalTrafficPolicy Local:
//	    ip saddr CLUSTER-CIDR goto svc-...                  (pods: "short circuit", unmasqueraded)
//	    fib saddr type local jump mark-for-masquerade; fib saddr type local goto svc-...   (the node)
//	    goto local-...                                      (others keep their source; absent without local endpoints)
//	fw-HASH-..., load balancer IPs with loadBalancerSourceRanges:
//	    ip saddr RANGE return ...; [ip saddr LB-IP return ... when a node IP is in a range]; drop
//	nat-postrouting (nat, srcnat):
//	    ct status dnat ip saddr . ip daddr @hairpin-endpoints masquerade fully-random
//	    meta mark & BIT == 0 return; meta mark set meta mark & ~BIT; masquerade fully-random
//	filter-prerouting-pre-dnat, filter-output-pre-dnat (filter, dstnat - 10):
//	    jump firewall-check: ip daddr . meta l4proto . th dport vmap @firewall-ips -> goto fw-...
//	filter-input, filter-forward, filter-output (filter, priority -10):
//	    [ct state invalid drop]   (forward, with Config.ConntrackDropInvalid)
//	    ct mark & RESET-BIT != 0 meta l4proto tcp jump reset-marked   (see "Resetting marked connections")
//	    ct state new jump service-endpoints-check / nodeport-endpoints-check
//	    -> frontends in @no-endpoint-services / @no-endpoint-nodeports goto reject-no-endpoints:
//	       TCP: reject with tcp reset; others: reject with icmp port-unreachable
//	    -> frontends in @no-local-endpoint-services / @no-local-endpoint-nodeports drop
//
// A Service port without usable endpoints has no endpoint chain: its
// frontends are elements of the no-endpoint sets instead of the service
// maps, so new connections are refused at once instead of timing out.
//
// # Service semantics (kube-proxy's)
//
// Endpoints are chosen by dataplane.CategorizeEndpoints for this node
// (State.NodeName, State.NodeZone): ready ones, else serving+terminating
// ones, topology hints applied to the Cluster set. Cluster-IP traffic goes
// to the Cluster endpoints, or with internalTrafficPolicy Local to this
// node's (local-). External traffic (external and load balancer IPs,
// NodePorts) goes to svc- with externalTrafficPolicy Cluster (masqueraded);
// with Local it goes through ext-: traffic from pods (the cluster CIDRs)
// and from the node itself short-circuits to the Cluster endpoints, the
// node's masqueraded; the rest goes unmasqueraded (client address kept) to
// this node's endpoints. When a policy leaves no endpoint here but the
// Service has some elsewhere, the frontends are also in the
// no-local-endpoint sets and traffic nothing translated is dropped (the
// client retries), not rejected.
//
// sessionAffinity ClientIP: each endpoint chain gets a map aff-CHAIN
// (client address : endpoint address . port, flags timeout, dynamic) and
// two rules instead of the plain dnat: a client with an entry whose
// endpoint is still in the chain (checked against an anonymous set, so an
// endpoint that went away is never used) is DNATed there and its entry's
// timeout refreshed; any other client gets a random endpoint, its old entry
// deleted and the new one added with the Service's timeout (dynset delete
// needs Linux 5.18+). The map's elements are the packet path's: syncs never
// read or write them, so they survive rule rewrites. kube-proxy keeps one
// set of clients per endpoint instead; here a client's affinity is per
// chain, so the short-circuited and the Local traffic of one Service keep
// separate entries.
//
// loadBalancerSourceRanges: before DNAT, packets to a load balancer IP of
// such a Service go to its fw- chain, which drops sources outside the
// ranges. As kube-proxy, when one of the node's addresses
// (dataplane.State.NodeIPs) is inside a range, the load balancer IPs
// themselves pass as sources too (a VIP bound on the node is the source of
// the node's requests to it); the node has no other exemption. NodePorts
// and external IPs are not firewalled, as in kube-proxy.
//
// Masquerading follows the IPVS dataplane's policy (package iptables):
// everything with Config.MasqueradeAll; otherwise external traffic of
// externalTrafficPolicy Cluster, the node's own external traffic, and
// cluster-IP traffic from outside Config.ClusterCIDRs (never, without
// cluster CIDRs).
//
// Hairpin traffic (an endpoint reaching itself through a Service) must be
// masqueraded, or the reply stays inside the pod and skips de-NAT.
// kube-proxy does it with a chain per endpoint ("ip saddr EP jump
// mark-for-masquerade" before the DNAT); we would need N extra chains per
// Service. Instead nat-postrouting, after DNAT, looks up "ip saddr . ip
// daddr" in one set holding "EP . EP" for every endpoint IP: source equal
// to the chosen destination is exactly hairpin. It costs one element per
// distinct endpoint IP (reference-counted across Services) and one hash
// lookup per new connection; "ct status dnat" limits it to Service traffic.
//
// # Connection limits
//
// switchyard.io/max-connections-per-backend (ServicePort.
// MaxConnectionsPerBackend) caps the TCP connections this node sends to
// each backend of the Service; every node counts its own. The port gets a
// set limit-N-HASH-ns/name/proto/port (backend address . port, flags
// dynamic), shared by its svc- and local- chains. The DNAT rule picks an
// endpoint as usual, then adds the connection to that endpoint's element
// with "ct count N" and translates only if the element, with it, counts
// at most N; otherwise the chain's last rule rejects it with a TCP reset,
// so the client gets ECONNREFUSED at once. With session affinity the
// client's remembered endpoint is counted the same way and a client whose
// endpoint is full is reset (a rule between hit and pick), not moved.
//
// The count is the kernel's nf_conncount: the conntrack entries of the
// element, dropped once conntrack sees them closed (TIME_WAIT or CLOSE) or
// gone; elements whose count reaches zero are garbage collected. The
// limit is copied into each element when it is created, so another limit
// means another set (the limit is in its name): connections opened before
// a change are not counted against the new limit. The check runs in the
// nat chains (first packet of a connection, prerouting or output) rather
// than in a filter chain after DNAT, for the reasons in limitRejectRule;
// the endpoint is picked before it is counted, so a connection that lands
// on a full endpoint is refused even when another has room (no retry
// elsewhere). UDP and SCTP ports are not limited: their conntrack entries
// end by timeout, long after the traffic.
//
// # Resetting marked connections
//
// The conntrack-aware rebalancer sheds long-lived TCP connections from
// overloaded backends so that their clients reconnect to idle ones. A
// connection this node forwards (its client outside the node or in a pod,
// DNATed here to a backend) has neither socket here, so there is no socket
// to close (package conntrack/shed does that for local ones): the tables
// reset it instead. The rebalancer sets Config.ResetMarkBit (default
// 0x8000, conntrack.Marker.MarkFlows) in the connection's conntrack mark,
// and every filter chain sends TCP packets of such entries to:
//
//	reset-marked:
//	    tcp flags & (syn | rst) != 0 return
//	    ct mark set ct mark & ~0x8000
//	    ip length . @th,96,8 & 0xf0 { 40 . 0x50, 44 . 0x60, ..., 80 . 0xf0 } reject with tcp reset
//	    @th,96,16 set (@th,96,16 & 0xff00) ^ 0x0014        (tcp flags set rst|ack)
//
// The connection's next packet, whichever end sends it, decides:
//
//   - With payload, it goes on to its receiver as a reset: same sequence
//     number, the one the receiver expects, so the receiver is reset. The
//     sender gets no acknowledgement and retransmits; the receiver's stack,
//     which has no socket any more, answers with a reset that comes back
//     through this node: the sender is reset too.
//   - Without payload (a pure ACK, a keepalive probe: the IP length is
//     exactly the headers' for the TCP data offset, hence the set), it is
//     rejected with a reset to its sender (nf_reject; the sequence number
//     is the sender's acknowledgement, so it is accepted). The receiver
//     lost an acknowledgement: if it has data in flight it retransmits and
//     the sender's stack resets it; if not, it is reset when it next sends.
//   - SYN and RST segments pass: an end's own reset must reach the other.
//
// Rejecting every packet of a marked connection would reset only the ends
// that send: the receiver of a rejected request (a server waiting for the
// next one, the idle connection the planner likes to shed) would keep its
// end until its own keepalive, and a client waiting for pushed data would
// wait forever. Rewriting resets the receiver, rejecting the sender; the
// rules reset at once the end that might otherwise stay quiet and leave the
// other to TCP's retransmission. TestKernelResetMarked shows both ends
// reset for each kind of next packet, in both families, masqueraded or
// not.
//
// The bit is cleared by the first packet: the connection is acted on once,
// and what follows (the ends' own resets) is forwarded and tracked as
// usual. The resets nf_reject sends are attached to the entry and never
// tracked, so it is the ends' resets that take the entry to CLOSE, whence
// it expires (10 s); the agent deletes nothing. Deleting the entry from Go
// after marking would race with the connection: a packet arriving later
// starts a new entry by mid-stream pickup (nf_conntrack_tcp_loose), is
// translated again, maybe to another backend, and nothing resets the ends.
//
// The jump sits first in filter-forward, filter-input and filter-output
// (after the INVALID drop), at priority -10: after prerouting's DNAT and
// reply de-SNAT, so a forwarded packet of either direction carries the
// backend's address on the backend side, and nf_reject's reset, attached
// to the entry, is translated back like any reply (the client sees it come
// from the Service address). input and output catch connections that
// start or end on this node (a host-network client or backend); closing
// the socket is the better tool there, but the rules work too.
//
// Limits: the receiver takes a rewritten segment as a reset only at its
// exact next sequence number (RFC 5961): a retransmission of data it has,
// or a reordered segment, is ignored or answered with a challenge ACK,
// and the connection goes on unmarked (the rebalancer sees it still
// established and may mark it again). The end reset second hears of it
// from its peer's stack; a firewall there that drops segments of closed
// connections leaves it to time out. A marked connection that never sends
// again keeps its mark and is never reset. Only TCP is touched, only in
// conntrack zone 0 (where MarkFlows looks). Unmarked traffic pays one ct
// mark test per packet in the filter chains; Config.ResetMarkBit
// ResetMarkOff leaves the rules out.
//
// # Incremental syncs
//
// The Proxier keeps the last applied state (tableState). A partial sync
// recomputes only the changed Services, diffs them against that cache and
// sends one transaction with just the differences: a one-endpoint change
// of a cluster-IP Service is 6 messages (flush the chain; its masquerade
// rule; the anonymous map and its elements; the dnat rule; one hairpin
// element) at 20 Services as at 10,000; a Service with policies Local and
// affinity rewrites at most its few chains (15 messages to add a local
// endpoint, see TestPartialSyncMessagesPolicies). Messages are ordered so nothing dangles (see batch): chains
// before the elements pointing to them, element deletions before chain
// deletions. A full sync (first sync, periodic resync, any sync after an
// error) reads the table back (chains, their rules rendered to text, named
// set elements), compares with the desired state and repairs only the
// differences, so a restarted agent whose table matches writes nothing.
// Every sync also checks that the table exists, so a `nft flush ruleset`
// is repaired at once.
//
// The anonymous maps are not read back: the kernel finds a set by walking
// the table's list of sets, which makes reading thousands of them slow,
// and a constant anonymous map cannot change once bound. The dnat rule's
// comment carries a digest of the map's elements instead; a rule whose
// comment matches has the wanted endpoints.
//
// # Kernel costs (Linux 6.18, measured with the benchmarks)
//
//   - Every transaction that adds a rule containing nat, a jump or a
//     lookup makes the kernel validate the whole table at commit
//     (nft_table_validate walks every chain reachable from the base chains,
//     through every verdict map element). With 10,000 Services a
//     one-endpoint change took 7-16 ms (mostly that validation, per perf),
//     against 0.6-0.75 ms with 1,000, though both are 6 messages.
//   - Creating a set looks it up by name in a linked list of the table's
//     sets (three lookups per anonymous map), so a cold load of 10,000
//     Service chains takes ~10 s of kernel time. The library's default
//     anonymous names ("__map%d") would add a kernel-side allocation scan
//     over all sets; anonMapName avoids it.
//   - The library requests an acknowledgement for every message, and the
//     kernel queues them all before we read: the socket buffers are raised
//     with SO_RCVBUFFORCE/SO_SNDBUFFORCE (see socketBuffer).
//
// `nft list ruleset` (nft 1.0.6) prints the numgen map's slot numbers
// byte-swapped (16777216 for 1): the library marks every anonymous set's
// keys big-endian, while numgen's registers are host order. The kernel
// matches the bytes, so only that listing is affected; DumpTable prints
// them right.
//
// # Families
//
// Dual-stack works as in kube-proxy's nftables mode: one table per family
// with the same layout (above, "ip" reads "ip6" in the ip6 table, 127.0.0.0/8
// reads ::1, and the reject is "reject with icmpv6 port-unreachable"). The
// code is shared, parameterized by family (family.go: header offsets,
// address type, loopback, ICMP code, affinity registers). Each table gets
// the frontends (cluster, external, load balancer IPs; NodePorts on the
// family's local addresses) and the endpoints of its own family only, so a
// dual-stack Service's IPv6 cluster IP never leads to an IPv4 endpoint; a
// family whose endpoints are all missing rejects on its frontends while the
// other family serves. ClusterCIDRs, NodePortAddresses and
// loadBalancerSourceRanges are split by family; with NodePortAddresses set,
// a family without a prefix of its own has no NodePorts.
//
// One Proxier drives both tables, each with its own applied state (full or
// partial independently: a table that disappeared is resynced in full
// alone), and sends the writes of both in one transaction. A sync touching
// only one family's objects writes nothing to the other table.
//
// A node without IPv6 (no /proc/sys/net/ipv6, the kernel booted with
// ipv6.disable=1, or net.ipv6.conf.all.disable_ipv6=1 in the namespace) gets
// the ip table only: the first Sync checks, logs one line and programs
// IPv4 as usual. The check is made once per Proxier (kube-proxy also picks
// its families at start). Cleanup removes both tables regardless.
package nftables
