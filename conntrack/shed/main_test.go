package shed

import (
	"os"
	"testing"

	"github.com/switchyard/switchyard/test/vm/guest"
)

// TestMain is m.Run on the host. It also lets the same tests run on the
// IPVS VM's Debian 6.1 kernel:
//
//	go run ./test/vm/cmd/vmtest -pkg ./conntrack/shed -agent ""
//
// There BPFIter skips (no bpf_sock_destroy before 6.5), and so do the
// SockDiag tests while the VM's initramfs lacks the inet_diag and tcp_diag
// modules; TestSockDiagWithoutTCPDiag then checks the missing handler is
// reported as ErrNotSupported.
func TestMain(m *testing.M) { os.Exit(guest.Main(m)) }
