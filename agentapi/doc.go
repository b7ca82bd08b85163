// Package agentapi is the agent's read-mostly debugging API and its
// client, for yardctl: HTTP/1.1 over a unix socket (DefaultSocket, mode 0600,
// owned by root; there is no TCP listener), JSON bodies (types.go is the
// stable, documented schema).
//
//	GET  /v1/status                          Status
//	GET  /v1/services[?namespace=NS&name=N]  ServiceList
//	GET  /v1/ipvs                            IPVSTable (404 unless the dataplane is IPVS)
//	GET  /v1/nftables                        NFTables (404 unless the dataplane is nftables)
//	GET  /v1/conntrack[?namespace=NS&name=N] ConntrackReport
//	GET  /v1/trace?destination=IP:PORT[&protocol=TCP|UDP|SCTP]  Trace
//	POST /v1/sync                            SyncResponse: a full sync now
//
// Errors answer with a status code and an Error body. Only POST /v1/sync
// changes anything, and only by asking the sync loop for a full sync.
//
// The Server gets what it shows through small interfaces (Syncer, the
// agent's dataplane.Syncer; an Inspector for the kernel dataplane; a
// FlowLister for conntrack), so it runs against fakes in tests. It works
// on a copy of the model taken under Syncer.View, so a slow kernel read
// never holds up the sync loop. The same builders serve yardctl when the
// agent is down: KernelIPVS, KernelNFTables and KernelConntrack read the
// kernel directly, without a model (no Service names for IPVS and
// conntrack, no drift).
package agentapi
