package shed

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"github.com/switchyard/switchyard/ebpf"
)

func newBPFIter(t *testing.T) (*BPFIter, *NetnsIndex) {
	t.Helper()
	d, err := ebpf.NewSockDestroyer()
	if errors.Is(err, ebpf.ErrSockDestroyUnsupported) {
		t.Skipf("kernel without bpf_sock_destroy (6.5+): %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("close socket destroyer: %v", err)
		}
	})
	index := NewNetnsIndex(NetnsIndexConfig{})
	t.Cleanup(func() { index.Close() })
	b, err := NewBPFIter(index, d)
	if err != nil {
		t.Fatal(err)
	}
	return b, index
}

func withCookie(t *testing.T, tgt Target, p pair, server bool) Target {
	t.Helper()
	if server {
		tgt.Cookie = socketCookie(t, p.server)
	} else {
		tgt.Cookie = socketCookie(t, p.client)
	}
	return tgt
}

// The same end-to-end checks as SockDiag's, by socket cookie: both ends,
// both families; a cookie that lives in another namespace, an unknown
// cookie and a listener's cookie are NotFound; a gone namespace and a
// target without a cookie fail alone.
func TestBPFIterCloses(t *testing.T) {
	w := newWorld(t)
	b, index := newBPFIter(t)
	gone := goneNetnsCookie(t, index)

	var v4, v6 []pair
	for _, n := range []string{"a", "b", "c"} {
		v4 = append(v4, w.connect(t, w.ln4, "v4-"+n))
		v6 = append(v6, w.connect(t, w.ln6, "v6-"+n))
	}
	// The server's cookie, but looked for in the client's namespace.
	wrongNetns := withCookie(t, v4[2].clientTarget(w), v4[2], true)
	unknown := v6[2].clientTarget(w)
	unknown.Cookie = 1 // the first cookie the kernel handed out: long gone, or not TCP
	listener := Target{NetnsCookie: w.srvCookie, Local: addrPort(w.ln4.Addr()), Remote: netip.MustParseAddrPort("10.0.0.1:1"), Cookie: socketCookie(t, w.ln4)}
	inGone := withCookie(t, v6[2].clientTarget(w), v6[2], false)
	inGone.NetnsCookie = gone
	noCookie := v4[2].clientTarget(w)

	targets := []Target{
		withCookie(t, v4[0].clientTarget(w), v4[0], false),
		withCookie(t, v6[0].serverTarget(w), v6[0], true),
		withCookie(t, v6[1].clientTarget(w), v6[1], false),
		wrongNetns, unknown, listener, inGone, noCookie,
	}
	res, err := b.Close(context.Background(), targets)
	wantResult(t, res, Closed, Closed, Closed, NotFound, NotFound, NotFound, Failed, Failed)
	if !errors.Is(err, ErrNetnsNotFound) || !errors.Is(err, ErrInvalidTarget) {
		t.Errorf("error %v, want ErrNetnsNotFound and ErrInvalidTarget", err)
	}
	wantAborted(t, "v4 client", v4[0].client)
	wantReset(t, "v4 server", v4[0].server)
	wantAborted(t, "v6 server", v6[0].server)
	wantReset(t, "v6 client", v6[0].client)
	wantAborted(t, "v6 client", v6[1].client)
	wantReset(t, "v6 server", v6[1].server)
	untouched(t, v4[1], v4[2], v6[2])
	untouched(t, w.connect(t, w.ln4, "v4-reconnect"))

	// Again: the sockets are gone, and the map was left empty (nothing
	// still queued closes a later socket).
	res, err = b.Close(context.Background(), targets[:3])
	if err != nil {
		t.Fatal(err)
	}
	wantResult(t, res, NotFound, NotFound, NotFound)
}
