package conntrack

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// FlowTable keeps a network namespace's conntrack entries that a predicate
// keeps, from events instead of dumping the table again and again: it
// subscribes, dumps once, then applies NEW, UPDATE and DESTROY events. The
// table is dumped again only when events were lost (the receive buffer
// overflowed) or receiving failed; Resyncs counts those.
//
// Entries that existed before the subscription send no events at all
// (with nf_conntrack_events=2, the default, the kernel gives only entries
// created while a listener exists an event cache), so their end and
// changes would go unseen. The table calls them silent and re-reads them
// every sweep interval: one GET each while there are few, a dump when
// there are many. Their number only shrinks.
//
// Details are as of the last event: Timeout in particular is not
// refreshed by packets (the kernel sends no event for them). Use GetFlows
// for fresh timers (Flow.Idle).
//
// Entries are keyed by protocol and original tuple; conntrack zones are
// not told apart.
type FlowTable struct {
	keep       func(Flow) bool
	ns         netns.NsHandle // our own handle, to subscribe again
	evBuf      int
	sweepEvery time.Duration
	sweepGets  int

	reqMu sync.Mutex // the request socket is shared by Run and GetFlows
	req   *requester

	evMu    sync.Mutex // guards ev against Close and the context
	ev      *Events
	stopped bool
	runDone chan struct{} // closed when Run returns; nil before Run

	closeOnce sync.Once

	mu      sync.Mutex
	flows   map[origKey]Flow
	silent  map[origKey]bool // from a dump and never heard of since
	gen     uint64           // counts dumps: results read before one are stale
	stats   FlowTableStats
	lastErr error
}

// FlowTableStats are counters for logs and tests.
type FlowTableStats struct {
	// Flows is the number of entries in the table; Silent how many of
	// them came from a dump and never sent an event.
	Flows, Silent int
	// Events counts the events applied.
	Events int
	// Resyncs counts the dumps after the first: one per overflow or
	// receive error.
	Resyncs int
	// Sweeps counts the re-reads of silent entries.
	Sweeps int
}

// FlowTableOption configures NewFlowTable.
type FlowTableOption func(*FlowTable)

// WithEventBuffer sets the event socket's receive buffer in bytes (see
// SubscribeEvents); tests make it tiny to force overflows.
func WithEventBuffer(bytes int) FlowTableOption {
	return func(t *FlowTable) { t.evBuf = bytes }
}

// WithSweepInterval sets how often silent entries are re-read (default
// 10s): an entry that ended before the table started watching can linger
// that long. 0 turns sweeps off.
func WithSweepInterval(d time.Duration) FlowTableOption {
	return func(t *FlowTable) { t.sweepEvery = d }
}

// requestBuffer is the request socket's receive buffer: room for a few
// hundred GET replies per sendmsg.
const requestBuffer = 4 << 20

// NewFlowTable subscribes to conntrack events in ns (netns.None(): the
// calling thread's namespace) and fills the table from one dump of the
// entries keep accepts; Run then applies events. keep should look only at
// what does not change over an entry's life (protocol, tuples): an entry
// it turns down is not looked at again until it sends an event. ns may be
// closed once NewFlowTable returns. A nil keep keeps every entry.
func NewFlowTable(ns netns.NsHandle, keep func(Flow) bool, opts ...FlowTableOption) (*FlowTable, error) {
	if keep == nil {
		keep = func(Flow) bool { return true }
	}
	t := &FlowTable{
		keep:       keep,
		sweepEvery: 10 * time.Second,
		sweepGets:  4096,
		flows:      map[origKey]Flow{},
		silent:     map[origKey]bool{},
	}
	for _, o := range opts {
		o(t)
	}
	// Keep a handle of our own: resyncs subscribe again, in the same
	// namespace even if the caller closed ns or runs Run elsewhere.
	// Without ns, sockets open where the calling thread is, with no
	// setns (which would need CAP_SYS_ADMIN even to enter the namespace
	// the agent already runs in).
	t.ns = netns.None()
	if ns.IsOpen() {
		fd, err := unix.FcntlInt(uintptr(ns), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("conntrack: flow table: hold the network namespace: %w", err)
		}
		t.ns = netns.NsHandle(fd)
	}
	s, err := nl.GetNetlinkSocketAt(t.ns, netns.None(), unix.NETLINK_NETFILTER)
	if err != nil {
		closeNS(t.ns)
		return nil, fmt.Errorf("conntrack: flow table: open request socket: %w", err)
	}
	if err := s.SetReceiveBufferSize(requestBuffer, true); err != nil && !errors.Is(err, unix.EPERM) {
		s.Close()
		closeNS(t.ns)
		return nil, fmt.Errorf("conntrack: flow table: set request receive buffer: %w", err)
	}
	t.req = newRequester(s)
	// Subscribe before dumping: an entry that changes meanwhile is in
	// the dump or in the queued events, or both (events then bring it
	// up to date in order).
	if t.ev, err = SubscribeEvents(t.ns, t.evBuf); err != nil {
		t.closeSockets()
		return nil, fmt.Errorf("conntrack: flow table: %w", err)
	}
	flows, err := t.dump()
	if err != nil {
		t.closeSockets()
		return nil, fmt.Errorf("conntrack: flow table: initial dump: %w", err)
	}
	for k, fl := range flows {
		t.flows[k] = fl
		t.silent[k] = true // older than the subscription, or just as old
	}
	return t, nil
}

