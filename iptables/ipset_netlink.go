package iptables

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetlinkIPSet is the real IPSet, speaking the ipset netlink protocol
// (NETLINK_NETFILTER, subsystem IPSET) through vishvananda/netlink.
//
// It is bound to the namespace its handle's socket was opened in: a netlink
// socket keeps the network namespace it was created in, whichever thread
// uses it later. NewNetlinkIPSetAt opens the socket inside another
// namespace, which is how tests program a namespace they created.
type NetlinkIPSet struct {
	h *netlink.Handle
}

var _ IPSet = (*NetlinkIPSet)(nil)

// NewNetlinkIPSet returns an IPSet for the caller's network namespace.
func NewNetlinkIPSet() (*NetlinkIPSet, error) {
	h, err := netlink.NewHandle(unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("open netfilter netlink socket: %w", err)
	}
	return &NetlinkIPSet{h: h}, nil
}

// NewNetlinkIPSetAt returns an IPSet for network namespace ns.
//
// The handle must hold a NETLINK_NETFILTER socket: a handle opened with only
// NETLINK_ROUTE would make the library open a fresh netfilter socket in the
// *calling thread's* namespace for every ipset request, silently
// programming the wrong namespace.
func NewNetlinkIPSetAt(ns netns.NsHandle) (*NetlinkIPSet, error) {
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("open netfilter netlink socket in netns: %w", err)
	}
	return &NetlinkIPSet{h: h}, nil
}

// Close releases the netlink socket.
func (s *NetlinkIPSet) Close() { s.h.Close() }

// ListNames dumps every set. The kernel has no "names only" dump that the
// library exposes, so this transfers every member of every set: use it on
// full syncs and Cleanup, not on every sync.
func (s *NetlinkIPSet) ListNames() ([]string, error) {
	res, err := s.h.IpsetListAll()
	if err != nil {
		return nil, fmt.Errorf("ipset list: %w", err)
	}
	// A large set spans several netlink messages; the library returns one
	// result per message, so names repeat.
	var names []string
	for _, r := range res {
		if r.SetName != "" && !slices.Contains(names, r.SetName) {
			names = append(names, r.SetName)
		}
	}
	slices.Sort(names)
	return names, nil
}

func (s *NetlinkIPSet) Get(name string) (*Set, error) {
	res, err := s.h.IpsetList(name)
	if err != nil {
		return nil, fmt.Errorf("ipset list %s: %w", name, mapIPSetErr(err, ErrNotFound))
	}
	set := &Set{SetSpec: SetSpec{
		Name:    name,
		Type:    SetType(res.TypeName),
		Family:  familyFromKernel(res.Family),
		MaxElem: res.MaxElements,
	}}
	set.Members = make([]Member, 0, len(res.Entries))
	for _, e := range res.Entries {
		m, err := memberFromEntry(set.Type, e)
		if err != nil {
			return nil, fmt.Errorf("ipset list %s: %w", name, err)
		}
		set.Members = append(set.Members, m)
	}
	return set, nil
}

func (s *NetlinkIPSet) Create(spec SetSpec) error {
	opts := netlink.IpsetCreateOptions{MaxElements: spec.MaxElem, Family: familyToKernel(spec.Family)}
	if err := s.h.IpsetCreate(spec.Name, string(spec.Type), opts); err != nil {
		return fmt.Errorf("ipset create %s %s: %w", spec.Name, spec, mapIPSetErr(err, ErrExists))
	}
	return nil
}

func (s *NetlinkIPSet) Add(set string, m Member) error {
	if err := encodable(m); err != nil {
		return fmt.Errorf("ipset add %s %s: %w", set, m, err)
	}
	if err := s.h.IpsetAdd(set, entryFromMember(m)); err != nil {
		return fmt.Errorf("ipset add %s %s: %w", set, m, mapIPSetErr(err, ErrExists))
	}
	return nil
}

func (s *NetlinkIPSet) Del(set string, m Member) error {
	if err := encodable(m); err != nil {
		return fmt.Errorf("ipset del %s %s: %w", set, m, err)
	}
	if err := s.h.IpsetDel(set, entryFromMember(m)); err != nil {
		return fmt.Errorf("ipset del %s %s: %w", set, m, mapIPSetErr(err, ErrNotFound))
	}
	return nil
}

func (s *NetlinkIPSet) Test(set string, m Member) (bool, error) {
	if err := encodable(m); err != nil {
		return false, fmt.Errorf("ipset test %s %s: %w", set, m, err)
	}
	ok, err := s.h.IpsetTest(set, entryFromMember(m))
	if err != nil {
		return false, fmt.Errorf("ipset test %s %s: %w", set, m, mapIPSetErr(err, nil))
	}
	return ok, nil
}

