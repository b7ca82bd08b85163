package hostport

import (
	"fmt"
	"sync"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Conn is the part of a github.com/google/nftables connection hostport
// uses: reads, and writes queued until Flush sends them as one transaction.
// *nftables.Conn implements it, and so does the nftables dataplane's
// *NetlinkConn; NewConn returns hostport's own. A Conn may also have a
// Discard() method that drops queued writes; it is called when building a
// batch fails halfway.
type Conn interface {
	ListTablesOfFamily(family nftables.TableFamily) ([]*nftables.Table, error)
	ListChainsOfTableFamily(family nftables.TableFamily) ([]*nftables.Chain, error)
	GetRules(t *nftables.Table, c *nftables.Chain) ([]*nftables.Rule, error)
	GetSets(t *nftables.Table) ([]*nftables.Set, error)
	GetSetElements(s *nftables.Set) ([]nftables.SetElement, error)

	AddTable(t *nftables.Table) *nftables.Table
	DelTable(t *nftables.Table)
	AddChain(c *nftables.Chain) *nftables.Chain
	FlushChain(c *nftables.Chain)
	AddRule(r *nftables.Rule) *nftables.Rule
	AddSet(s *nftables.Set, vals []nftables.SetElement) error
	SetAddElements(s *nftables.Set, vals []nftables.SetElement) error
	SetDeleteElements(s *nftables.Set, vals []nftables.SetElement) error
	Flush() error
}

var _ Conn = (*nftables.Conn)(nil)

// NetlinkConn is a Conn in one network namespace. Every request opens its
// own netlink socket (the library's non-lasting mode), so replies of a
// failed transaction can never be read as answers to the next one. After
// a failed Flush, or Discard, it starts over with a fresh library
// connection: the library keeps its first marshalling error forever.
type NetlinkConn struct {
	nsFd int

	mu   sync.Mutex
	conn *nftables.Conn
}

var _ Conn = (*NetlinkConn)(nil)

// NewConn returns a connection to nftables in the network namespace nsFd (a
// file descriptor of /proc/<pid>/ns/net or /run/netns/<name>); 0 means the
// caller's namespace. The descriptor must stay open while the connection is
// used: each request opens a socket in it.
func NewConn(nsFd int) (*NetlinkConn, error) {
	c := &NetlinkConn{nsFd: nsFd}
	if err := c.renew(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *NetlinkConn) renew() error {
	opts := []nftables.ConnOption{nftables.WithSockOptions(setSocketBuffers)}
	if c.nsFd != 0 {
		opts = append(opts, nftables.WithNetNSFd(c.nsFd))
	}
	conn, err := nftables.New(opts...)
	if err != nil {
		return fmt.Errorf("hostport: nftables connection: %w", err)
	}
	c.mu.Lock()
	c.conn = conn
	c.mu.Unlock()
	return nil
}

func (c *NetlinkConn) cur() *nftables.Conn {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conn
}

// socketBuffer is the netlink socket's send and receive buffer. The kernel
// queues one acknowledgement per message of a transaction before anything
// is read; the default receive buffer holds a few hundred. hostport's
// transactions are small, but a node with thousands of hostPorts should
// not fail with ENOBUFS. Needs CAP_NET_ADMIN, like nftables itself.
const socketBuffer = 8 << 20

func setSocketBuffers(nl *netlink.Conn) error {
	rc, err := nl.SyscallConn()
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		for _, opt := range []struct{ force, plain int }{{unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}, {unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}} {
			if e := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt.force, socketBuffer); e != nil {
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

func (c *NetlinkConn) ListTablesOfFamily(f nftables.TableFamily) ([]*nftables.Table, error) {
	return c.cur().ListTablesOfFamily(f)
}

func (c *NetlinkConn) ListChainsOfTableFamily(f nftables.TableFamily) ([]*nftables.Chain, error) {
	return c.cur().ListChainsOfTableFamily(f)
}

func (c *NetlinkConn) GetRules(t *nftables.Table, ch *nftables.Chain) ([]*nftables.Rule, error) {
	return c.cur().GetRules(t, ch)
}

func (c *NetlinkConn) GetSets(t *nftables.Table) ([]*nftables.Set, error) { return c.cur().GetSets(t) }

func (c *NetlinkConn) GetSetElements(s *nftables.Set) ([]nftables.SetElement, error) {
	return c.cur().GetSetElements(s)
}

func (c *NetlinkConn) AddTable(t *nftables.Table) *nftables.Table  { return c.cur().AddTable(t) }
func (c *NetlinkConn) DelTable(t *nftables.Table)                  { c.cur().DelTable(t) }
func (c *NetlinkConn) AddChain(ch *nftables.Chain) *nftables.Chain { return c.cur().AddChain(ch) }
func (c *NetlinkConn) FlushChain(ch *nftables.Chain)               { c.cur().FlushChain(ch) }
func (c *NetlinkConn) AddRule(r *nftables.Rule) *nftables.Rule     { return c.cur().AddRule(r) }

func (c *NetlinkConn) AddSet(s *nftables.Set, vals []nftables.SetElement) error {
	return c.cur().AddSet(s, vals)
}

func (c *NetlinkConn) SetAddElements(s *nftables.Set, vals []nftables.SetElement) error {
	return c.cur().SetAddElements(s, vals)
}

func (c *NetlinkConn) SetDeleteElements(s *nftables.Set, vals []nftables.SetElement) error {
	return c.cur().SetDeleteElements(s, vals)
}

// Flush sends the queued writes as one transaction: the kernel applies all
// of them or none.
func (c *NetlinkConn) Flush() error {
	if err := c.cur().Flush(); err != nil {
		if rerr := c.renew(); rerr != nil {
			return fmt.Errorf("%w (and %w)", err, rerr)
		}
		return err
	}
	return nil
}

// Discard drops the queued writes.
func (c *NetlinkConn) Discard() { _ = c.renew() }
