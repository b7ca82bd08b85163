package kmod

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func writeIndex(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{
		"modules.dep": `kernel/net/netfilter/ipvs/ip_vs.ko: kernel/net/netfilter/nf_conntrack.ko kernel/lib/libcrc32c.ko kernel/net/ipv6/nf_defrag_ipv6.ko
kernel/net/netfilter/ipvs/ip_vs_rr.ko: kernel/net/netfilter/ipvs/ip_vs.ko kernel/net/netfilter/nf_conntrack.ko kernel/lib/libcrc32c.ko kernel/net/ipv6/nf_defrag_ipv6.ko
kernel/net/netfilter/nf_conntrack.ko: kernel/lib/libcrc32c.ko kernel/net/ipv6/nf_defrag_ipv6.ko
kernel/net/ipv6/nf_defrag_ipv6.ko:
kernel/lib/libcrc32c.ko:
kernel/crypto/crc32c_generic.ko:
kernel/net/netfilter/ipset/ip_set_hash_ipport.ko:
`,
		"modules.softdep": "# comment\nsoftdep libcrc32c pre: crc32c\n",
		"modules.alias":   "alias crypto-crc32c crc32c_generic\nalias crc32c crc32c_generic\nalias ip_set_hash:ip,port ip_set_hash_ipport\nalias net-pf-16-proto-12-* nf_nope\n",
		"modules.builtin": "kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko\n",
	}
	for n, c := range files {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestLoadOrderFollowsDepsAndSoftdeps(t *testing.T) {
	ix, err := Load(writeIndex(t))
	if err != nil {
		t.Fatal(err)
	}
	got := ix.LoadOrder("ip-vs-rr")
	want := []string{"crc32c_generic", "libcrc32c", "nf_defrag_ipv6", "nf_conntrack", "ip_vs", "ip_vs_rr"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("LoadOrder = %v, want %v", got, want)
	}
}

func TestResolve(t *testing.T) {
	ix, err := Load(writeIndex(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		mods    []string
		builtin bool
	}{
		{"ip_vs", []string{"ip_vs"}, false},
		{"ip_set_hash:ip,port", []string{"ip_set_hash_ipport"}, false},
		{"ip_vs*", []string{"ip_vs", "ip_vs_rr"}, false},
		{"nf_defrag_ipv4", nil, true},
		{"net-pf-16-proto-12-x", nil, false}, // alias to a module not in modules.dep
		{"nope", nil, false},
	} {
		mods, builtin := ix.Resolve(tc.name)
		if !reflect.DeepEqual(mods, tc.mods) || builtin != tc.builtin {
			t.Errorf("Resolve(%q) = %v, %v; want %v, %v", tc.name, mods, builtin, tc.mods, tc.builtin)
		}
	}
}

func TestSubsetRoundTrips(t *testing.T) {
	ix, err := Load(writeIndex(t))
	if err != nil {
		t.Fatal(err)
	}
	mods := ix.LoadOrder("ip_vs")
	dir := t.TempDir()
	for n, data := range ix.Subset(mods) {
		if err := os.WriteFile(filepath.Join(dir, n), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	sub, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := sub.LoadOrder("ip_vs"); !reflect.DeepEqual(got, mods) {
		t.Fatalf("subset LoadOrder = %v, want %v", got, mods)
	}
	if len(sub.Paths) != len(mods) || !strings.HasSuffix(sub.Paths["ip_vs"], "ipvs/ip_vs.ko") {
		t.Fatalf("subset paths %v", sub.Paths)
	}
	if !sub.Builtin["nf_defrag_ipv4"] {
		t.Fatal("subset lost modules.builtin")
	}
}
