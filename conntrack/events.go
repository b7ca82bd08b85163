package conntrack

import (
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// EventType is what happened to a conntrack entry.
type EventType uint8

const (
	// EventNew: the entry was confirmed (its first packet left the
	// stack) or created through ctnetlink.
	EventNew EventType = iota + 1
	// EventUpdate: some of the entry's details changed (TCP state, mark,
	// status bits such as ASSURED, ...).
	EventUpdate
	// EventDestroy: the entry is gone (timed out, deleted, or its TCP
	// connection was reset or closed and the entry expired).
	EventDestroy
)

func (t EventType) String() string {
	switch t {
	case EventNew:
		return "NEW"
	case EventUpdate:
		return "UPDATE"
	case EventDestroy:
		return "DESTROY"
	}
	return fmt.Sprintf("event-%d", uint8(t))
}

// Event is one conntrack event, parsed into a Flow.
//
// Events may be partial: ctnetlink_conntrack_event puts the TCP state only
// into events whose changes include it (HasTCPState), and the start
// timestamp (nf_conntrack_timestamp=1) only into DESTROY events; a NEW
// event's Start is then the event's own timestamp, taken as the entry was
// confirmed (a few microseconds before the kernel's start time). The mark
// is there whenever it is non-zero or changed, so a missing mark means 0.
// On Linux 6.18 every NEW, UPDATE and DESTROY event seen for TCP carried
// the state and the timer, mark changes through MarkFlows included.
type Event struct {
	Type EventType
	Flow Flow
	// HasTCPState is set when the message carried the TCP state.
	HasTCPState bool
	// HasTimeout is set when the message carried the entry's timer.
	HasTimeout bool
}

// ErrEventsLost is wrapped by Events.Receive's error when the kernel
// dropped events because the socket's receive buffer was full (ENOBUFS):
// what the caller built from events is incomplete and must be rebuilt
// from a dump.
var ErrEventsLost = errors.New("conntrack events lost (receive buffer overflow)")

// DefaultEventBuffer is the receive buffer Events asks for when given 0:
// at roughly 1 KiB of buffer per queued event, about 8000 events can wait
// while the reader is busy.
const DefaultEventBuffer = 8 << 20

// Events is a subscription to a network namespace's conntrack NEW, UPDATE
// and DESTROY events (NETLINK_NETFILTER groups NFNLGRP_CONNTRACK_*).
//
// Note that with net.netfilter.nf_conntrack_events=2 (the default) the
// kernel attaches its event cache only to entries created while some
// listener existed: entries older than every subscription never send an
// event, not even DESTROY.
type Events struct {
	s *nl.NetlinkSocket
}

// SubscribeEvents opens the subscription in ns (netns.None(): the calling
// thread's namespace) with a receive buffer of rcvbuf bytes (0:
// DefaultEventBuffer). It uses SO_RCVBUFFORCE so the buffer may exceed
// net.core.rmem_max (needs CAP_NET_ADMIN; without it, SO_RCVBUF, capped).
func SubscribeEvents(ns netns.NsHandle, rcvbuf int) (*Events, error) {
	s, err := nl.SubscribeAt(ns, netns.None(), unix.NETLINK_NETFILTER,
		unix.NFNLGRP_CONNTRACK_NEW, unix.NFNLGRP_CONNTRACK_UPDATE, unix.NFNLGRP_CONNTRACK_DESTROY)
	if err != nil {
		return nil, fmt.Errorf("conntrack: subscribe to events: %w", err)
	}
	if rcvbuf <= 0 {
		rcvbuf = DefaultEventBuffer
	}
	if err := s.SetReceiveBufferSize(rcvbuf, true); err != nil {
		if !errors.Is(err, unix.EPERM) {
			s.Close()
			return nil, fmt.Errorf("conntrack: set event receive buffer to %d bytes: %w", rcvbuf, err)
		}
		if err := s.SetReceiveBufferSize(rcvbuf, false); err != nil {
			s.Close()
			return nil, fmt.Errorf("conntrack: set event receive buffer to %d bytes: %w", rcvbuf, err)
		}
	}
	return &Events{s: s}, nil
}

// ErrReceiveTimeout is what Receive returns when SetTimeout's time passed
// without an event. (Close from another goroutine may also end a
// blocked Receive with it.)
var ErrReceiveTimeout = errors.New("conntrack: no event before the receive timeout")

// SetTimeout bounds each later Receive call; 0 means wait forever.
func (e *Events) SetTimeout(d time.Duration) {
	if d < 0 {
		d = time.Millisecond // 0 would mean no timeout
	}
	tv := unix.NsecToTimeval(d.Nanoseconds())
	_ = e.s.SetReceiveTimeout(&tv) // only stores the value
}

// Receive waits for the next datagram and returns its events (usually
// one). Messages that are not conntrack events are skipped; a malformed
// event is an error. The error wraps ErrEventsLost when events were
// dropped; the subscription stays usable.
func (e *Events) Receive() ([]Event, error) {
	msgs, _, err := e.s.Receive()
	switch {
	case errors.Is(err, unix.ENOBUFS):
		return nil, fmt.Errorf("conntrack: receive events: %w", ErrEventsLost)
	case errors.Is(err, unix.EAGAIN):
		return nil, ErrReceiveTimeout
	case err != nil:
		return nil, fmt.Errorf("conntrack: receive events: %w", err)
	}
	return parseEvents(msgs)
}

// Close ends the subscription; a Receive blocked in another goroutine
// returns an error.
func (e *Events) Close() { e.s.Close() }

// parseEvents turns ctnetlink event messages into Events: the message
// type's low byte is IPCTNL_MSG_CT_NEW for both NEW (with NLM_F_CREATE)
// and UPDATE, IPCTNL_MSG_CT_DELETE for DESTROY.
func parseEvents(msgs []syscall.NetlinkMessage) ([]Event, error) {
	out := make([]Event, 0, len(msgs))
	for _, m := range msgs {
		if m.Header.Type>>8 != unix.NFNL_SUBSYS_CTNETLINK {
			continue
		}
		var typ EventType
		switch m.Header.Type & 0xff {
		case nl.IPCTNL_MSG_CT_NEW:
			typ = EventUpdate
			if m.Header.Flags&unix.NLM_F_CREATE != 0 {
				typ = EventNew
			}
		case nl.IPCTNL_MSG_CT_DELETE:
			typ = EventDestroy
		default:
			continue
		}
		fl, has, err := parseFlow(m.Data)
		if err != nil {
			return out, fmt.Errorf("conntrack: parse %s event: %w", typ, err)
		}
		if typ == EventNew && fl.Start.IsZero() {
			fl.Start = has.eventTime
		}
		out = append(out, Event{Type: typ, Flow: fl, HasTCPState: has.tcpState, HasTimeout: has.timeout})
	}
	return out, nil
}
