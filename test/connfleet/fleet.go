// Package connfleet is a fleet of long-lived TCP clients for the
// connection rebalancer's scenarios (test/nftnetns) and its benchmark
// (test/rebalancebench): N clients in one network namespace, each holding
// one connection to a Service address and sending a request every
// Interval to the echo servers of test/netnstest, whose reply names the
// backend that answered and the source it saw.
//
// A client whose exchange fails (a reset, EOF, a timeout) closes the
// connection, dials again at once and retries the same request; the
// request fails only when MaxAttempts attempts in a row could not get it
// answered. A reply from a backend the fleet was not told to allow, or
// with the wrong source (Config.CheckSource), is a bad answer and ends
// that client: it is a bug, not something to retry.
//
// The fleet's view of the connections is its own: a client is on the
// backend that answered its last request on its current connection, and
// on none from a failed exchange until the next answer. Snapshot reads
// that view at one moment; Record samples it periodically for a time
// series.
//
// 1000 clients are cheap on 2 cores: one goroutine and one ticker a
// client, buffers reused across requests, a reply identical to the
// connection's previous one not parsed again, counters in atomics (the
// fleet's mutex is taken only on errors). Every loop is bounded: a client
// by MaxRequests, an attempt by AttemptTimeout, Stop by one attempt.
package connfleet

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/switchyard/switchyard/test/netnstest"
)

// Config describes a fleet; the zero values of the knobs get defaults.
type Config struct {
	// Name prefixes the requests and the messages.
	Name string
	// NS is the client namespace: every socket is created there.
	NS *netnstest.NS
	// Addr is the Service's "ip:port" (TCP).
	Addr string
	// Backends are the IDs of every backend that may ever answer, in the
	// order Snapshot.Counts and Sample.Counts report them. Only those
	// allowed (Allow) may answer.
	Backends []string
	// Interval is each client's pace (default 100 ms).
	Interval time.Duration
	// AttemptTimeout bounds one dial and one exchange (default 2 s).
	AttemptTimeout time.Duration
	// MaxAttempts are the attempts of one request, the first included
	// (default 4).
	MaxAttempts int
	// MaxRequests bounds each client's loop (default 600: a minute at
	// 100 ms).
	MaxRequests int
	// CheckSource, when set, checks the source address the backend saw
	// (the reply's second field) against the connection's local address.
	CheckSource func(backend string, local, seen netip.AddrPort) error
}

// Fleet is a set of clients; make it with New, add clients with
// Establish, end it with Stop.
type Fleet struct {
	cfg     Config
	allowed []atomic.Bool // by backend index
	stop    chan struct{}
	once    sync.Once
	wg      sync.WaitGroup

	// clients only grows, under mu; the clients' fields are atomics.
	mu      sync.Mutex
	clients []*client
	// failed: requests not answered after MaxAttempts; bad: wrong
	// answers; examples: the first maxExamples of both; errs: errors
	// seen, by kind.
	failed, bad int
	examples    []string
	errs        map[string]int
}

// maxExamples bounds the failures a Snapshot quotes.
const maxExamples = 20

// client is one client's record.
type client struct {
	// backend is 1 + the index of the backend that answered the last
	// request on the current connection; 0 while the client has no
	// answered connection. Kept when the client stops.
	backend atomic.Int32
	// answered: requests answered; lost: connections that failed under
	// an exchange and were replaced; dialErrs: reconnects that failed.
	answered, lost, dialErrs atomic.Int64
	done                     atomic.Bool
}

// New checks cfg and fills in its defaults.
func New(cfg Config) (*Fleet, error) {
	if cfg.Addr == "" || len(cfg.Backends) == 0 {
		return nil, fmt.Errorf("connfleet %q: no address or no backends", cfg.Name)
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 100 * time.Millisecond
	}
	if cfg.AttemptTimeout <= 0 {
		cfg.AttemptTimeout = 2 * time.Second
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 4
	}
	if cfg.MaxRequests <= 0 {
		cfg.MaxRequests = 600
	}
	cfg.Backends = slices.Clone(cfg.Backends)
	return &Fleet{cfg: cfg, allowed: make([]atomic.Bool, len(cfg.Backends)), stop: make(chan struct{}), errs: map[string]int{}}, nil
}

