package nftables

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/conntrack"
	"github.com/switchyard/switchyard/dataplane"
	"github.com/switchyard/switchyard/test/netnstest"
)

// TestResetMarkConfig: the bit defaults to 15, can be moved or turned off
// (no chain, no jumps), and must differ from the masquerade bit.
func TestResetMarkConfig(t *testing.T) {
	bit := func(b int) *int { return &b }
	for _, tc := range []struct {
		name      string
		cfg       Config
		wantMark  uint32
		wantError bool
	}{
		{name: "default", cfg: Config{}, wantMark: 0x8000},
		{name: "bit 3", cfg: Config{ResetMarkBit: bit(3)}, wantMark: 0x8},
		{name: "bit 0", cfg: Config{ResetMarkBit: bit(0)}, wantMark: 0x1},
		{name: "off", cfg: Config{ResetMarkBit: bit(ResetMarkOff)}},
		{name: "masquerade bit", cfg: Config{ResetMarkBit: bit(14)}, wantError: true},
		{name: "moved masquerade bit", cfg: Config{MasqueradeBit: bit(15)}, wantError: true},
		{name: "out of range", cfg: Config{ResetMarkBit: bit(32)}, wantError: true},
		{name: "negative", cfg: Config{ResetMarkBit: bit(-2)}, wantError: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := tc.cfg.withDefaults()
			if _, perr := NewProxier(tc.cfg, nopConn{}, nil); (perr != nil) != tc.wantError || (err != nil) != tc.wantError {
				t.Fatalf("withDefaults: %v, NewProxier: %v; want error=%v", err, perr, tc.wantError)
			}
			if got := tc.cfg.ResetMark(); got != tc.wantMark {
				t.Errorf("ResetMark = %#x, want %#x", got, tc.wantMark)
			}
			if tc.wantError {
				return
			}
			chains := skeletonChains(cfg, ipv4)
			jump := "ct mark & " + formatValue(kindMark, native32(tc.wantMark)) + " != 0x0 meta l4proto tcp jump reset-marked"
			var reset []string
			for _, c := range chains {
				for _, r := range c.rules {
					if strings.Contains(r.text, chainResetMarked) {
						reset = append(reset, c.name+": "+r.text)
					}
				}
			}
			hasChain := slices.ContainsFunc(chains, func(c chainSpec) bool { return c.name == chainResetMarked })
			if tc.wantMark == 0 {
				if hasChain || len(reset) > 0 {
					t.Errorf("reset rules although off: chain %v, jumps %q", hasChain, reset)
				}
				return
			}
			want := []string{chainFilterForward + ": " + jump, chainFilterInput + ": " + jump, chainFilterOutput + ": " + jump}
			if !hasChain || !slices.Equal(reset, want) {
				t.Errorf("chain %v, jumps:\n%s\nwant:\n%s", hasChain, strings.Join(reset, "\n"), strings.Join(want, "\n"))
			}
		})
	}
}

// TestResetMarkedChainPlacement: the jump comes first in the filter chains
// (after the invalid drop), so a marked connection is handled before
// anything else of ours can accept or drop its packet.
func TestResetMarkedChainPlacement(t *testing.T) {
	cfg, err := Config{ConntrackDropInvalid: true}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range allFamilies {
		for _, c := range skeletonChains(cfg, f) {
			want := -1
			switch c.name {
			case chainFilterForward:
				want = 1
			case chainFilterInput, chainFilterOutput:
				want = 0
			}
			got := slices.IndexFunc(c.rules, func(r rule) bool { return strings.HasSuffix(r.text, "jump "+chainResetMarked) })
			if got != want {
				t.Errorf("%s %s: jump to %s at %d, want %d", f.name, c.name, chainResetMarked, got, want)
			}
		}
	}
}

