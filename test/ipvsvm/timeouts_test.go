package ipvsvm

import (
	"bufio"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/ipvs"
	"github.com/switchyard/switchyard/test/vm/guest"
)

// TestVMProxierTimeouts: IPVS timeouts from the configuration reach the
// kernel (read back over netlink, fields left zero keep the kernel's) and
// act on real connections: a UDP flow through a virtual server expires
// after the configured UDP timeout, not the kernel's 300 s.
func TestVMProxierTimeouts(t *testing.T) {
	guest.Required(t)
	h, err := ipvs.NewHandle("")
	if err != nil {
		t.Fatal(err)
	}
	before, err := h.Timeouts()
	if err != nil {
		h.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// The VM's kernel is shared by the tests after this one.
		if err := h.SetTimeouts(before); err != nil {
			t.Errorf("restore timeouts %+v: %v", before, err)
		}
		h.Close()
	})

	topo := newTopology(t, 1)
	topo.startEcho(t, "udp", 8080)
	want := ipvs.Timeouts{TCP: 1234 * time.Second, UDP: 7 * time.Second}
	n := newRealNode(t, ipvs.Config{Timeouts: want})
	n.sync(serviceState("dns", dataplane.UDP, 53, 0, "", topo.Backends...), fullSync)

	got, err := h.Timeouts()
	if err != nil {
		t.Fatal(err)
	}
	if got.TCP != want.TCP || got.UDP != want.UDP || got.TCPFin != before.TCPFin {
		t.Errorf("kernel timeouts %+v, want tcp %v, udp %v, tcpfin unchanged %v", got, want.TCP, want.UDP, before.TCPFin)
	}

	udp := net.JoinHostPort(clusterIP.String(), "53")
	if ids := requestIDs(t, topo.Client, "udp", udp, 1, topo.ClientAddr); ids["be0"] != 1 {
		t.Fatalf("UDP through the virtual server: replies %v", ids)
	}
	exp, ok := udpConnExpiry(t, clusterIP.String(), 53)
	if !ok {
		t.Fatal("no UDP connection to the virtual server in /proc/net/ip_vs_conn")
	}
	if exp > 7 {
		t.Errorf("UDP connection expires in %d s, want at most the configured 7 s", exp)
	}
}

// udpConnExpiry returns the smallest expiry (seconds) of the UDP IPVS
// connections to vip:port listed in /proc/net/ip_vs_conn.
func udpConnExpiry(t *testing.T, vip string, port int) (int, bool) {
	t.Helper()
	f, err := os.Open("/proc/net/ip_vs_conn")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Pro FromIP FPrt ToIP TPrt DestIP DPrt State Expires ...; addresses
	// and ports in hex.
	ip := net.ParseIP(vip).To4()
	hexIP := strings.ToUpper(strings.Join([]string{hx(ip[0]), hx(ip[1]), hx(ip[2]), hx(ip[3])}, ""))
	hexPort := strings.ToUpper(strconv.FormatInt(int64(port)|0x10000, 16)[1:])
	best, found := 0, false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 9 || fs[0] != "UDP" || strings.ToUpper(fs[3]) != hexIP || strings.ToUpper(fs[4]) != hexPort {
			continue
		}
		exp, err := strconv.Atoi(fs[8])
		if err != nil {
			continue
		}
		if !found || exp < best {
			best, found = exp, true
		}
	}
	return best, found
}

func hx(b byte) string { return strconv.FormatInt(int64(b)|0x100, 16)[1:] }