// Name is the fleet's name.
func (f *Fleet) Name() string { return f.cfg.Name }

// Allow lets backends answer (call it before the Service has them). An
// allowed backend stays allowed: a reply identical to the connection's
// previous one is not checked again.
func (f *Fleet) Allow(ids ...string) error {
	for _, id := range ids {
		i := slices.Index(f.cfg.Backends, id)
		if i < 0 {
			return fmt.Errorf("connfleet %s: allow %q: not in the fleet's backends %v", f.cfg.Name, id, f.cfg.Backends)
		}
		f.allowed[i].Store(true)
	}
	return nil
}

// conn is one client's connection and the buffers it reuses.
type conn struct {
	c     net.Conn
	local netip.AddrPort
	// last is the previous reply on c (checked), with its backend index.
	last    []byte
	lastIdx int
	msg     []byte
	buf     [256]byte
}

func (f *Fleet) dial(cn *conn) error {
	c, err := netnstest.Dial(f.cfg.NS, "tcp", f.cfg.Addr, f.cfg.AttemptTimeout)
	if err != nil {
		return err
	}
	cn.c = c
	cn.last = cn.last[:0]
	cn.local = netip.AddrPort{}
	if a, ok := c.LocalAddr().(*net.TCPAddr); ok {
		// As the echo server prints it: IPv4 without the ::ffff: form.
		ap := a.AddrPort()
		cn.local = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return nil
}

func (cn *conn) close() {
	if cn.c != nil {
		cn.c.Close()
		cn.c = nil
	}
}

// errBad marks a wrong answer (not worth a retry).
var errBad = errors.New("bad answer")

// exchange sends request seq of client idx on cn and checks the reply:
// one line "ID SOURCE" from an allowed backend, with the expected source.
// It returns the backend's index.
func (f *Fleet) exchange(cn *conn, idx, seq int) (int, error) {
	if err := cn.c.SetDeadline(time.Now().Add(f.cfg.AttemptTimeout)); err != nil {
		return 0, err
	}
	cn.msg = append(cn.msg[:0], f.cfg.Name...)
	cn.msg = append(cn.msg, '-')
	cn.msg = strconv.AppendInt(cn.msg, int64(idx), 10)
	cn.msg = append(cn.msg, '-')
	cn.msg = strconv.AppendInt(cn.msg, int64(seq), 10)
	cn.msg = append(cn.msg, '\n')
	if _, err := cn.c.Write(cn.msg); err != nil {
		return 0, err
	}
	n := 0
	for {
		m, err := cn.c.Read(cn.buf[n:])
		n += m
		if i := bytes.IndexByte(cn.buf[:n], '\n'); i >= 0 {
			if i != n-1 {
				return 0, fmt.Errorf("%w: %q: more than one reply line", errBad, cn.buf[:n])
			}
			return f.check(cn, cn.buf[:i])
		}
		if n == len(cn.buf) {
			return 0, fmt.Errorf("%w: reply longer than %d bytes: %q", errBad, len(cn.buf), cn.buf[:n])
		}
		if err != nil {
			if n > 0 && errors.Is(err, io.EOF) {
				err = fmt.Errorf("%w (after a partial reply %q)", err, cn.buf[:n])
			}
			return 0, err
		}
	}
}

// check checks a reply (without its newline).
func (f *Fleet) check(cn *conn, reply []byte) (int, error) {
	if len(cn.last) > 0 && bytes.Equal(reply, cn.last) {
		return cn.lastIdx, nil
	}
	id, remote, ok := bytes.Cut(reply, []byte{' '})
	if !ok {
		return 0, fmt.Errorf("%w: malformed reply %q", errBad, reply)
	}
	idx := -1
	for i, be := range f.cfg.Backends {
		if string(id) == be {
			idx = i
			break
		}
	}
	if idx < 0 || !f.allowed[idx].Load() {
		return 0, fmt.Errorf("%w: reply %q from a backend the Service does not have", errBad, reply)
	}
	if f.cfg.CheckSource != nil {
		seen, err := netip.ParseAddrPort(string(remote))
		if err == nil {
			err = f.cfg.CheckSource(string(id), cn.local, seen)
		}
		if err != nil {
			return 0, fmt.Errorf("%w: reply %q: %v", errBad, reply, err)
		}
	}
	cn.last = append(cn.last[:0], reply...)
	cn.lastIdx = idx
	return idx, nil
}

// Establish opens n more connections spread exactly evenly over the
// backends over (a connection landing on a backend ahead of the others
// is closed and dialed again, at most 20 dials a connection) and starts a
// client on each. A dial or first exchange that fails is tried again,
// at most MaxAttempts times in a row, and tallied in Snapshot.Errs as
// "establish: ...".
func (f *Fleet) Establish(n int, over []string) error {
	idxs := make([]int, len(over))
	for i, id := range over {
		if idxs[i] = slices.Index(f.cfg.Backends, id); idxs[i] < 0 {
			return fmt.Errorf("connfleet %s: establish over %q: not in the fleet's backends", f.cfg.Name, id)
		}
	}
	counts := make([]int, len(f.cfg.Backends))
	f.mu.Lock()
	start := len(f.clients)
	f.mu.Unlock()
	for made, dials, failures := 0, 0, 0; made < n; dials++ {
		if dials == 20*n {
			return fmt.Errorf("connfleet %s: %d connections after %d dials (%v), want %d spread evenly over %v", f.cfg.Name, made, dials, counts, n, over)
		}
		cn := &conn{}
		idx := -1
		err := f.dial(cn)
		if err == nil {
			if idx, err = f.exchange(cn, start+made, -1); err != nil {
				cn.close()
				err = fmt.Errorf("first exchange: %w", err)
			}
		}
		if err != nil {
			if failures++; failures == f.cfg.MaxAttempts || errors.Is(err, errBad) {
				return fmt.Errorf("connfleet %s: %d connections established, then %d attempts in a row failed, last: %w", f.cfg.Name, made, failures, err)
			}
			f.noteErr("establish: " + ErrKind(err))
			continue
		}
		failures = 0
		least := math.MaxInt
		for _, i := range idxs {
			least = min(least, counts[i])
		}
		if !slices.Contains(idxs, idx) || counts[idx] > least {
			cn.close()
			continue
		}
		counts[idx]++
		made++
		c := &client{}
		c.backend.Store(int32(idx + 1))
		f.mu.Lock()
		f.clients = append(f.clients, c)
		id := len(f.clients) - 1
		f.mu.Unlock()
		f.wg.Add(1)
		go f.run(id, c, cn)
	}
	return nil
}

// ErrKind names an error for the tally: ECONNRESET, EOF, timeout, ...
func ErrKind(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNRESET):
		return "ECONNRESET"
	case errors.Is(err, syscall.ECONNABORTED):
		return "ECONNABORTED"
	case errors.Is(err, syscall.EPIPE):
		return "EPIPE"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "ECONNREFUSED"
	case errors.Is(err, io.EOF):
		return "EOF"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return err.Error()
}

