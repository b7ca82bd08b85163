// Package hostport makes the hostPorts of this node's Pods reachable: a
// container port with `hostPort` (and optionally `hostIP`) is DNATed from
// the node's address(es) to the Pod, the job the CNI portmap plugin does
// on other nodes (issue 6).
//
// # Model
//
// Desired is a pure function from Pods to Mappings (one per Pod IP family
// a port applies to), the Conflicts between Pods claiming the same port,
// and the ports it cannot use (InvalidPort). hostIP follows CNI portmap:
// "" means every local address in every family the Pod has an IP of;
// "0.0.0.0" every local IPv4 address only; "::" every local IPv6 address
// only; any other address that address only. Two claims overlap when the
// family, protocol and port match and the addresses are equal or one is a
// wildcard; the Pod created first (then by namespace/name) keeps the port.
// Loopback is not offered: neither hostIP 127.0.0.1/::1 nor a wildcard
// port reached through 127.0.0.1 (that would need route_localnet and
// masquerading, which CNI portmap also leaves off by default).
// NodePortCollisions finds hostPorts on a Service's NodePort (or
// healthCheckNodePort): the hostPort wins on this node.
//
// # Kernel
//
// hostport owns the tables "ip switchyard-hostport" and "ip6
// switchyard-hostport" (TableName) and nothing else; see table.go for
// their layout. Two nat chains, prerouting (traffic from outside and from
// Pods) and output (from the node itself), at priority -110, send packets
// to a local destination (fib daddr type local) through two DNAT maps:
// "hostip-ports" (daddr . l4proto . dport) for hostIP ports and
// "wildcard-ports" (l4proto . dport, loopback excluded) for the others.
// Running before dstnat (-100), the hostPort wins over the nftables
// dataplane's NodePort on the same port; in IPVS mode Services are served
// at LOCAL_IN, which a packet DNATed to a Pod never reaches. A postrouting
// chain masquerades a Pod reaching its own hostPort (hairpin: after DNAT,
// source == destination), so the reply goes back through the node to be
// de-NATed. The source of every other connection is kept: the Pod sees
// the client's address. TCP, UDP and SCTP share the rules (the port is at
// the same offset); the ip6 table is skipped, with one log line, on a node
// without IPv6.
//
// Sync reads the tables back and writes only differences in one
// transaction: a restart whose Pods did not change writes nothing, drift
// is repaired on the next full sync (or Pod change), a deleted table is
// recreated on the next sync, and a table whose structure differs is
// swapped for a new one atomically. Cleanup deletes both tables.
//
// # Conntrack
//
// NAT is decided on a flow's first packet. When a UDP or SCTP mapping is
// added, changes or goes away, Sync clears the conntrack flows to its
// hostPort (staleFlowFilters), else a client that keeps its source port
// stays with the old Pod, or with no Pod when it started sending before
// the mapping existed (the classic portmap UDP bug).
//
// # Wiring
//
// The agent creates a Proxier with NewProxier (Config: NewConn(0),
// conntrack.NewNetlink, sysctl.New, the sync loop's Notify and a Report
// callback for metrics), puts it in its dataplane.Chain after the Service
// dataplane, and delivers this node's Pods to it as a source.PodHandler.
// Until SetPodsSynced, Sync deletes no mapping it finds in the kernel, so a
// restart keeps traffic flowing before the first Pod list arrives.
package hostport
