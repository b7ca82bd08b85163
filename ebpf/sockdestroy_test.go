package ebpf

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/switchyard/switchyard/test/netnstest"
)

func soCookie(t *testing.T, c any) uint64 {
	t.Helper()
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var cookie uint64
	var serr error
	if err := rc.Control(func(fd uintptr) {
		cookie, serr = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_COOKIE)
	}); err != nil || serr != nil {
		t.Fatalf("SO_COOKIE: %v %v", err, serr)
	}
	return cookie
}

// The iterator loads (verifier, kfunc) and destroys exactly the queued
// sockets of the namespace it is opened in: the destroyed end reads
// ECONNABORTED, its peer ECONNRESET, the other connection keeps echoing.
// Listeners, cookies of another namespace and unknown cookies are ENOENT;
// batches larger than the map are split.
func TestSockDestroyer(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root: network namespaces and BPF")
	}
	d, err := NewSockDestroyer()
	if errors.Is(err, ErrSockDestroyUnsupported) {
		t.Skipf("no bpf_sock_destroy here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()

	cli, srv := netnstest.New(t, "sy-sdc"), netnstest.New(t, "sy-sds")
	netnstest.Veth(t, cli, srv, "c0", "s0", netip.MustParsePrefix("10.0.0.1/24"), netip.MustParsePrefix("10.0.0.2/24"))
	echo := netnstest.StartEchoServer(t, srv, "tcp", "10.0.0.2:0", "echo")
	var ln net.Listener
	if err := srv.Do(func() (err error) { ln, err = net.Listen("tcp", "10.0.0.2:0"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	kill, err := netnstest.Dial(cli, "tcp", ln.Addr().String(), 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer kill.Close()
	if err := ln.(*net.TCPListener).SetDeadline(time.Now().Add(3 * time.Second)); err != nil {
		t.Fatal(err)
	}
	peer, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	keep, err := netnstest.Dial(cli, "tcp", echo.Addr, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer keep.Close()
	if r, err := netnstest.Exchange(keep, "before", 3*time.Second); err != nil || r != "echo "+keep.LocalAddr().String() {
		t.Fatalf("echo before: %q, %v", r, err)
	}

	cookies := []uint64{soCookie(t, kill), soCookie(t, peer), soCookie(t, ln), 1}
	var got []error
	if err := cli.Do(func() (err error) { got, err = d.DestroyTCP(cookies); return err }); err != nil {
		t.Fatal(err)
	}
	// kill is destroyed; peer and the listener live in srv; cookie 1 is
	// no TCP socket of ours.
	want := []error{nil, unix.ENOENT, unix.ENOENT, unix.ENOENT}
	for i := range want {
		if !errors.Is(got[i], want[i]) || (want[i] == nil) != (got[i] == nil) {
			t.Errorf("cookie %d: %v, want %v", cookies[i], got[i], want[i])
		}
	}
	_ = kill.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := kill.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNABORTED) {
		t.Errorf("destroyed socket reads %v, want ECONNABORTED", err)
	}
	_ = peer.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := peer.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("its peer reads %v, want ECONNRESET", err)
	}
	if r, err := netnstest.Exchange(keep, "after", 3*time.Second); err != nil || r != "echo "+keep.LocalAddr().String() {
		t.Errorf("echo after: %q, %v", r, err)
	}

	// More cookies than the map holds: split into batches, and the
	// listener (queued in its own namespace) is still never destroyed.
	many := make([]uint64, sockDestroyBatch+1)
	for i := range many {
		many[i] = uint64(1<<62 + i)
	}
	many[len(many)-1] = soCookie(t, ln)
	if err := srv.Do(func() (err error) { got, err = d.DestroyTCP(many); return err }); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(many) {
		t.Fatalf("%d outcomes for %d cookies", len(got), len(many))
	}
	for i, e := range got {
		if !errors.Is(e, unix.ENOENT) {
			t.Fatalf("cookie %d: %v, want ENOENT", many[i], e)
		}
	}
	// A destroyed listener would refuse the connect (RST).
	c, err := netnstest.Dial(cli, "tcp", ln.Addr().String(), 3*time.Second)
	if err != nil {
		t.Fatalf("listener gone after being queued: %v", err)
	}
	c.Close()
}
