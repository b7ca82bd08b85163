package ipvs

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/switchyard/switchyard/dataplane"
)

// ServiceFlags are IPVS virtual server flags (IP_VS_SVC_F_*), without the
// HASHED bit the kernel adds to every listed virtual server.
type ServiceFlags uint32

const (
	// FlagPersistent is IP_VS_SVC_F_PERSISTENT: a client keeps its real
	// server for Timeout seconds (sessionAffinity: ClientIP).
	FlagPersistent ServiceFlags = 0x1
	// flagHashed is IP_VS_SVC_F_HASHED, set by the kernel on every virtual
	// server in its table; it cannot be set or cleared.
	flagHashed ServiceFlags = 0x2
)

// ForwardMethod is the IPVS forwarding method of a real server.
type ForwardMethod uint32

const (
	// ForwardMasq is NAT forwarding (IP_VS_CONN_F_MASQ, 0): the only method
	// switchyard uses, since backends are ordinary pods.
	ForwardMasq ForwardMethod = 0
	// forwardMask selects the method bits of the connection flags.
	forwardMask ForwardMethod = 0x7
)

func (m ForwardMethod) String() string {
	switch m {
	case 0:
		return "masq"
	case 1:
		return "local"
	case 2:
		return "tunnel"
	case 3:
		return "route"
	case 4:
		return "bypass"
	}
	return fmt.Sprintf("fwd(%d)", uint32(m))
}

// VirtualServer is an IPVS virtual service keyed by address, protocol and
// port. Handle methods read and write Key, Scheduler, Flags and Timeout;
// RealServers and Service are only filled by Proxier.Snapshot.
type VirtualServer struct {
	Key
	Scheduler string
	Flags     ServiceFlags
	// Timeout is the persistence timeout in seconds (with FlagPersistent).
	Timeout uint32

	// RealServers as last read from the kernel, with this process's later
	// changes applied (Snapshot only).
	RealServers []RealServer
	// Service is the Service port that wants this virtual server, when one
	// does (Snapshot only).
	Service string
}

// sameConfig reports whether two virtual servers are configured alike.
func (v VirtualServer) sameConfig(o VirtualServer) bool {
	return v.Scheduler == o.Scheduler && v.Flags == o.Flags && v.Timeout == o.Timeout
}

// header is the dump line of a virtual server, without real servers.
func (v VirtualServer) header() string {
	var b strings.Builder
	fmt.Fprintf(&b, "vs %s %s", v.Key, v.Scheduler)
	if v.Flags&FlagPersistent != 0 {
		fmt.Fprintf(&b, " persistent=%s", formatSeconds(v.Timeout))
	}
	if rest := v.Flags &^ FlagPersistent; rest != 0 {
		fmt.Fprintf(&b, " flags=%#x", uint32(rest))
	}
	return b.String()
}

func formatSeconds(s uint32) string { return strconv.FormatUint(uint64(s), 10) + "s" }

// RealServer is an IPVS destination of a virtual server.
type RealServer struct {
	Addr    netip.AddrPort
	Weight  int
	Forward ForwardMethod
	// UpperThreshold and LowerThreshold are IPVS_DEST_ATTR_U_THRESH and
	// L_THRESH (0: none). The kernel marks a real server overloaded when a
	// new connection brings its active + inactive connections to
	// UpperThreshold, and its schedulers skip it until an expiring
	// connection leaves fewer than LowerThreshold (with LowerThreshold 0:
	// fewer than 3/4 of UpperThreshold). See DesiredVS.ConnLimit.
	UpperThreshold uint32
	LowerThreshold uint32
	// Connection counts as the kernel reports them; ignored on writes.
	// Inactive connections include TIME_WAIT and closing TCP states and
	// every UDP "connection" (a timer refreshed by each packet).
	ActiveConns   int
	InactiveConns int
}

func (r RealServer) line(withConns bool) string {
	s := fmt.Sprintf("  rs %s %s weight=%d", r.Addr, r.Forward, r.Weight) + r.thresholds()
	if withConns {
		s += fmt.Sprintf(" active=%d inactive=%d", r.ActiveConns, r.InactiveConns)
	}
	return s
}

// thresholds is the dump text of the connection thresholds, empty without
// any (so real servers without a limit print as they always did).
func (r RealServer) thresholds() string {
	if r.UpperThreshold == 0 && r.LowerThreshold == 0 {
		return ""
	}
	return fmt.Sprintf(" uthreshold=%d lthreshold=%d", r.UpperThreshold, r.LowerThreshold)
}

// sameThresholds reports whether r has the thresholds of o.
func (r RealServer) sameThresholds(o RealServer) bool {
	return r.UpperThreshold == o.UpperThreshold && r.LowerThreshold == o.LowerThreshold
}

// gracefulDrain reports whether real servers of this protocol are drained
// before deletion. kube-proxy (IsRsGracefulTerminationNeeded) drains TCP only:
// a UDP "connection" in IPVS is just a timer that every packet refreshes, so
// its count may never reach zero while a client keeps sending, and with
// expire_nodest_conn=1 the kernel drops the entry on the next packet after
// the real server is deleted, so the client moves on quickly. kube-proxy
// treats SCTP like UDP; switchyard follows it.
func gracefulDrain(p dataplane.Protocol) bool { return p == dataplane.TCP }
