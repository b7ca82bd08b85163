package nftables

import (
	"errors"
	"fmt"
	"sync"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Conn is the part of *nftables.Conn the Proxier uses: reads, and writes
// that are queued and sent as one transaction by Flush. Use NewConn's
// *NetlinkConn: a plain *nftables.Conn also implements Conn, but with the
// default socket buffers it fails (ENOBUFS) on transactions of more than a
// few hundred messages, and it cannot drop a half-queued batch. Tests wrap
// a Conn to count messages.
type Conn interface {
	ListTablesOfFamily(family nftables.TableFamily) ([]*nftables.Table, error)
	ListChainsOfTableFamily(family nftables.TableFamily) ([]*nftables.Chain, error)
	GetRules(t *nftables.Table, c *nftables.Chain) ([]*nftables.Rule, error)
	GetSets(t *nftables.Table) ([]*nftables.Set, error)
	GetSetElements(s *nftables.Set) ([]nftables.SetElement, error)

	AddTable(t *nftables.Table) *nftables.Table
	DelTable(t *nftables.Table)
	AddChain(c *nftables.Chain) *nftables.Chain
	DelChain(c *nftables.Chain)
	FlushChain(c *nftables.Chain)
	AddRule(r *nftables.Rule) *nftables.Rule
	AddSet(s *nftables.Set, vals []nftables.SetElement) error
	DelSet(s *nftables.Set)
	SetAddElements(s *nftables.Set, vals []nftables.SetElement) error
	SetDeleteElements(s *nftables.Set, vals []nftables.SetElement) error
	Flush() error
}

// socketBuffer is the send and receive buffer of the netlink socket.
//
// The library asks the kernel to acknowledge every message of a batch, and
// the kernel queues all acknowledgements while it processes the batch,
// before we read any: a batch of a few hundred messages already overflows
// the default receive buffer (ENOBUFS, and the transaction may well have
// been committed anyway). A cold load of 10k Services is ~40k messages. The send side
// must also hold the whole batch (EMSGSIZE otherwise). The value is a
// limit, not an allocation; SO_*BUFFORCE needs CAP_NET_ADMIN, which
// programming nftables needs anyway.
const socketBuffer = 256 << 20

// NetlinkConn is a Conn on one lasting netlink socket in a network
// namespace. After any failed operation it drops the socket and opens a
// new one on the next call, so unread replies of a failed batch cannot be
// mistaken for the answers to the next request.
type NetlinkConn struct {
	nsFd int

	mu   sync.Mutex
	conn *nftables.Conn
	// queued counts writes since the last Flush; queueErr is the first
	// error among them. A batch with a failed write, or one whose socket
	// was reset before Flush, is never sent in part.
	queued   int
	queueErr error
}

var _ Conn = (*NetlinkConn)(nil)

// NewConn opens a connection to nftables in the network namespace nsFd (a
// file descriptor of /proc/<pid>/ns/net or /run/netns/<name>); 0 means the
// caller's namespace. The descriptor must stay open while the connection
// is used.
func NewConn(nsFd int) (*NetlinkConn, error) {
	c := &NetlinkConn{nsFd: nsFd}
	if _, err := c.get(); err != nil {
		return nil, err
	}
	return c, nil
}

// Close closes the socket.
func (c *NetlinkConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return nil
	}
	err := c.conn.CloseLasting()
	c.conn = nil
	return err
}

func (c *NetlinkConn) get() (*nftables.Conn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil {
		return c.conn, nil
	}
	opts := []nftables.ConnOption{nftables.AsLasting(), nftables.WithSockOptions(setSocketBuffers)}
	if c.nsFd != 0 {
		opts = append(opts, nftables.WithNetNSFd(c.nsFd))
	}
	conn, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("open nftables netlink socket: %w", err)
	}
	c.conn = conn
	return conn, nil
}

// reset drops the socket after a failure, and with it the queued writes.
func (c *NetlinkConn) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.queued > 0 && c.queueErr == nil {
		c.queueErr = errors.New("netlink socket reset while a batch was being queued")
	}
	if c.conn != nil {
		_ = c.conn.CloseLasting()
		c.conn = nil
	}
}

func setSocketBuffers(nl *netlink.Conn) error {
	rc, err := nl.SyscallConn()
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		for _, opt := range []struct{ force, plain int }{{unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}, {unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}} {
			if e := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt.force, socketBuffer); e != nil {
				// Without CAP_NET_ADMIN: as much as net.core.[rw]mem_max allows.
				if e := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt.plain, socketBuffer); e != nil {
					serr = fmt.Errorf("set netlink socket buffer: %w", e)
				}
			}
		}
	})
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	return serr
}

