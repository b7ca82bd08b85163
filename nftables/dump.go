package nftables

import (
	"encoding/hex"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"unicode"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
)

// DumpTable renders switchyard's tables as the kernel has them (ip, then
// ip6; a missing table prints nothing), in a deterministic nft-like text: sets and maps by name with sorted elements,
// then chains by name with their rules in order, anonymous maps written
// inline. Tests compare it with golden files and yardctl prints it, so a
// bug report's output can become a test. It reads every anonymous map, so
// it costs one request per Service chain on top of the table read.
func DumpTable(conn Conn) (string, error) {
	var b strings.Builder
	for _, f := range allFamilies {
		if err := dumpFamily(&b, conn, f); err != nil {
			return "", err
		}
	}
	return b.String(), nil
}

func dumpFamily(b *strings.Builder, conn Conn, f *family) error {
	kt, err := readTable(conn, f, true)
	if err != nil {
		return fmt.Errorf("dump: %w", err)
	}
	if !kt.exists {
		return nil
	}
	fmt.Fprintf(b, "table %s %s\n", f.name, tableName)
	specs := setSpecs(f)
	for _, name := range slices.Sorted(maps.Keys(kt.sets)) {
		s := kt.sets[name]
		if s.Anonymous || isAnonymousSetName(name) {
			continue
		}
		keyType, dataType, isMap := s.KeyType, s.DataType, s.IsMap
		if i := slices.IndexFunc(specs, func(sp setSpec) bool { return sp.name == name }); i >= 0 {
			keyType, dataType, isMap = specs[i].keyType, specs[i].dataType, specs[i].isMap
		} else if spec, ok := portSetSpec(f, name); ok {
			keyType, dataType, isMap = spec.keyType, spec.dataType, spec.isMap
		}
		elems, err := conn.GetSetElements(s)
		if err != nil {
			return fmt.Errorf("dump: elements of %s: %w", name, err)
		}
		kind, typ := "set", keyType.Name
		if isMap {
			kind, typ = "map", keyType.Name+" : "+dataType.Name
		}
		fmt.Fprintf(b, "%s %s { type %s\n", kind, name, typ)
		lines := make([]string, len(elems))
		for i, e := range elems {
			lines[i] = renderElement(e, keyType, dataType, isMap)
		}
		slices.SortFunc(lines, naturalCompare)
		for _, l := range lines {
			fmt.Fprintf(b, "\t%s\n", l)
		}
		b.WriteString("}\n")
	}

	anon := anonymousSetText(conn, kt)
	keyLen := setKeyLen(f)
	for _, name := range slices.Sorted(maps.Keys(kt.chains)) {
		kc := kt.chains[name]
		fmt.Fprintf(b, "chain %s {%s\n", name, hookText(kc.chain))
		for _, r := range kc.raw {
			fmt.Fprintf(b, "\t%s\n", renderRule(f, r.Exprs, ruleComment(r), anon, keyLen))
		}
		b.WriteString("}\n")
	}
	return nil
}

func hookText(c *nftables.Chain) string {
	if c.Hooknum == nil {
		return ""
	}
	hooks := map[nftables.ChainHook]string{*nftables.ChainHookPrerouting: "prerouting", *nftables.ChainHookInput: "input",
		*nftables.ChainHookForward: "forward", *nftables.ChainHookOutput: "output", *nftables.ChainHookPostrouting: "postrouting"}
	hook, ok := hooks[*c.Hooknum]
	if !ok {
		hook = "hook-" + strconv.Itoa(int(*c.Hooknum))
	}
	prio := 0
	if c.Priority != nil {
		prio = int(*c.Priority)
	}
	policy := "accept"
	if c.Policy != nil && *c.Policy == nftables.ChainPolicyDrop {
		policy = "drop"
	}
	return fmt.Sprintf(" type %s hook %s priority %d; policy %s", c.Type, hook, prio, policy)
}

