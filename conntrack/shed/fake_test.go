package shed

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"
)

func TestFake(t *testing.T) {
	f := NewFake()
	l4, r4 := netip.MustParseAddrPort("10.0.0.1:40000"), netip.MustParseAddrPort("10.0.0.2:80")
	l6, r6 := netip.MustParseAddrPort("[fd00::1]:40000"), netip.MustParseAddrPort("[fd00::2]:80")
	f.AddSocket(1, l4, r4)
	c6 := f.AddSocket(1, l6, r6)
	keep := f.AddSocket(2, l4, r4) // same addresses, another namespace
	f.AddNetns(3)

	targets := []Target{
		{NetnsCookie: 1, Local: l4, Remote: r4},                   // closed
		{NetnsCookie: 1, Local: l6, Remote: r6, Cookie: c6 + 100}, // other socket: not found
		{NetnsCookie: 3, Local: l4, Remote: r4},                   // no such socket
		{NetnsCookie: 4, Local: l4, Remote: r4},                   // no such namespace
		{NetnsCookie: 1, Local: l4, Remote: r6},                   // invalid
	}
	res, err := f.Close(context.Background(), targets)
	wantResult(t, res, Closed, NotFound, NotFound, Failed, Failed)
	if !errors.Is(err, ErrNetnsNotFound) || !errors.Is(err, ErrInvalidTarget) {
		t.Errorf("error %v, want ErrNetnsNotFound and ErrInvalidTarget", err)
	}
	if got := f.Closed(); !slices.Equal(got, targets[:1]) {
		t.Errorf("closed %v, want %v", got, targets[:1])
	}
	if got := f.Sockets(1); !slices.Equal(got, []FakeSocket{{l6, r6}}) {
		t.Errorf("namespace 1 left with %v", got)
	}
	if got := f.Sockets(2); len(got) != 1 {
		t.Errorf("namespace 2 left with %v, want its socket untouched", got)
	}

	// The right cookie closes; IPv4-mapped addresses name the IPv4 socket.
	mapped := Target{NetnsCookie: 2, Local: netip.AddrPortFrom(netip.AddrFrom16(l4.Addr().As16()), l4.Port()), Remote: r4, Cookie: keep}
	res, err = f.Close(context.Background(), []Target{{NetnsCookie: 1, Local: l6, Remote: r6, Cookie: c6}, mapped})
	if err != nil {
		t.Fatal(err)
	}
	wantResult(t, res, Closed, Closed)

	// Removed namespaces fail; a cancelled context fails everything.
	f.RemoveNetns(1)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	res, err = f.Close(ctx, []Target{{NetnsCookie: 2, Local: l4, Remote: r4}})
	wantResult(t, res, Failed)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("error %v, want context.Canceled", err)
	}
	res, err = f.Close(context.Background(), []Target{{NetnsCookie: 1, Local: l4, Remote: r4}})
	wantResult(t, res, Failed)
	if !errors.Is(err, ErrNetnsNotFound) {
		t.Errorf("error %v, want ErrNetnsNotFound", err)
	}

	f.Err = ErrNotSupported
	f.AddSocket(5, l4, r4)
	res, err = f.Close(context.Background(), []Target{{NetnsCookie: 5, Local: l4, Remote: r4}})
	wantResult(t, res, Failed)
	if !errors.Is(err, ErrNotSupported) || len(f.Sockets(5)) != 1 {
		t.Errorf("with Err set: %v, sockets %v; want the error and the socket left", err, f.Sockets(5))
	}
	if n := len(f.Calls()); n != 5 {
		t.Errorf("%d calls recorded, want 5", n)
	}
}
