package ipvs

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"

	libipvs "github.com/moby/ipvs"

	"github.com/switchyard/switchyard/dataplane"
)

// KernelHandle implements Handle over github.com/moby/ipvs. A moby handle
// owns one netlink socket and is not safe for concurrent use, hence the
// mutex.
type KernelHandle struct {
	mu sync.Mutex
	h  *libipvs.Handle
}

var _ Handle = (*KernelHandle)(nil)

// NewHandle opens IPVS in the network namespace at netnsPath ("" for the
// caller's). moby/ipvs first runs `modprobe -va ip_vs` once per process.
func NewHandle(netnsPath string) (*KernelHandle, error) {
	h, err := libipvs.New(netnsPath)
	if err != nil {
		return nil, fmt.Errorf("open ipvs: %w", err)
	}
	return &KernelHandle{h: h}, nil
}

// Close releases the netlink socket.
func (k *KernelHandle) Close() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.h.Close()
}

func (k *KernelHandle) ListVirtualServers() ([]VirtualServer, error) {
	k.mu.Lock()
	svcs, err := k.h.GetServices()
	k.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("list virtual servers: %w", err)
	}
	out := make([]VirtualServer, 0, len(svcs))
	for _, s := range svcs {
		if s.FWMark != 0 {
			continue // firewall-mark services have no address key; never ours
		}
		vs, err := fromLibService(s)
		if err != nil {
			return nil, fmt.Errorf("list virtual servers: %w", err)
		}
		out = append(out, vs)
	}
	return out, nil
}

func (k *KernelHandle) GetVirtualServer(key Key) (VirtualServer, error) {
	svc, err := toLibService(VirtualServer{Key: key})
	if err != nil {
		return VirtualServer{}, err
	}
	k.mu.Lock()
	s, err := k.h.GetService(svc)
	k.mu.Unlock()
	if err != nil {
		return VirtualServer{}, fmt.Errorf("get virtual server %s: %w", key, svcErr(err))
	}
	return fromLibService(s)
}

func (k *KernelHandle) ListRealServers(key Key) ([]RealServer, error) {
	svc, err := toLibService(VirtualServer{Key: key})
	if err != nil {
		return nil, err
	}
	k.mu.Lock()
	dsts, err := k.h.GetDestinations(svc)
	k.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("list real servers of %s: %w", key, svcErr(err))
	}
	out := make([]RealServer, 0, len(dsts))
	for _, d := range dsts {
		a, ok := netip.AddrFromSlice(d.Address)
		if !ok {
			return nil, fmt.Errorf("list real servers of %s: bad address %v", key, d.Address)
		}
		out = append(out, RealServer{
			Addr:           netip.AddrPortFrom(a.Unmap(), d.Port),
			Weight:         d.Weight,
			Forward:        ForwardMethod(d.ConnectionFlags) & forwardMask,
			UpperThreshold: d.UpperThreshold,
			LowerThreshold: d.LowerThreshold,
			ActiveConns:    d.ActiveConnections,
			InactiveConns:  d.InactiveConnections,
		})
	}
	return out, nil
}

func (k *KernelHandle) AddVirtualServer(vs VirtualServer) error {
	svc, err := toLibService(vs)
	if err != nil {
		return err
	}
	k.mu.Lock()
	err = k.h.NewService(svc)
	k.mu.Unlock()
	if err != nil {
		return fmt.Errorf("add virtual server %s: %w", vs.Key, addSvcErr(err, vs.Scheduler))
	}
	return nil
}

func (k *KernelHandle) UpdateVirtualServer(vs VirtualServer) error {
	svc, err := toLibService(vs)
	if err != nil {
		return err
	}
	k.mu.Lock()
	err = k.h.UpdateService(svc)
	k.mu.Unlock()
	if err != nil {
		if errors.Is(err, syscall.ENOENT) {
			return fmt.Errorf("update virtual server %s: scheduler %q not available: %w", vs.Key, vs.Scheduler, err)
		}
		return fmt.Errorf("update virtual server %s: %w", vs.Key, svcErr(err))
	}
	return nil
}

func (k *KernelHandle) DeleteVirtualServer(key Key) error {
	svc, err := toLibService(VirtualServer{Key: key})
	if err != nil {
		return err
	}
	k.mu.Lock()
	err = k.h.DelService(svc)
	k.mu.Unlock()
	if err != nil {
		return fmt.Errorf("delete virtual server %s: %w", key, svcErr(err))
	}
	return nil
}

func (k *KernelHandle) AddRealServer(key Key, rs RealServer) error {
	return k.destOp("add", key, rs, (*libipvs.Handle).NewDestination)
}

func (k *KernelHandle) UpdateRealServer(key Key, rs RealServer) error {
	return k.destOp("update", key, rs, (*libipvs.Handle).UpdateDestination)
}