// do runs a read and resets the socket when it fails.
func do[T any](c *NetlinkConn, f func(*nftables.Conn) (T, error)) (T, error) {
	conn, err := c.get()
	if err != nil {
		var zero T
		return zero, err
	}
	v, err := f(conn)
	if err != nil {
		c.reset()
	}
	return v, err
}

// write queues a message; it only fails on marshalling or opening errors,
// which are also kept for Flush.
func (c *NetlinkConn) write(f func(*nftables.Conn) error) error {
	conn, err := c.get()
	if err == nil {
		err = f(conn)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.queued++
	if err != nil && c.queueErr == nil {
		c.queueErr = err
	}
	return err
}

func (c *NetlinkConn) queue(f func(*nftables.Conn)) {
	_ = c.write(func(n *nftables.Conn) error { f(n); return nil })
}

func (c *NetlinkConn) ListTablesOfFamily(fam nftables.TableFamily) ([]*nftables.Table, error) {
	return do(c, func(n *nftables.Conn) ([]*nftables.Table, error) { return n.ListTablesOfFamily(fam) })
}

func (c *NetlinkConn) ListChainsOfTableFamily(fam nftables.TableFamily) ([]*nftables.Chain, error) {
	return do(c, func(n *nftables.Conn) ([]*nftables.Chain, error) { return n.ListChainsOfTableFamily(fam) })
}

func (c *NetlinkConn) GetRules(t *nftables.Table, ch *nftables.Chain) ([]*nftables.Rule, error) {
	return do(c, func(n *nftables.Conn) ([]*nftables.Rule, error) { return n.GetRules(t, ch) })
}

func (c *NetlinkConn) GetSets(t *nftables.Table) ([]*nftables.Set, error) {
	return do(c, func(n *nftables.Conn) ([]*nftables.Set, error) { return n.GetSets(t) })
}

func (c *NetlinkConn) GetSetElements(s *nftables.Set) ([]nftables.SetElement, error) {
	return do(c, func(n *nftables.Conn) ([]nftables.SetElement, error) { return n.GetSetElements(s) })
}

func (c *NetlinkConn) AddTable(t *nftables.Table) *nftables.Table {
	c.queue(func(n *nftables.Conn) { n.AddTable(t) })
	return t
}

func (c *NetlinkConn) DelTable(t *nftables.Table) { c.queue(func(n *nftables.Conn) { n.DelTable(t) }) }

func (c *NetlinkConn) AddChain(ch *nftables.Chain) *nftables.Chain {
	c.queue(func(n *nftables.Conn) { n.AddChain(ch) })
	return ch
}

func (c *NetlinkConn) DelChain(ch *nftables.Chain) {
	c.queue(func(n *nftables.Conn) { n.DelChain(ch) })
}

func (c *NetlinkConn) FlushChain(ch *nftables.Chain) {
	c.queue(func(n *nftables.Conn) { n.FlushChain(ch) })
}

func (c *NetlinkConn) AddRule(r *nftables.Rule) *nftables.Rule {
	c.queue(func(n *nftables.Conn) { n.AddRule(r) })
	return r
}

func (c *NetlinkConn) AddSet(s *nftables.Set, vals []nftables.SetElement) error {
	return c.write(func(n *nftables.Conn) error { return n.AddSet(s, vals) })
}

func (c *NetlinkConn) DelSet(s *nftables.Set) { c.queue(func(n *nftables.Conn) { n.DelSet(s) }) }

func (c *NetlinkConn) SetAddElements(s *nftables.Set, vals []nftables.SetElement) error {
	return c.write(func(n *nftables.Conn) error { return n.SetAddElements(s, vals) })
}

func (c *NetlinkConn) SetDeleteElements(s *nftables.Set, vals []nftables.SetElement) error {
	return c.write(func(n *nftables.Conn) error { return n.SetDeleteElements(s, vals) })
}

// Discard drops the queued messages.
func (c *NetlinkConn) Discard() {
	c.mu.Lock()
	c.queued, c.queueErr = 0, nil
	c.mu.Unlock()
	c.reset()
}

// Flush sends the queued messages as one transaction: the kernel applies
// all of them or none.
func (c *NetlinkConn) Flush() error {
	c.mu.Lock()
	queueErr := c.queueErr
	c.queued, c.queueErr = 0, nil
	c.mu.Unlock()
	if queueErr != nil {
		c.reset() // drops the queued messages
		return fmt.Errorf("batch not sent: %w", queueErr)
	}
	conn, err := c.get()
	if err != nil {
		return err
	}
	if err := conn.Flush(); err != nil {
		c.reset()
		return err
	}
	return nil
}
