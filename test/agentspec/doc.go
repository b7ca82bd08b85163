// Package agentspec is the behavioural spec of the switchyard agent: one
// list of end-to-end scenarios (Scenarios) that every kernel dataplane must
// pass, each run against the real agent binary in standalone mode
// (--manifests) with real traffic between network namespaces.
//
// Two test packages run the list:
//
//   - test/ipvsvm (TestVMAgent) inside the qemu VM with IPVS: the node is the
//     VM's root namespace and the agent picks the IPVS dataplane itself;
//   - test/nftnetns (TestNFTAgent) on the host as root: the node is a network
//     namespace the test created (never the host's own) and the agent runs
//     with --dataplane nftables.
//
// What differs between dataplanes is behind Dataplane: how to read the
// kernel state back (Snapshot), how to tell that Services are programmed,
// what to delete behind the agent's back, which foreign objects to put next
// to its own, and what "nothing of ours left" means. Behaviour only one
// dataplane has (IPVS schedulers, IPVS graceful drain at weight 0, exact
// round robin) is a Feature: a scenario that needs it skips on the other
// dataplane with a message saying so.
//
// The topology is the same everywhere:
//
//	client 10.99.0.2 --- 10.99.0.1 [node] 10.244.N.1 --- 10.244.N.2 backend N (echo on tcp and udp :8080)
//	                               [node] 10.244.200.1 --- 10.244.200.2 pod (a client inside --cluster-cidr)
//
// with --cluster-cidr 10.244.0.0/16, the node's default route towards the
// client (which does not forward, so a packet no rule translated is lost
// rather than refused by routing) and Service addresses in 10.96.0.0/16,
// 198.51.100.0/24 (load balancer) and 203.0.113.0/24 (external IPs). Every
// address exists only inside namespaces the test created (or the VM).
package agentspec
