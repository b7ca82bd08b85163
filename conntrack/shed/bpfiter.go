package shed

import (
	"context"
	"errors"
	"fmt"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/switchyard/switchyard/ebpf"
)

// BPFIter is the Closer over ebpf.SockDestroyer: for each namespace, on a
// thread switched into it, one walk of its TCP sockets by an iter/tcp
// program that destroys those whose cookie is queued (bpf_sock_destroy,
// Linux 6.5+). Targets must carry their Cookie; addresses are not
// consulted. Compared with SockDiag: one pass per namespace instead of two
// netlink round trips per socket, but it walks every TCP socket of the
// namespace, and needs a newer kernel.
type BPFIter struct {
	index *NetnsIndex
	d     *ebpf.SockDestroyer
}

var _ Closer = (*BPFIter)(nil)

// NewBPFIter returns a BPFIter; d stays the caller's to Close. Where the
// kernel lacks bpf_sock_destroy, ebpf.NewSockDestroyer fails with
// ebpf.ErrSockDestroyUnsupported: use SockDiag there.
func NewBPFIter(index *NetnsIndex, d *ebpf.SockDestroyer) (*BPFIter, error) {
	if index == nil || d == nil {
		return nil, errors.New("shed: NewBPFIter needs a NetnsIndex and a SockDestroyer")
	}
	return &BPFIter{index: index, d: d}, nil
}

// Close implements Closer.
func (b *BPFIter) Close(ctx context.Context, targets []Target) (Result, error) {
	return closeByNetns(ctx, b.index, targets, true, func(h netns.NsHandle, nc uint64, idx []int, norm []Target, res *Result, errs *[]error) {
		cookies := make([]uint64, len(idx))
		for n, i := range idx {
			cookies[n] = norm[i].Cookie
		}
		var outcomes []error
		err := inNetns(h, func() error {
			var err error
			outcomes, err = b.d.DestroyTCP(cookies)
			return err
		})
		if err != nil {
			failAll(res, errs, idx, fmt.Errorf("shed: %d targets in netns %d: %w", len(idx), nc, err))
			return
		}
		for n, i := range idx {
			switch o := outcomes[n]; {
			case o == nil:
				res.set(i, Closed)
			case errors.Is(o, unix.ENOENT):
				res.set(i, NotFound)
			case errors.Is(o, unix.EOPNOTSUPP):
				res.set(i, Failed)
				*errs = append(*errs, fmt.Errorf("shed: close %s: %w: %w", norm[i], ErrNotSupported, o))
			default:
				res.set(i, Failed)
				*errs = append(*errs, fmt.Errorf("shed: close %s: bpf_sock_destroy: %w", norm[i], o))
			}
		}
	})
}
