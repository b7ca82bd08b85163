package ipvs

import (
	"net/netip"
	"time"
)

// Handle is the part of IPVS switchyard uses. Implementations wrap
// ErrNotFound when a virtual or real server does not exist and ErrExists
// when one to add already does.
type Handle interface {
	// ListVirtualServers lists every address-based virtual server (any
	// owner). Firewall-mark virtual servers are not listed.
	ListVirtualServers() ([]VirtualServer, error)
	// GetVirtualServer reads one virtual server.
	GetVirtualServer(k Key) (VirtualServer, error)
	// ListRealServers lists the real servers of a virtual server with their
	// connection counts.
	ListRealServers(k Key) ([]RealServer, error)

	AddVirtualServer(vs VirtualServer) error
	UpdateVirtualServer(vs VirtualServer) error
	// DeleteVirtualServer deletes a virtual server and its real servers.
	DeleteVirtualServer(k Key) error

	AddRealServer(k Key, rs RealServer) error
	UpdateRealServer(k Key, rs RealServer) error
	DeleteRealServer(k Key, addr netip.AddrPort) error

	// Timeouts reads the connection timeouts (ipvsadm --list --timeout).
	Timeouts() (Timeouts, error)
	// SetTimeouts sets the non-zero timeouts of t (ipvsadm --set); zero
	// fields keep the kernel's value.
	SetTimeouts(t Timeouts) error
}

// Timeouts are IPVS's connection timeouts, per network namespace: idle
// established TCP, TCP after a FIN, and UDP. Whole seconds.
type Timeouts struct {
	TCP, TCPFin, UDP time.Duration
}