func (s *NetlinkIPSet) Swap(a, b string) error {
	if err := s.h.IpsetSwap(a, b); err != nil {
		return fmt.Errorf("ipset swap %s %s: %w", a, b, mapIPSetErr(err, nil))
	}
	return nil
}

func (s *NetlinkIPSet) Destroy(name string) error {
	if err := s.h.IpsetDestroy(name); err != nil {
		return fmt.Errorf("ipset destroy %s: %w", name, mapIPSetErr(err, nil))
	}
	return nil
}

// mapIPSetErr attaches our sentinel errors to the kernel's answer. The
// kernel reports a missing set as ENOENT and an existing one as EEXIST, but
// uses one code, IPSET_ERR_EXIST, for "member already added" and "member
// not added": elemExist says which one the operation means.
func mapIPSetErr(err error, elemExist error) error {
	var ipsetErr nl.IPSetError
	var errno syscall.Errno
	switch {
	case errors.As(err, &ipsetErr):
		switch ipsetErr {
		case nl.IPSET_ERR_EXIST:
			if elemExist != nil {
				return fmt.Errorf("%w: %w", elemExist, err)
			}
		case nl.IPSET_ERR_BUSY, nl.IPSET_ERR_REFERENCED:
			return fmt.Errorf("%w: %w", ErrInUse, err)
		case nl.IPSET_ERR_EXIST_SETNAME2:
			// Swap: the second set does not exist.
			return fmt.Errorf("%w: %w", ErrNotFound, err)
		}
	case errors.As(err, &errno):
		switch errno {
		case unix.ENOENT:
			return fmt.Errorf("%w: %w", ErrNotFound, err)
		case unix.EEXIST:
			return fmt.Errorf("%w: %w", ErrExists, err)
		}
	}
	return err
}

func familyToKernel(f Family) uint8 {
	switch f {
	case FamilyINet:
		return unix.AF_INET
	case FamilyINet6:
		return unix.AF_INET6
	}
	return unix.AF_UNSPEC
}

func familyFromKernel(f uint8) Family {
	switch f {
	case unix.AF_INET:
		return FamilyINet
	case unix.AF_INET6:
		return FamilyINet6
	}
	return Family(fmt.Sprintf("family-%d", f))
}

// encodable refuses a network of prefix length 0: the library sends no
// CIDR attribute for 0, which the kernel would take as a host address
// (0.0.0.0/32) instead of refusing the network, as it refuses /0 itself.
func encodable(m Member) error {
	if (m.Net.IsValid() && m.Net.Bits() == 0) || (m.Net2.IsValid() && m.Net2.Bits() == 0) {
		return errors.New("prefix length 0 is not allowed")
	}
	return nil
}

func entryFromMember(m Member) *netlink.IPSetEntry {
	port, proto := m.Port, m.Proto
	e := &netlink.IPSetEntry{Port: &port, Protocol: &proto, IP: net.IP(m.Net.Addr().AsSlice())}
	if !m.Net.IsSingleIP() {
		e.CIDR = uint8(m.Net.Bits())
	}
	if m.IP2.IsValid() {
		e.IP2 = net.IP(m.IP2.AsSlice())
	}
	if m.Net2.IsValid() {
		// hash:ip,port,net: the network travels as IP2 with CIDR2 (the
		// kernel takes a missing CIDR2 as a host prefix; send it always).
		e.IP2 = net.IP(m.Net2.Addr().AsSlice())
		e.CIDR2 = uint8(m.Net2.Bits())
	}
	return e
}

func memberFromEntry(t SetType, e netlink.IPSetEntry) (Member, error) {
	var m Member
	if e.Port != nil {
		m.Port = *e.Port
	}
	ip, ok := netip.AddrFromSlice(e.IP)
	if !ok {
		return m, fmt.Errorf("member without a valid address: %+v", e)
	}
	ip = ip.Unmap()
	bits := ip.BitLen()
	if t == HashNetPort && e.CIDR != 0 {
		bits = int(e.CIDR)
	}
	m.Net = netip.PrefixFrom(ip, bits)
	if e.Protocol != nil {
		m.Proto = *e.Protocol
	}
	switch t {
	case HashIPPortIP, HashIPPortNet:
		ip2, ok := netip.AddrFromSlice(e.IP2)
		if !ok {
			return m, fmt.Errorf("member without a valid second address: %+v", e)
		}
		ip2 = ip2.Unmap()
		if t == HashIPPortIP {
			m.IP2 = ip2
			break
		}
		bits := ip2.BitLen()
		if e.CIDR2 != 0 {
			bits = int(e.CIDR2)
		}
		m.Net2 = netip.PrefixFrom(ip2, bits)
	}
	return m, nil
}
