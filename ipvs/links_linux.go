package ipvs

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// NetlinkLinks implements Links with rtnetlink. The handle decides the
// network namespace: netlink.NewHandleAt(ns, unix.NETLINK_ROUTE) targets
// another one (pass NETLINK_ROUTE explicitly: without it the handle also
// opens an XFRM socket, which fails when xfrm_user is absent).
type NetlinkLinks struct {
	h    *netlink.Handle
	name string
}

var _ Links = (*NetlinkLinks)(nil)

// NewNetlinkLinks returns Links for the dummy link name in h's namespace.
func NewNetlinkLinks(h *netlink.Handle, name string) *NetlinkLinks {
	if name == "" {
		name = DefaultLinkName
	}
	return &NetlinkLinks{h: h, name: name}
}

func (l *NetlinkLinks) link() (netlink.Link, error) {
	link, err := l.h.LinkByName(l.name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, fmt.Errorf("link %s: %w", l.name, ErrNotFound)
		}
		return nil, fmt.Errorf("link %s: %w", l.name, err)
	}
	return link, nil
}

func (l *NetlinkLinks) EnsureLink() error {
	link, err := l.link()
	if err == nil {
		if link.Type() != "dummy" {
			return fmt.Errorf("link %s exists with type %s, want dummy", l.name, link.Type())
		}
		return nil
	}
	if !IsNotFound(err) {
		return err
	}
	if err := l.h.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: l.name}}); err != nil && !errors.Is(err, syscall.EEXIST) {
		return fmt.Errorf("create dummy link %s: %w", l.name, err)
	}
	return nil
}

func (l *NetlinkLinks) Addresses() ([]netip.Addr, error) {
	link, err := l.link()
	if err != nil {
		return nil, err
	}
	addrs, err := l.addrList(link)
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", l.name, err)
	}
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			out = append(out, ip.Unmap())
		}
	}
	return out, nil
}

func (l *NetlinkLinks) AddAddress(a netip.Addr) error {
	link, err := l.link()
	if err != nil {
		return err
	}
	addr := hostAddr(a)
	if a.Is6() {
		// A dummy link is NOARP so DAD is skipped anyway; NODAD makes sure
		// the address is never left tentative (tentative addresses do not
		// accept traffic).
		addr.Flags = unix.IFA_F_NODAD
	}
	err = l.h.AddrAdd(link, addr)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, syscall.EEXIST):
		return fmt.Errorf("add %s to %s: %w", a, l.name, ErrExists)
	case a.Is6() && (errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EAFNOSUPPORT) || errors.Is(err, syscall.EPERM)):
		// EACCES: disable_ipv6=1; EAFNOSUPPORT: booted with ipv6.disable=1.
		return fmt.Errorf("add %s to %s: %w: %w", a, l.name, ErrFamilyUnsupported, err)
	}
	return fmt.Errorf("add %s to %s: %w", a, l.name, err)
}

func (l *NetlinkLinks) DeleteAddress(a netip.Addr) error {
	link, err := l.link()
	if err != nil {
		return err
	}
	if err := l.h.AddrDel(link, hostAddr(a)); err != nil {
		if errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, syscall.ENOENT) {
			return fmt.Errorf("delete %s from %s: %w", a, l.name, ErrNotFound)
		}
		return fmt.Errorf("delete %s from %s: %w", a, l.name, err)
	}
	return nil
}

func (l *NetlinkLinks) NodeAddresses() ([]netip.Addr, error) {
	dummyIndex := -1
	if link, err := l.link(); err == nil {
		dummyIndex = link.Attrs().Index
	} else if !IsNotFound(err) {
		return nil, err
	}
	addrs, err := l.addrList(nil)
	if err != nil {
		return nil, fmt.Errorf("list node addresses: %w", err)
	}
	var out []netip.Addr
	for _, a := range addrs {
		if a.LinkIndex == dummyIndex {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if ip.IsUnspecified() || ip.IsMulticast() {
			continue
		}
		out = append(out, ip)
	}
	return out, nil
}

func (l *NetlinkLinks) DeleteLink() error {
	link, err := l.link()
	if err != nil {
		return err
	}
	if err := l.h.LinkDel(link); err != nil {
		return fmt.Errorf("delete link %s: %w", l.name, err)
	}
	return nil
}

// addrList retries dumps the kernel interrupted (addresses changed while
// it was answering); netlink v1.3 returns ErrDumpInterrupted with partial
// results then.
func (l *NetlinkLinks) addrList(link netlink.Link) ([]netlink.Addr, error) {
	var err error
	for range 5 {
		var addrs []netlink.Addr
		addrs, err = l.h.AddrList(link, netlink.FAMILY_ALL)
		if err == nil {
			return addrs, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return nil, err
		}
	}
	return nil, err
}

func hostAddr(a netip.Addr) *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}}
}
