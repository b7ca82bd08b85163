// Package iptables programs the SNAT side of switchyard's IPVS dataplane the
// way kube-proxy's IPVS mode does: ipsets hold every service frontend (and
// every endpoint, for hairpin detection), and a few iptables chains mark
// packets to those frontends with the masquerade bit; POSTROUTING then
// masquerades marked packets and hairpin traffic. It also filters load
// balancer traffic by loadBalancerSourceRanges, and resets TCP connections
// the rebalancer marked (see below).
//
// The package has three layers:
//
//   - kernel clients behind small interfaces with faithful fakes: IPSet
//     (vishvananda/netlink's ipset API), Tables (coreos/go-iptables, which
//     execs the iptables binary) and Sysctl;
//   - Desired, a pure function from the dataplane model to the sets, chains
//     and hook rules the node should have;
//   - Proxier, which lists what the kernel has, diffs, and applies only the
//     difference (never flushing a set, rewriting a chain only when its rules
//     differ).
//
// Every object it owns is named SWITCHYARD-* (IPv4 sets, chains),
// SWITCHYARD6-* (IPv6 sets) or carries a "switchyard ..." comment (the
// jumps from built-in chains); everything else is left alone, by Sync and
// by Cleanup.
//
// # Dual stack
//
// A Proxier programs one IP family (Config.Family), as each of kube-proxy's
// per-family IPVS proxiers does: a dual-stack node runs two, an IPv4 one on
// iptables and an IPv6 one on ip6tables (NewTables(WithFamily(FamilyINet6))),
// sharing the ipsets. Each takes only its family's addresses from the model
// (a Service counts in a family only through a ClusterIP of that family, as
// in the IPVS dataplane) and its family's Config.ClusterCIDRs. Chains have
// the same names in both families, since iptables and ip6tables have
// separate tables; sets do not, since ipset names are per network
// namespace: IPv6 sets are SWITCHYARD6-<name> of family inet6 (kube-proxy
// names them KUBE-6-<name>; a prefix disjoint from SWITCHYARD- lets each
// family own exactly the sets with its prefix, so neither Proxier's stale
// set removal or Cleanup touches the other family's sets). The agent adds
// the IPv6 Proxier when ProbeIPv6 finds IPv6 usable on the node.
//
// # What gets masqueraded
//
// The chains only mark packets (bit Config.MasqueradeBit, default 0x4000) in
// nat PREROUTING and OUTPUT, before IPVS picks an endpoint; POSTROUTING
// masquerades marked packets. Marked are: NodePort traffic (local
// destination and a port in SWITCHYARD-NODE-PORT-{TCP,UDP,SCTP}), external IP
// and load balancer IP traffic, and cluster IP traffic from outside
// Config.ClusterCIDRs (all of it with Config.MasqueradeAll). Frontends of
// Services with externalTrafficPolicy Local are exempt (the *-LOCAL sets), so
// their clients' addresses survive, except for the node's own traffic (source
// address local to the node), which is marked as the nftables dataplane's
// "masquerade local traffic" does. Hairpin traffic (an endpoint reaching
// itself through a service: SWITCHYARD-LOOP-BACK matched dst,dst,src after
// DNAT) is masqueraded directly in POSTROUTING. filter FORWARD accepts marked
// and established traffic and, with Config.ConntrackDropInvalid, drops
// conntrack-INVALID packets.
//
// Nothing here ACCEPTs in nat (kube-proxy's IPVS mode ends KUBE-SERVICES with
// ACCEPT for cluster IPs): whatever follows our hook in a built-in nat chain
// still sees every packet.
//
// # loadBalancerSourceRanges
//
// As kube-proxy's IPVS mode: SWITCHYARD-LOAD-BALANCER-FW holds the LB IP and
// port of every Service with ranges (of the Proxier's family), whether or
// not it has endpoints; SWITCHYARD-LB-SOURCE-CIDR holds LB IP, port and
// each range (hash:ip,port,net, a /0 as two /1); SWITCHYARD-LB-SOURCE-IP
// holds LB IP, port and the LB IP again when one of the node's addresses
// (State.NodeIPs) is inside a range: the node's own requests to an LB IP
// bound on it carry that IP as source. SWITCHYARD-PROXY-FIREWALL sends
// packets matching the FW set to SWITCHYARD-SOURCE-RANGES-FW, which returns
// for the two others and drops the rest. Cluster IPs, external IPs and
// NodePorts are never filtered. The chains are hooked from filter INPUT
// (other hosts and pods: before IPVS at LOCAL_IN) and from mangle OUTPUT
// (the node itself: IPVS takes those connections at LOCAL_OUT, before
// filter OUTPUT, and they never reach INPUT); see buildHooks.
//
// # externalTrafficPolicy Local without a local endpoint
//
// The IPVS dataplane then gives the external virtual servers (external IPs,
// load balancer IPs, NodePorts) the Cluster endpoints, as kube-proxy's IPVS
// mode does, so that this node's pods and the node itself still reach the
// Service there (kube-proxy's "short circuit"). Other sources must not:
// their new connections are dropped, as the nftables dataplane and
// kube-proxy's iptables and nftables modes do. SWITCHYARD-NO-LOCAL-ENDPOINT
// (an external IP or LB IP and port) and SWITCHYARD-NO-LOCAL-EP-NP-{TCP,UDP,
// SCTP} (NodePorts) hold those frontends, per family, when the Service has
// endpoints of that family but none on this node (CategorizeEndpoints with
// State.NodeName, as the IPVS dataplane decides); in filter,
// SWITCHYARD-PROXY-FIREWALL sends packets to them to the
// SWITCHYARD-NO-LOCAL-ENDPOINT chain, which returns for sources in
// Config.ClusterCIDRs (pods: kept unmasqueraded) and for the node's own
// addresses (masqueraded, see above) and drops other new connections.
// Without ClusterCIDRs pods cannot be told apart and are dropped too.
//
// # Resetting marked connections
//
// The connection rebalancer sheds long-lived TCP connections IPVS
// forwards by setting Config.ResetMarkBit (default 0x8000,
// DefaultResetMarkBit, the nftables dataplane's bit too) in their
// conntrack mark (conntrack.Netlink.MarkFlows; with the IPVS dataplane
// the entries exist because net.ipv4.vs.conntrack=1). filter INPUT,
// FORWARD and OUTPUT jump first, before any other rule of ours, to
//
//	SWITCHYARD-RESET-MARKED:
//	    -p tcp -m connmark --mark 0x8000/0x8000 -m tcp --tcp-flags SYN,RST NONE -j REJECT --reject-with tcp-reset
//
// so the connection's next packet, from either end, is dropped and its
// sender gets a reset. The hooks run before IPVS: a client's packet to a
// virtual server passes filter INPUT (priority 0) before IPVS schedules
// it at LOCAL_IN (NF_IP_PRI_NAT_SRC-1), a backend's reply passes filter
// FORWARD before IPVS de-NATs it (priority 100; filter INPUT for a client
// on the node), and the node's own connections, which IPVS takes at
// LOCAL_OUT (-98), still pass filter OUTPUT. The reset to a client comes
// from the virtual IP, the one to a backend from the address it sees as
// the client's (masqueraded or not).
//
// Unlike the nftables dataplane's reset-marked chain, which rewrites a
// data segment into a reset of its receiver, iptables has no target for
// that: the receiver of the rejected packet learns of it only when it
// sends next (the bit stays set), e.g. a server waiting for the next
// request at its keepalive probe or, after the entry expired, from the
// client's stack answering with a reset. REJECT moves the conntrack entry
// to CLOSE (nf_ct_set_closing, Linux 6.1.81+ and 6.3+; it expires after
// 10 s), so the rebalancer, which counts ESTABLISHED entries, stops
// counting it at once; IPVS keeps its own connection entry until the
// backend's end closes or its timeout, so its per-real-server counts
// (which wlc weighs) lag. SYN and RST segments pass (a new connection
// reusing the tuple; an end's own reset). Only TCP, only conntrack zone 0.
// TestKernelResetMarked shows both ends reset whichever sends first, with
// payload or a bare keepalive probe, masqueraded or not, IPv4 and IPv6.
//
// # Sets
//
// Set sizes follow their content: maxelem is max(65536, next power of two >=
// 2 x members), and a set that outgrows its maxelem is replaced through a
// temporary set and an atomic swap (growSet), so there is no 65536-member
// ceiling and no moment with an empty set. See setDefs for why NodePort sets
// are hash:net,port rather than kube-proxy's bitmap:port.
//
// # Network namespaces
//
// A netlink socket stays in the namespace it was opened in, so
// NewNetlinkIPSetAt opens its socket inside the target namespace. go-iptables
// execs iptables, and a child process starts in its parent *thread's*
// namespace, so WithNetNS runs each call on a fresh OS thread switched into
// the namespace (see runInNetNS). The real-kernel tests use both to program
// namespaces they create, never the root namespace.
//
// # iptables backends
//
// Tables runs whatever `iptables` is on PATH (on Debian 12: 1.8.9 with the
// nf_tables backend); NewTables accepts another binary, e.g.
// "iptables-legacy". Both produce the same `iptables -S` text for the rules
// written here, so comparison works unchanged; the real-kernel tests run
// against both when both binaries exist. Mixing backends in one network
// namespace works in the kernel (both hook netfilter) but each binary only
// lists its own rules, so a node must stick to one.
package iptables
