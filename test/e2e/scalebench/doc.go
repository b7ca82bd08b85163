// Package scalebench is `make bench-scale`: switchyard side by side with
// upstream kube-proxy (nftables mode and iptables mode) on one API server,
// at 1k, 10k and 30k Services × 5 endpoints, each proxy in its own network
// namespace on this machine.
//
// For each scale it measures, by reading the kernel (netlink, in the
// proxy's namespace; never the proxy's log):
//
//   - cold full sync: from the process's start until the kernel has the
//     last Service's endpoints (the proxies' /healthz turning 200 is
//     recorded as a cross-check);
//   - one EndpointSlice change → kernel programmed: one endpoint address of
//     a random Service replaced, timed from just before the API update
//     until the new address is in that Service's rules (p50/p99);
//   - RSS after the cold sync, at the end and at peak (VmRSS, VmHWM);
//   - CPU (utime+stime of the proxy's process group: its running children,
//     such as kube-proxy's nft and iptables-restore, and the reaped ones)
//     idle and under a churn of endpoint changes.
//
// The tests run only with -scale.bench (see bench_test.go); without it
// `go test ./...` skips them without building anything. report.go prints
// the table of switchyard / kube-proxy ratios and draws the PNG.
package scalebench
