package ebpf

import (
	"errors"
	"fmt"
	"io"
	"sync"

	cebpf "github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// ErrSockDestroyUnsupported: the kernel has no bpf_sock_destroy kfunc
// (before 6.5, e.g. Debian 12's 6.1) or no TCP iterator.
var ErrSockDestroyUnsupported = errors.New("bpf_sock_destroy unsupported here")

// sockDestroyBatch is destroy_cookies' size in sockdestroy.c.
const sockDestroyBatch = 4096

// destroyPending is PENDING in sockdestroy.c.
const destroyPending = 1

// SockDestroyer aborts TCP sockets by cookie with an iter/tcp program
// calling bpf_sock_destroy (sockdestroy.c): the socket's owner gets
// ECONNABORTED, its peer an RST, as with sock_diag's SOCK_DESTROY. Nothing
// is attached to any hook and nothing is pinned: the iterator runs only
// when DestroyTCP reads it. Safe for concurrent use (calls take turns).
type SockDestroyer struct {
	mu   sync.Mutex
	objs sockdestroyObjects
	iter *link.Iter
}

// NewSockDestroyer loads the program (the verifier and the kfunc lookup
// run here) and creates the iterator link.
func NewSockDestroyer() (*SockDestroyer, error) {
	if err := removeMemlock(); err != nil {
		return nil, err
	}
	d := &SockDestroyer{}
	if err := loadSockdestroyObjects(&d.objs, nil); err != nil {
		if errors.Is(err, cebpf.ErrNotSupported) {
			return nil, fmt.Errorf("load socket-destroy iterator: %w: %w", ErrSockDestroyUnsupported, err)
		}
		return nil, fmt.Errorf("load socket-destroy iterator: %w", err)
	}
	it, err := link.AttachIter(link.IterOptions{Program: d.objs.DestroyTcp})
	if err != nil {
		d.objs.Close()
		if errors.Is(err, cebpf.ErrNotSupported) {
			return nil, fmt.Errorf("attach socket-destroy iterator: %w: %w", ErrSockDestroyUnsupported, err)
		}
		return nil, fmt.Errorf("attach socket-destroy iterator: %w", err)
	}
	d.iter = it
	return d, nil
}

// Close releases the link, the program and the map.
func (d *SockDestroyer) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return errors.Join(d.iter.Close(), d.objs.Close())
}

// DestroyTCP aborts the TCP sockets with these cookies in the network
// namespace of the calling thread: the kernel's TCP iterator walks the
// namespace of the thread that opens it, so the caller locks its
// goroutine to an OS thread switched into the target namespace.
//
// It returns one entry per cookie: nil when destroyed, unix.ENOENT when
// no live connection had that cookie here (closed already, in TIME_WAIT, a
// listener, another namespace), or the kernel's errno. The error is for
// failures that leave the outcomes unknown.
func (d *SockDestroyer) DestroyTCP(cookies []uint64) ([]error, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]error, 0, len(cookies))
	for len(cookies) > 0 {
		n := min(len(cookies), sockDestroyBatch)
		res, err := d.destroyBatch(cookies[:n])
		if err != nil {
			return nil, err
		}
		out = append(out, res...)
		cookies = cookies[n:]
	}
	return out, nil
}

func (d *SockDestroyer) destroyBatch(cookies []uint64) (_ []error, err error) {
	m := d.objs.DestroyCookies
	// Leave the map empty whatever happens, so the next batch (or a
	// later call) starts clean.
	defer func() {
		var k uint64
		var keys []uint64
		it := m.Iterate()
		for v := int32(0); it.Next(&k, &v); {
			keys = append(keys, k)
		}
		for _, k := range keys {
			if derr := m.Delete(k); derr != nil && !errors.Is(derr, cebpf.ErrKeyNotExist) {
				err = errors.Join(err, fmt.Errorf("clear socket-destroy cookie: %w", derr))
			}
		}
	}()
	for _, c := range cookies {
		if err := m.Put(c, int32(destroyPending)); err != nil {
			return nil, fmt.Errorf("queue socket cookie %d: %w", c, err)
		}
	}
	r, err := d.iter.Open()
	if err != nil {
		return nil, fmt.Errorf("open socket-destroy iterator: %w", err)
	}
	// Reading runs the program over every TCP socket; it writes nothing,
	// so the first read returns at the end of the walk.
	_, rerr := io.Copy(io.Discard, r)
	if err := errors.Join(rerr, r.Close()); err != nil {
		return nil, fmt.Errorf("run socket-destroy iterator: %w", err)
	}
	out := make([]error, len(cookies))
	for i, c := range cookies {
		var v int32
		if err := m.Lookup(c, &v); err != nil {
			return nil, fmt.Errorf("outcome of socket cookie %d: %w", c, err)
		}
		switch {
		case v == destroyPending:
			out[i] = unix.ENOENT // never met
		case v < 0:
			out[i] = unix.Errno(-v)
		}
	}
	return out, nil
}
