// Package ipvs is switchyard's IPVS dataplane: it programs Linux IPVS
// virtual servers (one per Service frontend address, port and protocol) and
// binds the frontend addresses to a dummy link so the kernel accepts them as
// local, like kube-proxy's IPVS mode does with kube-ipvs0.
//
// The package has three layers:
//
//   - Desired turns the dataplane model into a DesiredState. It is a pure
//     function; its Dump output is what the golden tests compare.
//   - Handle, Links and Sysctl are the kernel clients, each with a real
//     implementation (moby/ipvs, vishvananda/netlink, /proc/sys) and a fake
//     with kernel-like semantics (not-found and already-exists errors) and a
//     deterministic Dump.
//   - Proxier diffs the DesiredState against what the kernel reports and
//     applies the smallest change. It never flushes. A partial sync (one
//     that dataplane.Changes limits to some Services) computes and diffs
//     only the share of the changed Services, from an index of every
//     Service port's claims it keeps between syncs.
//
// # Traffic policies and topology
//
// Real servers come from dataplane.CategorizeEndpoints for the node's name
// and zone, per family: ClusterIP virtual servers follow
// internalTrafficPolicy, ExternalIP, load-balancer IP and NodePort virtual
// servers externalTrafficPolicy; topology hints narrow the Cluster set.
// Under externalTrafficPolicy Local with no local endpoint the external
// virtual servers use the Cluster set, as kube-proxy's IPVS mode, so this
// node's pods and the node itself still reach the Service there; the
// iptables package drops other sources' new connections to them before
// IPVS sees them (its no-local-endpoint sets). Under internalTrafficPolicy
// Local with no local endpoint the ClusterIP virtual server has no real
// servers, so IPVS refuses new connections. Keeping the client's address
// under externalTrafficPolicy Local is the iptables package's part too (its
// *-LOCAL sets). A real server the policy or topology no longer selects
// drains like a removed endpoint's; see Desired and DesiredVS.RealServers.
//
// # Connection limits
//
// switchyard.io/max-connections-per-backend N on a TCP port sets the upper
// and the lower threshold (IPVS_DEST_ATTR_U_THRESH, L_THRESH) of every real
// server of its virtual servers to N (DesiredVS.ConnLimit; ipvsadm shows
// them as Uthreshold/Lthreshold). IPVS counts per virtual server on this
// node: a real server holding N connections (active and inactive, so a
// closed one until its entry expires) is overloaded and skipped by every
// scheduler; with all of them overloaded the kernel answers the SYN with
// ICMP port unreachable (ip_vs_leave), which the client sees as connection
// refused at once. Unlike the nftables dataplane, IPVS picks another
// backend when the first choice is full. UDP and SCTP ports are not
// limited. With sessionAffinity ClientIP, IPVS keeps sending a client to
// its persistence template's real server even when it is overloaded
// (ip_vs_check_template does not look at the overload flag).
//
// # Ownership
//
// switchyard shares IPVS and the node's addresses with other programs, so
// every write is limited to objects it can prove it owns:
//
//  1. The dummy link (Links' name, default "switchyard0") and every address
//     on it belong to switchyard.
//  2. A virtual server belongs to switchyard when its address is on the
//     dummy link and is not also an address of another link of the node.
//     Frontend addresses are bound to the dummy link before any virtual
//     server is created on them, so the rule holds from the first write.
//  3. A virtual server on an address the node also has elsewhere (every
//     NodePort virtual server, and an ExternalIP that is a node address)
//     belongs to switchyard only if its key is listed in the state file
//     (Config.StateDir/ipvs-state.json). The key is written there before the
//     virtual server is created and removed after it is deleted.
//  4. Anything else is foreign: it is never updated or deleted, by Sync or
//     Cleanup, even when switchyard wants the same key. A desired key held by
//     a foreign virtual server is logged as a conflict and left alone.
//     Firewall-mark virtual servers are always foreign.
//  5. Addresses on links other than the dummy link are never touched.
//
// Consequences: a virtual server another program creates on a ClusterIP is
// adopted (the ClusterIP is switchyard's address); a virtual server on an
// address someone removed from the dummy link is no longer recognized and is
// left in place; losing the state file orphans NodePort virtual servers (they
// are left alone, never deleted by mistake).
package ipvs
