package hostport

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/switchyard/switchyard/conntrack"
	"github.com/switchyard/switchyard/dataplane"
)

func TestStaleFlowFilters(t *testing.T) {
	a := netip.MustParseAddr
	ap := netip.MustParseAddrPort
	wild := func(proto dataplane.Protocol, port uint16) entryKey { return entryKey{proto: proto, port: port} }
	at := func(ip string, proto dataplane.Protocol, port uint16) entryKey {
		return entryKey{hostIP: a(ip), proto: proto, port: port}
	}
	for _, tc := range []struct {
		name          string
		before, after entries
		want          []conntrack.Filter
	}{
		{name: "nothing changed",
			before: entries{wild(udp, 53): ap("10.244.1.2:53")}, after: entries{wild(udp, 53): ap("10.244.1.2:53")}},
		{name: "added: flows that started before the mapping",
			after: entries{wild(udp, 53): ap("10.244.1.2:53")},
			want:  []conntrack.Filter{{Protocol: udp, OrigDstPort: 53}}},
		{name: "the Pod moved",
			before: entries{wild(udp, 53): ap("10.244.1.2:53")}, after: entries{wild(udp, 53): ap("10.244.1.3:53")},
			want: []conntrack.Filter{{Protocol: udp, OrigDstPort: 53}}},
		{name: "the container port changed",
			before: entries{wild(udp, 53): ap("10.244.1.2:53")}, after: entries{wild(udp, 53): ap("10.244.1.2:54")},
			want: []conntrack.Filter{{Protocol: udp, OrigDstPort: 53}}},
		{name: "removed; a hostIP narrows the filter",
			before: entries{at("192.0.2.1", udp, 53): ap("10.244.1.2:53")},
			want:   []conntrack.Filter{{Protocol: udp, OrigDst: a("192.0.2.1"), OrigDstPort: 53}}},
		{name: "SCTP too, TCP never",
			before: entries{wild(tcp, 80): ap("10.244.1.2:80"), wild(sctp, 9): ap("10.244.1.2:9")},
			after:  entries{wild(tcp, 80): ap("10.244.1.3:80"), wild(sctp, 9): ap("10.244.1.3:9")},
			want:   []conntrack.Filter{{Protocol: sctp, OrigDstPort: 9}}},
		{name: "IPv6, sorted",
			before: entries{at("2001:db8::1", udp, 53): ap("[fd00::2]:53"), wild(udp, 5353): ap("[fd00::2]:53")},
			after:  entries{wild(udp, 123): ap("[fd00::3]:123")},
			want: []conntrack.Filter{{Protocol: udp, OrigDstPort: 123}, {Protocol: udp, OrigDstPort: 5353},
				{Protocol: udp, OrigDst: a("2001:db8::1"), OrigDstPort: 53}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := staleFlowFilters(tc.before, tc.after)
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
			if err := conntrack.ValidateFilters(got); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestElementsRoundTrip: what entries write, decodeEntries reads back.
func TestElementsRoundTrip(t *testing.T) {
	ap := netip.MustParseAddrPort
	for _, f := range allFamilies {
		ms := []Mapping{
			mp("a", tcp, "", 8080, "10.244.1.2", 80), mp("b", udp, "192.0.2.1", 53, "10.244.1.3", 5353),
			mp("c", sctp, "", 9, "fd00::2", 9999), mp("d", udp, "2001:db8::1", 65535, "fd00::3", 1),
		}
		es := entriesOf(f, ms)
		if len(es) != 2 {
			t.Fatalf("%s: %d entries, want 2", f.name, len(es))
		}
		back := decodeEntries(f, es.elements())
		if fmt.Sprint(back) != fmt.Sprint(es) {
			t.Errorf("%s: %v, want %v", f.name, back, es)
		}
		// Two hostPorts to the same container port share a hairpin element.
		two := entries{{proto: tcp, port: 1}: ap("10.244.1.2:80"), {proto: tcp, port: 2}: ap("10.244.1.2:80")}
		if f == ipv4 && len(two.elements()[setHairpin]) != 1 {
			t.Errorf("hairpin elements: %v", two.elements()[setHairpin])
		}
	}
}