func (t *FlowTable) dump() (map[origKey]Flow, error) {
	out := map[origKey]Flow{}
	t.reqMu.Lock()
	defer t.reqMu.Unlock()
	if t.req == nil {
		return nil, errors.New("flow table closed")
	}
	err := t.req.dump(func(fl Flow) {
		if t.keep(fl) {
			out[keyOf(fl)] = fl
		}
	})
	return out, err
}

// Run applies events until ctx ends or Close is called, re-dumping after
// lost events or receive errors and re-reading silent entries every sweep
// interval. Call it once. It returns nil after Close, else ctx's error.
func (t *FlowTable) Run(ctx context.Context) error {
	t.evMu.Lock()
	if t.stopped || t.runDone != nil {
		t.evMu.Unlock()
		return ctx.Err()
	}
	t.runDone = make(chan struct{})
	defer close(t.runDone)
	t.evMu.Unlock()
	defer context.AfterFunc(ctx, t.stop)()

	sweeps := t.sweepEvery > 0
	nextSweep := time.Now().Add(t.sweepEvery)
	backoff := 50 * time.Millisecond
	needResync := false
	for {
		if needResync {
			if err := t.resync(); err != nil {
				// Until a resync succeeds the table may be
				// stale (Err says so): try again, slower.
				t.setErr(err)
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(backoff):
				}
				backoff = min(2*backoff, 5*time.Second)
				continue
			}
			needResync, backoff = false, 50*time.Millisecond
		}
		ev, ok := t.events()
		if !ok {
			return ctx.Err()
		}
		if sweeps {
			ev.SetTimeout(time.Until(nextSweep))
		}
		evs, err := ev.Receive()
		switch {
		case err == nil:
			t.apply(evs)
		case errors.Is(err, ErrReceiveTimeout):
		default:
			if _, ok := t.events(); !ok {
				return ctx.Err()
			}
			// Events are lost, or may be: start over from a
			// fresh subscription and dump.
			t.setErr(err)
			needResync = true
			continue
		}
		if sweeps && !time.Now().Before(nextSweep) {
			if err := t.sweep(); err != nil {
				t.setErr(err)
			}
			nextSweep = time.Now().Add(t.sweepEvery)
		}
	}
}

func (t *FlowTable) events() (*Events, bool) {
	t.evMu.Lock()
	defer t.evMu.Unlock()
	return t.ev, !t.stopped
}

func (t *FlowTable) stop() {
	t.evMu.Lock()
	defer t.evMu.Unlock()
	t.stopped = true
	if t.ev != nil {
		t.ev.Close() // wakes Run's Receive
	}
}

func (t *FlowTable) setErr(err error) {
	t.mu.Lock()
	t.lastErr = err
	t.mu.Unlock()
}

// apply updates the table from events. An UPDATE may lack the TCP state
// and the timer (see Event): those are kept from what the table had.
func (t *FlowTable) apply(evs []Event) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, e := range evs {
		t.stats.Events++
		k := keyOf(e.Flow)
		delete(t.silent, k) // it sends events after all
		if e.Type == EventDestroy {
			delete(t.flows, k)
			continue
		}
		fl := e.Flow
		if old, ok := t.flows[k]; ok && e.Type == EventUpdate {
			if !e.HasTCPState {
				fl.TCPState = old.TCPState
			}
			if !e.HasTimeout {
				fl.Timeout = old.Timeout
			}
			if fl.Start.IsZero() {
				fl.Start = old.Start
			}
		}
		if t.keep(fl) {
			t.flows[k] = fl
		} else {
			delete(t.flows, k)
		}
	}
}

