// Package nftables is switchyard's nftables dataplane: Services are
// programmed into one table, "ip switchyard", through netlink
// (github.com/google/nftables; no nft binary). Nothing outside that table
// is touched, by Sync or by Cleanup, which deletes the table.
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
//	svc-HASH-ns/name/proto/port, one per Service port with endpoints:
//	    ip daddr != CLUSTER-IP jump mark-for-masquerade     (external, LB and NodePort traffic)
//	    ip daddr CLUSTER-IP jump mark-if-outside-cluster    (cluster IP from outside the cluster CIDRs)
//	    dnat to numgen random mod N map { 0 : ip . port, ... } comment "endpoints N digest D"
//	nat-postrouting (nat, srcnat):
//	    ct status dnat ip saddr . ip daddr @hairpin-endpoints masquerade fully-random
//	    meta mark & BIT == 0 return; meta mark set meta mark & ~BIT; masquerade fully-random
//	filter-input, filter-forward, filter-output (filter, priority -10):
//	    [ct state invalid drop]   (forward, with Config.ConntrackDropInvalid)
//	    ct state new jump service-endpoints-check / nodeport-endpoints-check
//	    -> frontends in @no-endpoint-services / @no-endpoint-nodeports goto reject-no-endpoints:
//	       TCP: reject with tcp reset; others: reject with icmp port-unreachable
//
// A Service port without usable endpoints has no chain: its frontends are
// elements of the no-endpoint sets instead of the service maps, so new
// connections are refused at once instead of timing out.
//
// Endpoints are those dataplane.ClusterEndpoints gives a positive weight;
// an endpoint of weight w takes w slots of the numgen map. NAT happens on a
// connection's first packet, so changing a chain never moves established
// connections (conntrack keeps their translation).
//
// Masquerading follows the IPVS dataplane's policy (package iptables):
// everything with Config.MasqueradeAll; otherwise NodePort, external and
// load balancer traffic always, and cluster-IP traffic from outside
// Config.ClusterCIDRs (never, without cluster CIDRs). externalTrafficPolicy
// Local is not honoured yet (it is masqueraded and load-balanced like
// Cluster).
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
// # Incremental syncs
//
// The Proxier keeps the last applied state (tableState). A partial sync
// recomputes only the changed Services, diffs them against that cache and
// sends one transaction with just the differences: a one-endpoint change
// of a cluster-IP Service is 6 messages (flush the chain; its masquerade
// rule; the anonymous map and its elements; the dnat rule; one hairpin
// element) at 20 Services as at 10,000. Messages are ordered so nothing dangles (see batch): chains
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
// Only IPv4 is programmed. The code is parameterized by family (family.go):
// an ip6 table needs the family's header offsets, address type and
// loopback prefix, and a Proxier or loop per family.
package nftables
