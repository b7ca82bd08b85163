package nftables

import "github.com/switchyard/switchyard/sysctl"

// Sysctl reads and writes kernel parameters by their /proc/sys path: the
// real one is sysctl.New (or sysctl.NewAt for another network namespace).
type Sysctl = sysctl.Interface

// sysctlTCPBeLiberal is per network namespace; it exists once conntrack is
// loaded (built in on these kernels).
const sysctlTCPBeLiberal = "net/netfilter/nf_conntrack_tcp_be_liberal"
