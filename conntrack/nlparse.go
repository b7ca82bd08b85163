package conntrack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// The library parses ctnetlink messages only inside ConntrackTableList
// (its parseRawData is unexported), so events, GET replies and our own
// dumps go through this small parser instead. It reads the same fields
// ListFlows reports.

// Attribute numbers the nl package does not name (enum ctattr_*,
// linux/netfilter/nfnetlink_conntrack.h).
const (
	ctaProtoInfoTCP      = 1 // in CTA_PROTOINFO
	ctaProtoInfoTCPState = 1 // in CTA_PROTOINFO_TCP
	ctaTimestampStart    = 1 // in CTA_TIMESTAMP
	// ctaTimestampEvent (CTA_TIMESTAMP_EVENT) is when the kernel queued
	// the event, in ns; events carry it when conntrack timestamps are on.
	ctaTimestampEvent = 27
	// nlaTypeMask drops NLA_F_NESTED and NLA_F_NET_BYTEORDER: the kernel
	// sets NLA_F_NESTED on ctnetlink's nested attributes.
	nlaTypeMask = ^uint16(unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
	// sizeofNfgenmsg is struct nfgenmsg, which starts every nfnetlink
	// payload before the attributes.
	sizeofNfgenmsg = 4
)

// errMalformed is wrapped by every parse error.
var errMalformed = errors.New("malformed ctnetlink message")

// msgFields says which optional details a message carried. Events carry
// only part of an entry: UPDATE events include the TCP state only when it
// changed, and no event carries the start timestamp (ctnetlink puts it
// into DESTROY events only), so applying an event must keep what it lacks.
// A zero Flow.Start says the same for the start time.
type msgFields struct {
	tcpState, timeout bool
	eventTime         time.Time // zero when absent
}

// parseFlow reads one ctnetlink conntrack message's payload (after the
// nlmsghdr: the nfgenmsg, then attributes) into a Flow. Attributes it does
// not know are skipped; a message without an original tuple is an error.
func parseFlow(payload []byte) (Flow, msgFields, error) {
	var (
		fl      Flow
		has     msgFields
		hasOrig bool
	)
	if len(payload) < sizeofNfgenmsg {
		return fl, has, fmt.Errorf("%w: %d bytes, shorter than nfgenmsg", errMalformed, len(payload))
	}
	var proto uint8
	err := forEachAttr(payload[sizeofNfgenmsg:], func(typ uint16, val []byte) error {
		switch typ {
		case nl.CTA_TUPLE_ORIG:
			hasOrig = true
			t, p, err := parseTuple(val)
			fl.Orig, proto = t, p
			return err
		case nl.CTA_TUPLE_REPLY:
			t, _, err := parseTuple(val)
			fl.Reply = t
			return err
		case nl.CTA_PROTOINFO:
			return forEachAttr(val, func(typ uint16, val []byte) error {
				if typ != ctaProtoInfoTCP {
					return nil
				}
				return forEachAttr(val, func(typ uint16, val []byte) error {
					if typ == ctaProtoInfoTCPState {
						if len(val) < 1 {
							return fmt.Errorf("%w: empty TCP state", errMalformed)
						}
						fl.TCPState, has.tcpState = tcpStateName(val[0]), true
					}
					return nil
				})
			})
		case nl.CTA_TIMEOUT:
			v, err := be32(val, "timeout")
			fl.Timeout, has.timeout = time.Duration(v)*time.Second, err == nil
			return err
		case ctaTimestampEvent:
			if len(val) < 8 {
				return fmt.Errorf("%w: event timestamp of %d bytes", errMalformed, len(val))
			}
			if ns := binary.BigEndian.Uint64(val); ns != 0 {
				has.eventTime = time.Unix(0, int64(ns))
			}
			return nil
		case nl.CTA_MARK:
			v, err := be32(val, "mark")
			fl.Mark = v
			return err
		case nl.CTA_TIMESTAMP:
			return forEachAttr(val, func(typ uint16, val []byte) error {
				if typ != ctaTimestampStart {
					return nil
				}
				if len(val) < 8 {
					return fmt.Errorf("%w: start timestamp of %d bytes", errMalformed, len(val))
				}
				if ns := binary.BigEndian.Uint64(val); ns != 0 {
					fl.Start = time.Unix(0, int64(ns))
				}
				return nil
			})
		}
		return nil
	})
	if err != nil {
		return Flow{}, msgFields{}, err
	}
	if !hasOrig {
		return Flow{}, msgFields{}, fmt.Errorf("%w: no original tuple", errMalformed)
	}
	fl.Protocol = protoName(proto)
	return fl, has, nil
}

// parseTuple reads a CTA_TUPLE_ORIG or CTA_TUPLE_REPLY attribute: the
// addresses (CTA_TUPLE_IP) and protocol and ports (CTA_TUPLE_PROTO).
func parseTuple(b []byte) (Tuple, uint8, error) {
	var (
		src, dst         netip.Addr
		sport, dport     uint16
		proto            uint8
		hasIP, hasProtoN bool
	)
	err := forEachAttr(b, func(typ uint16, val []byte) error {
		switch typ {
		case nl.CTA_TUPLE_IP:
			hasIP = true
			return forEachAttr(val, func(typ uint16, val []byte) error {
				var into *netip.Addr
				switch typ {
				case nl.CTA_IP_V4_SRC, nl.CTA_IP_V6_SRC:
					into = &src
				case nl.CTA_IP_V4_DST, nl.CTA_IP_V6_DST:
					into = &dst
				default:
					return nil
				}
				a, ok := netip.AddrFromSlice(val)
				if !ok || (len(val) != 4 && len(val) != 16) {
					return fmt.Errorf("%w: address of %d bytes", errMalformed, len(val))
				}
				*into = a
				return nil
			})
		case nl.CTA_TUPLE_PROTO:
			return forEachAttr(val, func(typ uint16, val []byte) error {
				switch typ {
				case nl.CTA_PROTO_NUM:
					if len(val) < 1 {
						return fmt.Errorf("%w: empty protocol number", errMalformed)
					}
					proto, hasProtoN = val[0], true
				case nl.CTA_PROTO_SRC_PORT, nl.CTA_PROTO_DST_PORT:
					if len(val) < 2 {
						return fmt.Errorf("%w: port of %d bytes", errMalformed, len(val))
					}
					p := binary.BigEndian.Uint16(val)
					if typ == nl.CTA_PROTO_SRC_PORT {
						sport = p
					} else {
						dport = p
					}
				}
				return nil
			})
		}
		return nil
	})
	if err != nil {
		return Tuple{}, 0, err
	}
	if !hasIP || !hasProtoN || !src.IsValid() || !dst.IsValid() {
		return Tuple{}, 0, fmt.Errorf("%w: tuple without addresses or protocol", errMalformed)
	}
	return Tuple{Src: netip.AddrPortFrom(src, sport), Dst: netip.AddrPortFrom(dst, dport)}, proto, nil
}

// forEachAttr calls fn with the type (flags masked off) and value of each
// netlink attribute in b, in order, and stops at fn's first error.
func forEachAttr(b []byte, fn func(typ uint16, val []byte) error) error {
	for len(b) > 0 {
		if len(b) < unix.SizeofNlAttr {
			return fmt.Errorf("%w: %d trailing bytes", errMalformed, len(b))
		}
		l := int(nl.NativeEndian().Uint16(b[0:2]))
		typ := nl.NativeEndian().Uint16(b[2:4]) & nlaTypeMask
		if l < unix.SizeofNlAttr || l > len(b) {
			return fmt.Errorf("%w: attribute %d of length %d with %d bytes left", errMalformed, typ, l, len(b))
		}
		if err := fn(typ, b[unix.SizeofNlAttr:l]); err != nil {
			return err
		}
		// The last attribute's padding may be missing.
		b = b[min(nlaAlign(l), len(b)):]
	}
	return nil
}

func nlaAlign(l int) int { return (l + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1) }

func be32(val []byte, what string) (uint32, error) {
	if len(val) < 4 {
		return 0, fmt.Errorf("%w: %s of %d bytes", errMalformed, what, len(val))
	}
	return binary.BigEndian.Uint32(val), nil
}
