package ipvs

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/switchyard/switchyard/dataplane"
)

// Key identifies a virtual server the way the kernel does: address,
// protocol and port.
type Key struct {
	IP       netip.Addr
	Protocol dataplane.Protocol
	Port     uint16
}

// String formats a key as "10.96.0.1:80/TCP" or "[fd00::1]:80/TCP".
func (k Key) String() string {
	return netip.AddrPortFrom(k.IP, k.Port).String() + "/" + string(k.Protocol)
}

// Compare orders keys by address (IPv4 first), protocol, then port.
func (k Key) Compare(o Key) int {
	if c := k.IP.Compare(o.IP); c != 0 {
		return c
	}
	if c := strings.Compare(string(k.Protocol), string(o.Protocol)); c != 0 {
		return c
	}
	return int(k.Port) - int(o.Port)
}

// ParseKey parses the output of Key.String.
func ParseKey(s string) (Key, error) {
	i := strings.LastIndexByte(s, '/')
	if i < 0 {
		return Key{}, fmt.Errorf("parse virtual server key %q: missing /protocol", s)
	}
	ap, err := netip.ParseAddrPort(s[:i])
	if err != nil {
		return Key{}, fmt.Errorf("parse virtual server key %q: %w", s, err)
	}
	proto := dataplane.Protocol(s[i+1:])
	if _, ok := proto.Number(); !ok {
		return Key{}, fmt.Errorf("parse virtual server key %q: unknown protocol", s)
	}
	return Key{IP: ap.Addr(), Protocol: proto, Port: ap.Port()}, nil
}

// protocolNumber is the model's protocol number, widened to IPVS's 16
// bits.
func protocolNumber(p dataplane.Protocol) (uint16, bool) {
	n, ok := p.Number()
	return uint16(n), ok
}

func protocolFromNumber(n uint16) (dataplane.Protocol, bool) {
	if n > 255 {
		return "", false
	}
	return dataplane.ProtocolFromNumber(uint8(n))
}

// sameFamily reports whether two addresses are both IPv4 or both IPv6.
func sameFamily(a, b netip.Addr) bool { return a.Is4() == b.Is4() }
