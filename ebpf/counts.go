package ebpf

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	cebpf "github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/switchyard/switchyard/dataplane"
)

// Direction says which end of a counted connection is on this node.
type Direction string

const (
	// Out: a socket of this node (a pod or host process) connected to
	// the backend.
	Out Direction = "out"
	// In: a backend on this node accepted the connection.
	In Direction = "in"
)

func directionOf(tag uint8) Direction {
	if tag == dirIn {
		return In
	}
	return Out
}

// BackendConnections is the sockops count of established TCP connections
// of one backend address:port in one direction.
type BackendConnections struct {
	Backend   netip.AddrPort
	Direction Direction
	Count     uint64
}

// Connections returns the established-connection counts, sorted by
// backend then direction. Backends without a connection may be missing.
func (s *SocketLB) Connections() ([]BackendConnections, error) {
	m, err := s.readerMap(func(o *socklbObjects) *cebpf.Map { return o.ConnCounts })
	if err != nil {
		return nil, err
	}
	defer m.Close()
	var out []BackendConnections
	err = each(m, func(k socklbL4addr, n uint64) {
		key := l4FromKernel(k)
		out = append(out, BackendConnections{Backend: key.addrPort(), Direction: directionOf(key.tag), Count: n})
	})
	if err != nil {
		return nil, fmt.Errorf("read connection counts: %w", err)
	}
	slices.SortFunc(out, func(a, b BackendConnections) int {
		if c := a.Backend.Compare(b.Backend); c != 0 {
			return c
		}
		return cmp.Compare(a.Direction, b.Direction)
	})
	return out, nil
}

// Socket is one counted established TCP socket on this node.
type Socket struct {
	Cookie    uint64
	Direction Direction
	Local     netip.AddrPort
	Remote    netip.AddrPort
	// Frontend and Service are set when the socket was translated by the
	// socket LB (Out direction): the address the application dialed.
	Frontend    netip.AddrPort
	Service     dataplane.ServicePortName
	Established time.Time
	// NetnsCookie identifies the socket's network namespace.
	NetnsCookie uint64
}

// Sockets returns the counted sockets, oldest first.
func (s *SocketLB) Sockets() ([]Socket, error) {
	m, err := s.readerMap(func(o *socklbObjects) *cebpf.Map { return o.SockRecords })
	if err != nil {
		return nil, err
	}
	defer m.Close()
	names := map[uint32]dataplane.ServicePortName{}
	if p := s.names.Load(); p != nil {
		names = *p
	}
	bootOffset, err := monotonicToWall()
	if err != nil {
		return nil, err
	}
	var out []Socket
	err = each(m, func(cookie uint64, r socklbSockRecord) {
		sock := Socket{
			Cookie:      cookie,
			Direction:   directionOf(r.Dir),
			Local:       l4FromKernel(r.Local).addrPort(),
			Remote:      l4FromKernel(r.Remote).addrPort(),
			Established: time.Unix(0, int64(r.EstablishedNs)).Add(bootOffset),
			NetnsCookie: r.NetnsCookie,
		}
		if r.SvcId != 0 {
			sock.Frontend = l4FromKernel(r.Frontend).addrPort()
			sock.Service = names[r.SvcId]
		}
		out = append(out, sock)
	})
	if err != nil {
		return nil, fmt.Errorf("read socket records: %w", err)
	}
	slices.SortFunc(out, func(a, b Socket) int {
		if c := a.Established.Compare(b.Established); c != 0 {
			return c
		}
		return cmp.Compare(a.Cookie, b.Cookie)
	})
	return out, nil
}

// monotonicToWall is what to add to a bpf_ktime_get_ns value (CLOCK_MONOTONIC)
// to get wall-clock time.
func monotonicToWall() (time.Duration, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0, fmt.Errorf("read monotonic clock: %w", err)
	}
	return time.Duration(time.Now().UnixNano() - ts.Nano()), nil
}

var errClosed = errors.New("socket LB closed")

// readerMap returns a duplicate handle of one map, so a reader iterates
// without holding the sync lock; the caller closes it.
func (s *SocketLB) readerMap(pick func(*socklbObjects) *cebpf.Map) (*cebpf.Map, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.objs == nil {
		return nil, errClosed
	}
	m, err := pick(s.objs).Clone()
	if err != nil {
		return nil, fmt.Errorf("duplicate map handle: %w", err)
	}
	return m, nil
}