func (f *Fleet) noteErr(kind string) {
	f.mu.Lock()
	f.errs[kind]++
	f.mu.Unlock()
}

func (f *Fleet) example(format string, args ...any) {
	if len(f.examples) < maxExamples {
		f.examples = append(f.examples, fmt.Sprintf(format, args...))
	}
}

// run is one client's loop on its first connection cn.
func (f *Fleet) run(idx int, c *client, cn *conn) {
	defer f.wg.Done()
	defer c.done.Store(true)
	defer cn.close()
	// The clients' requests spread over the interval.
	select {
	case <-f.stop:
		return
	case <-time.After(rand.N(f.cfg.Interval)):
	}
	tick := time.NewTicker(f.cfg.Interval)
	defer tick.Stop()
	for seq := range f.cfg.MaxRequests {
		answered := false
		var lastErr error
		for attempt := 0; attempt < f.cfg.MaxAttempts && !answered; attempt++ {
			if cn.c == nil {
				if err := f.dial(cn); err != nil {
					lastErr = err
					c.dialErrs.Add(1)
					f.noteErr("dial: " + ErrKind(err))
					continue
				}
			}
			be, err := f.exchange(cn, idx, seq)
			switch {
			case errors.Is(err, errBad):
				f.mu.Lock()
				f.bad++
				f.example("%s client %d request %d: %v", f.cfg.Name, idx, seq, err)
				f.mu.Unlock()
				return
			case err != nil:
				lastErr = err
				c.lost.Add(1)
				c.backend.Store(0)
				f.noteErr(ErrKind(err))
				cn.close()
			default:
				c.answered.Add(1)
				c.backend.Store(int32(be + 1))
				answered = true
			}
		}
		if !answered {
			f.mu.Lock()
			f.failed++
			f.example("%s client %d request %d: %d attempts, last: %v", f.cfg.Name, idx, seq, f.cfg.MaxAttempts, lastErr)
			f.mu.Unlock()
		}
		select {
		case <-f.stop:
			return
		case <-tick.C:
		}
	}
}