func (k *KernelHandle) DeleteRealServer(key Key, addr netip.AddrPort) error {
	return k.destOp("delete", key, RealServer{Addr: addr}, (*libipvs.Handle).DelDestination)
}

func (k *KernelHandle) Timeouts() (Timeouts, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	c, err := k.h.GetConfig()
	if err != nil {
		return Timeouts{}, fmt.Errorf("read ipvs timeouts: %w", err)
	}
	return Timeouts{TCP: c.TimeoutTCP, TCPFin: c.TimeoutTCPFin, UDP: c.TimeoutUDP}, nil
}

// SetTimeouts relies on the kernel keeping the timeouts sent as 0
// (ip_vs_set_timeout only applies non-zero values); moby/ipvs always sends
// all three.
func (k *KernelHandle) SetTimeouts(t Timeouts) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.h.SetConfig(&libipvs.Config{TimeoutTCP: t.TCP, TimeoutTCPFin: t.TCPFin, TimeoutUDP: t.UDP}); err != nil {
		return fmt.Errorf("set ipvs timeouts %+v: %w", t, err)
	}
	return nil
}

func (k *KernelHandle) destOp(op string, key Key, rs RealServer, f func(*libipvs.Handle, *libipvs.Service, *libipvs.Destination) error) error {
	svc, err := toLibService(VirtualServer{Key: key})
	if err != nil {
		return err
	}
	d := &libipvs.Destination{
		Address:         net.IP(rs.Addr.Addr().AsSlice()),
		Port:            rs.Addr.Port(),
		Weight:          rs.Weight,
		ConnectionFlags: uint32(rs.Forward & forwardMask),
		AddressFamily:   family(rs.Addr.Addr()),
		// moby/ipvs sends both thresholds on every add and update.
		UpperThreshold: rs.UpperThreshold,
		LowerThreshold: rs.LowerThreshold,
	}
	k.mu.Lock()
	err = f(k.h, svc, d)
	k.mu.Unlock()
	if err != nil {
		return fmt.Errorf("%s real server %s of %s: %w", op, rs.Addr, key, destErr(err))
	}
	return nil
}

// The kernel's IPVS netlink answers (net/netfilter/ipvs/ip_vs_ctl.c): ESRCH
// for a missing virtual server, ENOENT for a missing real server and also
// for a scheduler module that cannot be loaded, EEXIST for duplicates.

func svcErr(err error) error {
	if errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	return err
}

func addSvcErr(err error, sched string) error {
	switch {
	case errors.Is(err, syscall.EEXIST):
		return fmt.Errorf("%w: %w", ErrExists, err)
	case errors.Is(err, syscall.ENOENT):
		return fmt.Errorf("scheduler %q not available: %w", sched, err)
	}
	return err
}

func destErr(err error) error {
	switch {
	case errors.Is(err, syscall.EEXIST):
		return fmt.Errorf("%w: %w", ErrExists, err)
	case errors.Is(err, syscall.ESRCH), errors.Is(err, syscall.ENOENT):
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	return err
}

func family(a netip.Addr) uint16 {
	if a.Is4() {
		return syscall.AF_INET
	}
	return syscall.AF_INET6
}

func toLibService(vs VirtualServer) (*libipvs.Service, error) {
	proto, ok := protocolNumber(vs.Protocol)
	if !ok {
		return nil, fmt.Errorf("virtual server %s: unsupported protocol", vs.Key)
	}
	if !vs.IP.IsValid() {
		return nil, fmt.Errorf("virtual server %s: invalid address", vs.Key)
	}
	s := &libipvs.Service{
		Address:       net.IP(vs.IP.AsSlice()),
		Protocol:      proto,
		Port:          vs.Port,
		SchedName:     vs.Scheduler,
		Flags:         uint32(vs.Flags),
		Timeout:       vs.Timeout,
		AddressFamily: family(vs.IP),
	}
	// The netmask only matters for persistence granularity; kube-proxy
	// uses a host mask, so one client address is one persistence entry.
	if vs.IP.Is4() {
		s.Netmask = 0xffffffff
	} else {
		s.Netmask = 128
	}
	return s, nil
}

func fromLibService(s *libipvs.Service) (VirtualServer, error) {
	a, ok := netip.AddrFromSlice(s.Address)
	if !ok {
		return VirtualServer{}, fmt.Errorf("virtual server with bad address %v", s.Address)
	}
	proto, ok := protocolFromNumber(s.Protocol)
	if !ok {
		// Keep it listable (it may be foreign); it can never match a key.
		proto = dataplane.Protocol(fmt.Sprintf("proto-%d", s.Protocol))
	}
	return VirtualServer{
		Key:       Key{IP: a.Unmap(), Protocol: proto, Port: s.Port},
		Scheduler: s.SchedName,
		Flags:     ServiceFlags(s.Flags) &^ flagHashed,
		Timeout:   s.Timeout,
	}, nil
}