// TestKernelResetMarked holds TCP connections through a ClusterIP Service
// (client outside the cluster CIDR, masqueraded, and a pod, not
// masqueraded; IPv4 and IPv6), marks the conntrack entries of some with
// the reset bit and shows: both ends of every marked connection are reset
// whichever end sends next and whether that packet carries payload or is a
// bare keepalive probe; the unmarked ones keep exchanging; the clients
// reconnect through the Service; and conntrack saw the connections close.
func TestKernelResetMarked(t *testing.T) {
	requireKernel(t)
	topo := newTrafficTopology(t)
	topo.addIPv6(t)
	cfg := Config{ClusterCIDRs: clusterCIDRsDual, ConntrackDropInvalid: true}
	p := topo.k.proxier(t, cfg)
	servers := map[netip.AddrPort]*netnstest.ConnServer{}
	for _, s := range []struct {
		ns   *netnstest.NS
		addr string
		id   string
	}{{topo.be1, be1Addr, "be1"}, {topo.be2, be2Addr, "be2"}, {topo.be1, be16Addr, "be1-v6"}, {topo.be2, be26Addr, "be2-v6"}} {
		ap := netip.AddrPortFrom(netip.MustParseAddr(s.addr), 9090)
		servers[ap] = netnstest.StartConnServer(t, s.ns, ap.String(), s.id)
	}
	const vip4, vip6 = "10.96.0.40", "fd00:10:96::40"
	long := svc{ns: "default", name: "long", port: "grpc", proto: dataplane.TCP, svcPort: 80,
		clusterIPs: []string{vip4, vip6},
		endpoints:  []string{be1Addr + ":9090", be2Addr + ":9090", hostPort(be16Addr, 9090), hostPort(be26Addr, 9090)}}
	mustSync(t, p, newState(long), full)

	ct, err := conntrack.NewNetlink(topo.node.NsHandle())
	if err != nil {
		t.Fatal(err)
	}
	defer ct.Close()
	mark := cfg.ResetMark()
	if mark != 0x8000 {
		t.Fatalf("ResetMark = %#x, want the default 0x8000", mark)
	}

	type heldConn struct {
		*netnstest.Held
		flow conntrack.Flow
	}
	var held []*heldConn
	for _, vip := range []string{vip4, vip6} {
		for _, from := range []*netnstest.NS{topo.client, topo.pod} {
			for _, next := range []netnstest.NextPacket{netnstest.ClientSends, netnstest.ServerSends, netnstest.ClientKeepsAlive, netnstest.Unmarked, netnstest.Unmarked} {
				h, err := netnstest.HoldConn(t, from, hostPort(vip, 80), from.Name(), next, 3*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				held = append(held, &heldConn{Held: h})
			}
		}
	}

	// Each connection's entry, by the client's own address, and the
	// server's end, by the address the backend sees (the node's after
	// masquerading).
	flows, err := ct.ListFlows()
	if err != nil {
		t.Fatal(err)
	}
	var toMark []conntrack.Flow
	for _, h := range held {
		local := netip.MustParseAddrPort(h.C.LocalAddr().String())
		i := slices.IndexFunc(flows, func(f conntrack.Flow) bool { return f.Protocol == dataplane.TCP && f.Orig.Src == local })
		if i < 0 {
			t.Fatalf("%s: no conntrack entry", h.Name)
		}
		h.flow = flows[i]
		srv := servers[h.flow.Reply.Src]
		if srv == nil || srv.ID != h.ID {
			t.Fatalf("%s: entry %s leads to %s, but %s answered", h.Name, h.flow, h.flow.Reply.Src, h.ID)
		}
		if h.Srv = srv.Conn(h.flow.Reply.Dst); h.Srv == nil {
			t.Fatalf("%s: %s has no connection from %s", h.Name, h.ID, h.flow.Reply.Dst)
		}
		if h.flow.TCPState != "ESTABLISHED" || h.flow.Mark != 0 {
			t.Fatalf("%s: entry %s in %s with mark %#x", h.Name, h.flow, h.flow.TCPState, h.flow.Mark)
		}
		if h.Next != netnstest.Unmarked {
			toMark = append(toMark, h.flow)
		}
	}
	if n, err := ct.MarkFlows(toMark, mark, mark); n != len(toMark) || err != nil {
		t.Fatalf("MarkFlows = %d, %v; want %d, nil", n, err, len(toMark))
	}

	// Each marked connection sends its next packet: the reset rules reset
	// both ends at once (a keepalive probe: the client, and the server when
	// it next sends). One deadline bounds the waiting.
	deadline := time.Now().Add(20 * time.Second)
	for _, h := range held {
		if h.Next == netnstest.Unmarked {
			continue
		}
		if err := h.ExpectReset(deadline, netnstest.BothEnds); err != nil {
			t.Errorf("%s: %v", h.Name, err)
		}
	}

	// The unmarked connections never noticed.
	for _, h := range held {
		if h.Next != netnstest.Unmarked {
			continue
		}
		if err := h.ExpectAlive(3, 3*time.Second); err != nil {
			t.Errorf("%s: %v", h.Name, err)
		}
	}

	// The reset clients connect again through the Service.
	for _, vip := range []string{vip4, vip6} {
		for _, from := range []*netnstest.NS{topo.client, topo.pod} {
			want := []string{"be1", "be2"}
			if vip == vip6 {
				want = []string{"be1-v6", "be2-v6"}
			}
			if id, _ := ask(t, from, "tcp", hostPort(vip, 80)); !slices.Contains(want, id) {
				t.Errorf("new connection from %s to %s answered by %s, want one of %v", from.Name(), vip, id, want)
			}
		}
	}

	// Conntrack saw the ends' own resets: the marked entries are closing
	// (or gone) with the bit cleared; the others are as they were.
	after, err := ct.ListFlows()
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range held {
		i := slices.IndexFunc(after, func(f conntrack.Flow) bool { return f.Protocol == dataplane.TCP && f.Orig == h.flow.Orig })
		unmarked := h.Next == netnstest.Unmarked
		switch {
		case unmarked && i < 0:
			t.Errorf("%s: unmarked entry gone", h.Name)
		case unmarked && (after[i].TCPState != "ESTABLISHED" || after[i].Mark != 0):
			t.Errorf("%s: unmarked entry now %s with mark %#x", h.Name, after[i].TCPState, after[i].Mark)
		case !unmarked && i >= 0 && (after[i].TCPState == "ESTABLISHED" || after[i].Mark&mark != 0):
			t.Errorf("%s: marked entry %s still %s with mark %#x", h.Name, after[i], after[i].TCPState, after[i].Mark)
		}
	}
}