// Stop stops the clients and waits for them (bounded by one attempt
// each); idempotent. Their connections close; Snapshot keeps showing
// each client on the backend it last had.
func (f *Fleet) Stop() {
	f.once.Do(func() { close(f.stop) })
	f.wg.Wait()
}

// Snapshot is the fleet's state at one moment.
type Snapshot struct {
	// Counts are the clients per backend, in Config.Backends order.
	Counts   []int
	backends []string
	// Unconnected are clients between a failed exchange and the next
	// answer; Done those whose loop ended.
	Clients, Unconnected, Done int
	Answered, Lost, DialErrs   int64
	// Failed: requests not answered after MaxAttempts; Bad: wrong
	// answers; Examples quotes the first of both.
	Failed, Bad int
	Examples    []string
	// Errs counts the errors seen, by kind ("dial: " for reconnects).
	Errs map[string]int
}

// Snapshot reads the fleet's state.
func (f *Fleet) Snapshot() Snapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := Snapshot{Counts: make([]int, len(f.cfg.Backends)), backends: f.cfg.Backends, Clients: len(f.clients),
		Failed: f.failed, Bad: f.bad, Examples: slices.Clone(f.examples), Errs: make(map[string]int, len(f.errs))}
	for k, v := range f.errs {
		s.Errs[k] = v
	}
	for _, c := range f.clients {
		if b := c.backend.Load(); b == 0 {
			s.Unconnected++
		} else {
			s.Counts[b-1]++
		}
		if c.done.Load() {
			s.Done++
		}
		s.Answered += c.answered.Load()
		s.Lost += c.lost.Load()
		s.DialErrs += c.dialErrs.Load()
	}
	return s
}

// Of are the clients on each of ids, in their order (0 for an unknown
// one).
func (s Snapshot) Of(ids ...string) []int {
	out := make([]int, len(ids))
	for i, id := range ids {
		if j := slices.Index(s.backends, id); j >= 0 {
			out[i] = s.Counts[j]
		}
	}
	return out
}

// PerBackend are the counts by backend ID, for messages.
func (s Snapshot) PerBackend() map[string]int {
	m := make(map[string]int, len(s.backends))
	for i, id := range s.backends {
		m[id] = s.Counts[i]
	}
	return m
}

func (s Snapshot) String() string {
	return fmt.Sprintf("per backend %v, %d reconnecting, %d stopped; %d answered, %d connections lost, %d failed dials, %d failed requests, %d bad answers, errors %v",
		s.PerBackend(), s.Unconnected, s.Done, s.Answered, s.Lost, s.DialErrs, s.Failed, s.Bad, s.Errs)
}