// renderElement renders "key" or "key : value".
func renderElement(e nftables.SetElement, keyType, dataType nftables.SetDatatype, isMap bool) string {
	s := renderFields(typeNames(keyType), e.Key)
	if !isMap {
		return s
	}
	if dataType.Name == nftables.TypeVerdict.Name || e.VerdictData != nil {
		return s + " : " + verdictValueText(e.Val)
	}
	return s + " : " + renderFields(typeNames(dataType), e.Val)
}

// renderFields renders a (possibly concatenated) value; concatenated fields
// are padded to 4 bytes each.
func renderFields(types []string, b []byte) string {
	pad := len(types) > 1
	parts := make([]string, 0, len(types))
	for _, t := range types {
		n := typeLen(t)
		if n == 0 || len(b) < n {
			parts = append(parts, "0x"+hex.EncodeToString(b))
			b = nil
			break
		}
		parts = append(parts, formatField(t, b[:n]))
		adv := n
		if pad {
			adv = (n + 3) &^ 3
		}
		b = b[min(adv, len(b)):]
	}
	if len(b) > 0 {
		parts = append(parts, "0x"+hex.EncodeToString(b))
	}
	return strings.Join(parts, " . ")
}

func typeLen(t string) int {
	switch t {
	case "ipv4_addr", "integer", "mark":
		return 4
	case "ipv6_addr":
		return 16
	case "inet_proto":
		return 1
	case "inet_service":
		return 2
	}
	return 0
}

func formatField(t string, b []byte) string {
	switch t {
	case "ipv4_addr", "ipv6_addr":
		a, _ := netip.AddrFromSlice(b)
		return a.String()
	case "inet_proto":
		return protoName(b[0])
	case "inet_service":
		return strconv.Itoa(int(binaryutil.BigEndian.Uint16(b)))
	case "integer":
		return strconv.FormatUint(uint64(binaryutil.NativeEndian.Uint32(b)), 10)
	case "mark":
		return fmt.Sprintf("%#x", binaryutil.NativeEndian.Uint32(b))
	}
	return "0x" + hex.EncodeToString(b)
}

// naturalCompare orders strings with embedded numbers by value, so
// "10.0.0.9" < "10.0.0.10" and slot 2 < slot 10.
func naturalCompare(a, b string) int {
	for a != "" && b != "" {
		if isDigit(a[0]) && isDigit(b[0]) {
			na, ra := leadingNumber(a)
			nb, rb := leadingNumber(b)
			if na != nb {
				if na < nb {
					return -1
				}
				return 1
			}
			a, b = ra, rb
			continue
		}
		if a[0] != b[0] {
			if a[0] < b[0] {
				return -1
			}
			return 1
		}
		a, b = a[1:], b[1:]
	}
	return len(a) - len(b)
}

func isDigit(c byte) bool { return unicode.IsDigit(rune(c)) }

func leadingNumber(s string) (uint64, string) {
	i := 0
	for i < len(s) && isDigit(s[i]) {
		i++
	}
	n, _ := strconv.ParseUint(s[:i], 10, 64)
	return n, s[i:]
}

// anonymousSetText returns the renderer of kt's anonymous sets that rules
// reference ("{ a, b }", elements sorted), for dumps and inspection; false
// when the set is unknown or unreadable.
func anonymousSetText(conn Conn, kt *kernelTable) func(name string) (string, bool) {
	return func(name string) (string, bool) {
		s := kt.sets[name]
		if s == nil {
			return "", false
		}
		elems, err := conn.GetSetElements(s)
		if err != nil {
			return "", false
		}
		parts := make([]string, len(elems))
		for i, e := range elems {
			parts[i] = renderElement(e, s.KeyType, s.DataType, s.IsMap)
		}
		slices.SortFunc(parts, naturalCompare)
		return "{ " + strings.Join(parts, ", ") + " }", true
	}
}