// resync subscribes again, drops the old subscription (with its queue of
// events from before the loss) and rebuilds the table from a dump. The
// new subscription comes first so that a listener exists throughout:
// entries created in a gap would never send events.
func (t *FlowTable) resync() error {
	ev, err := SubscribeEvents(t.ns, t.evBuf)
	if err != nil {
		return fmt.Errorf("conntrack: flow table resync: %w", err)
	}
	t.evMu.Lock()
	if t.stopped {
		t.evMu.Unlock()
		ev.Close()
		return nil
	}
	old := t.ev
	t.ev = ev
	t.evMu.Unlock()
	old.Close()

	flows, err := t.dump()
	if err != nil {
		return fmt.Errorf("conntrack: flow table resync: %w", err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	// Only entries older than the first subscription can be silent:
	// every later one has an event cache, even if its events were lost.
	silent := map[origKey]bool{}
	for k := range flows {
		if t.silent[k] {
			silent[k] = true
		}
	}
	t.flows, t.silent = flows, silent
	t.gen++
	t.stats.Resyncs++
	t.lastErr = nil
	return nil
}

// sweep re-reads the silent entries: drops those that are gone, refreshes
// the others. GETs cost per entry, a dump per entry in the whole table, so
// many silent entries are re-read by a dump.
func (t *FlowTable) sweep() error {
	t.mu.Lock()
	gen := t.gen
	silent := make([]Flow, 0, len(t.silent))
	for k := range t.silent {
		silent = append(silent, t.flows[k])
	}
	t.mu.Unlock()
	if len(silent) == 0 {
		return nil
	}
	var fresh map[origKey]Flow
	if len(silent) <= t.sweepGets {
		t.reqMu.Lock()
		var (
			got []Flow
			err error
		)
		if t.req == nil {
			err = errors.New("flow table closed")
		} else {
			got, err = t.req.get(silent)
		}
		t.reqMu.Unlock()
		if err != nil {
			return fmt.Errorf("conntrack: flow table sweep: %w", err)
		}
		fresh = make(map[origKey]Flow, len(got))
		for _, fl := range got {
			fresh[keyOf(fl)] = fl
		}
	} else {
		var err error
		if fresh, err = t.dump(); err != nil {
			return fmt.Errorf("conntrack: flow table sweep: %w", err)
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.gen != gen {
		return nil // a resync replaced the table meanwhile
	}
	for _, fl := range silent {
		k := keyOf(fl)
		if !t.silent[k] {
			continue // an event came meanwhile: it is newer
		}
		if f, ok := fresh[k]; ok && t.keep(f) {
			t.flows[k] = f
			continue
		}
		delete(t.flows, k)
		delete(t.silent, k)
	}
	t.stats.Sweeps++
	return nil
}

// Flows returns a copy of the table, in no particular order.
func (t *FlowTable) Flows() []Flow {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Flow, 0, len(t.flows))
	for _, fl := range t.flows {
		out = append(out, fl)
	}
	return out
}

// Resyncs is how many times the table was dumped again after lost events
// or a receive error.
func (t *FlowTable) Resyncs() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.stats.Resyncs
}

// Stats returns the table's counters.
func (t *FlowTable) Stats() FlowTableStats {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.stats
	s.Flows, s.Silent = len(t.flows), len(t.silent)
	return s
}

// Err is the last error Run met since the last successful resync (the
// table may then be stale), or nil.
func (t *FlowTable) Err() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.lastErr
}

// GetFlows reads the entries of flows afresh by their original tuples,
// without a dump (see Netlink.GetFlows). It does not change the table.
func (t *FlowTable) GetFlows(flows []Flow) ([]Flow, error) {
	t.reqMu.Lock()
	defer t.reqMu.Unlock()
	if t.req == nil {
		return nil, errors.New("conntrack: get flows: flow table closed")
	}
	return t.req.get(flows)
}

// Close stops Run, waits for it to return, and closes the sockets and
// the namespace handle. Flows still returns the last table.
func (t *FlowTable) Close() {
	t.stop()
	t.evMu.Lock()
	done := t.runDone
	t.evMu.Unlock()
	if done != nil {
		<-done // Run notices within a request timeout at worst
	}
	t.closeOnce.Do(t.closeSockets)
}

func (t *FlowTable) closeSockets() {
	t.evMu.Lock()
	if t.ev != nil {
		t.ev.Close()
	}
	t.evMu.Unlock()
	t.reqMu.Lock()
	if t.req != nil {
		t.req.s.Close()
		t.req = nil
	}
	t.reqMu.Unlock()
	closeNS(t.ns)
}

// closeNS closes an open namespace handle (netns.None() is not one).
func closeNS(h netns.NsHandle) {
	if h.IsOpen() {
		h.Close()
	}
}
