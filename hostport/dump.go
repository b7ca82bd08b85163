package hostport

import (
	"encoding/hex"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
)

// DumpTables renders hostport's tables as the kernel has them, one line per
// set element and rule, in a stable order: the same text for the same
// content, so tests compare it literally and `yardctl` can show it. Rules
// hostport writes are shown in nft syntax; anything else as "unknown
// rule". An empty string means neither table exists.
//
//	table ip switchyard-hostport
//		map hostip-ports: ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service
//			192.0.2.1 . tcp . 8080 : 10.244.1.2 . 80
//		...
//		chain prerouting: type nat hook prerouting priority -110
//			fib daddr type local jump hostports
func DumpTables(conn Conn) (string, error) {
	var b strings.Builder
	for _, f := range allFamilies {
		kt, err := readTable(conn, f)
		if err != nil {
			return "", fmt.Errorf("dump: %w", err)
		}
		if kt.exists {
			dumpTable(&b, f, kt)
		}
	}
	return b.String(), nil
}

func dumpTable(b *strings.Builder, f *family, kt *kernelTable) {
	fmt.Fprintf(b, "table %s %s\n", f.name, TableName)
	for _, name := range slices.Sorted(maps.Keys(kt.sets)) {
		s := kt.sets[name]
		kind, types := "set", s.KeyType.Name
		if s.IsMap {
			kind, types = "map", types+" : "+s.DataType.Name
		}
		fmt.Fprintf(b, "\t%s %s: %s\n", kind, name, types)
		var lines []string
		for k, v := range kt.elems[name] {
			lines = append(lines, elementText(f, name, k, v))
		}
		slices.Sort(lines)
		for _, l := range lines {
			fmt.Fprintf(b, "\t\t%s\n", l)
		}
	}
	texts := map[string]string{}
	for _, c := range skeleton(f) {
		for _, r := range c.rules {
			texts[r.key] = r.text
		}
	}
	for _, name := range slices.Sorted(maps.Keys(kt.chains)) {
		kc := kt.chains[name]
		fmt.Fprintf(b, "\tchain %s%s\n", name, hookText(kc.chain))
		for i, key := range kc.keys {
			text, ok := texts[key]
			if !ok {
				text = fmt.Sprintf("unknown rule (%d expressions)", len(kc.rules[i].Exprs))
			}
			fmt.Fprintf(b, "\t\t%s\n", text)
		}
	}
}

func hookText(c *nftables.Chain) string {
	if c.Hooknum == nil {
		return ""
	}
	hooks := map[nftables.ChainHook]string{
		*nftables.ChainHookPrerouting: "prerouting", *nftables.ChainHookInput: "input",
		*nftables.ChainHookForward: "forward", *nftables.ChainHookOutput: "output",
		*nftables.ChainHookPostrouting: "postrouting",
	}
	hook, ok := hooks[*c.Hooknum]
	if !ok {
		hook = fmt.Sprint(*c.Hooknum)
	}
	prio := "?"
	if c.Priority != nil {
		prio = fmt.Sprint(*c.Priority)
	}
	policy := ""
	if c.Policy != nil && *c.Policy != nftables.ChainPolicyAccept {
		policy = "; policy drop"
	}
	return fmt.Sprintf(": type %s hook %s priority %s%s", c.Type, hook, prio, policy)
}

// elementText renders an element of one of hostport's sets field by field,
// or as hex when it does not have their layout.
func elementText(f *family, set, key, val string) string {
	n := int(f.addrLen)
	addr := func(b string) string {
		a, _ := netip.AddrFromSlice([]byte(b))
		return a.String()
	}
	proto := func(b string) string {
		if p := decodeProto(b); p != "" {
			return strings.ToLower(string(p))
		}
		return "proto-" + fmt.Sprint(b[0])
	}
	port := func(b string) string { return fmt.Sprint(decodePort(b)) }
	target := func(v string) string { return addr(v[:n]) + " . " + port(v[n:]) }
	switch {
	case set == mapHostIP && len(key) == n+8 && len(val) == n+4:
		return addr(key[:n]) + " . " + proto(key[n:n+4]) + " . " + port(key[n+4:]) + " : " + target(val)
	case set == mapWildcard && len(key) == 8 && len(val) == n+4:
		return proto(key[:4]) + " . " + port(key[4:]) + " : " + target(val)
	case set == setHairpin && len(key) == 2*n+8 && val == "":
		return addr(key[:n]) + " . " + addr(key[n:2*n]) + " . " + proto(key[2*n:2*n+4]) + " . " + port(key[2*n+4:])
	}
	if val == "" {
		return hex.EncodeToString([]byte(key))
	}
	return hex.EncodeToString([]byte(key)) + " : " + hex.EncodeToString([]byte(val))
}
