package vm

import (
	"bufio"
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"

	"github.com/switchyard/switchyard/test/vm/kmod"
)

// DefaultModules are the kernel modules put into the VM and preloaded by
// the guest, as names or globs; their dependencies and softdeps come along.
// Names this kernel lacks are skipped with a log line.
var DefaultModules = []string{
	// IPVS and its schedulers.
	"ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_lc", "ip_vs_wlc", "ip_vs_sh", "ip_vs_mh",
	"ip_vs_sed", "ip_vs_nq", "ip_vs_dh", "ip_vs_lblc", "ip_vs_lblcr", "ip_vs_fo", "ip_vs_ovf",
	// Links.
	"dummy", "veth",
	// sock_diag for TCP (socket destroy by the rebalancer; ss).
	"inet_diag", "tcp_diag",
	// SCTP sockets for real SCTP traffic (deps: udp_tunnel, ip6_udp_tunnel,
	// libcrc32c). IPVS and conntrack SCTP support are built in to the Debian
	// kernel (CONFIG_IP_VS_PROTO_SCTP=y, CONFIG_NF_CT_PROTO_SCTP=y);
	// xt_sctp is the iptables "-p sctp --dport" match.
	"sctp", "xt_sctp",
	// Conntrack and NAT.
	"nf_conntrack", "nf_conntrack_netlink", "nf_defrag_ipv4", "nf_defrag_ipv6", "nf_nat", "nfnetlink",
	// ipset.
	"ip_set", "ip_set_hash_*", "ip_set_bitmap_*", "ip_set_list_set", "xt_set",
	// iptables (legacy backend) and the matches/targets kube-proxy style rules use.
	"x_tables", "ip_tables", "ip6_tables", "iptable_nat", "iptable_filter", "iptable_mangle",
	"iptable_raw", "ip6table_nat", "ip6table_filter", "ip6table_mangle", "ip6table_raw",
	"xt_MASQUERADE", "xt_conntrack", "xt_mark", "xt_comment", "xt_addrtype", "xt_multiport",
	"xt_tcpudp", "xt_nat", "xt_statistic", "xt_REDIRECT", "xt_state", "xt_physdev",
	"ipt_REJECT", "ip6t_REJECT", "xt_NFLOG", "xt_LOG",
	// xt_connmark: the IPVS dataplane's reset of connections the
	// rebalancer marked ("-m connmark").
	"xt_connmark",
	// nf_tables (the nft dataplane and iptables-nft).
	"nf_tables", "nft_*",
}

// InitramfsConfig says what goes into the guest's root filesystem.
type InitramfsConfig struct {
	Kernel     *Kernel
	TestBinary string   // becomes /init and, through a symlink, /sbin/modprobe
	Modules    []string // names or globs; DefaultModules when nil
	// ExtraHostBinaries are copied with their shared libraries and the
	// xtables plugins to the same paths in the guest (see DefaultHostBinaries).
	ExtraHostBinaries []string
	// StaticBinaries maps a guest path (e.g. AgentPath) to a host file
	// copied there as an executable, without libraries: meant for static
	// Go programs (see GoBinary).
	StaticBinaries map[string]string
}

// BuildInitramfs writes the gzip'd cpio to out.
func BuildInitramfs(ctx context.Context, cfg InitramfsConfig, out string, logf func(string, ...any)) error {
	a := newArchive()
	// Host binaries first: they bring usrmerge symlinks (lib -> usr/lib) that
	// later paths such as lib/modules must go through.
	if err := a.addHostBinaries(ctx, cfg.ExtraHostBinaries); err != nil {
		return err
	}
	// Without /dev/console the kernel opens no stdio for /init, so the tests
	// print nothing. devtmpfs is mounted over /dev later by the guest.
	if err := a.charDev("dev/console", 5, 1); err != nil {
		return err
	}
	for _, d := range []string{"proc", "sys", "dev", "tmp", "run", "etc", "root"} {
		if err := a.dir(d); err != nil {
			return err
		}
	}
	if err := a.symlink("var/run", "/run"); err != nil {
		return err
	}
	if err := a.hostFile("init", cfg.TestBinary, 0o755); err != nil {
		return err
	}
	// The kernel (request_module) and moby/ipvs (`modprobe -va ip_vs`) run
	// /sbin/modprobe; the guest binary acts as modprobe under that name.
	if err := a.symlink("sbin/modprobe", "/init"); err != nil {
		return err
	}
	for _, guestPath := range slices.Sorted(maps.Keys(cfg.StaticBinaries)) {
		if err := a.hostFile(guestPath, cfg.StaticBinaries[guestPath], 0o755); err != nil {
			return err
		}
	}
	if err := a.addModules(cfg.Kernel, cfg.Modules, logf); err != nil {
		return err
	}

	f, err := os.Create(out)
	if err != nil {
		return fmt.Errorf("create initramfs: %w", err)
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	if err := a.writeTo(bw); err != nil {
		f.Close()
		return err
	}
	if err := bw.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("write initramfs: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write initramfs: %w", err)
	}
	return nil
}

// addModules resolves the wanted modules with dependencies and softdeps and
// copies them plus a filtered module index into lib/modules/<version>.
func (a *archive) addModules(k *Kernel, wanted []string, logf func(string, ...any)) error {
	if wanted == nil {
		wanted = DefaultModules
	}
	ix, err := kmod.Load(k.ModulesDir)
	if err != nil {
		return err
	}
	var roots []string
	for _, w := range wanted {
		mods, builtin := ix.Resolve(w)
		switch {
		case builtin:
		case len(mods) == 0:
			logf("vm: module %s not in kernel %s, skipped", w, k.Version)
		default:
			roots = append(roots, mods...)
		}
	}
	mods := ix.LoadOrder(roots...)
	base := "lib/modules/" + k.Version
	for _, m := range mods {
		rel := ix.Paths[m]
		if err := a.hostFile(base+"/"+rel, filepath.Join(k.ModulesDir, rel), 0o644); err != nil {
			return err
		}
	}
	for name, data := range ix.Subset(mods) {
		if err := a.file(base+"/"+name, data, 0o644); err != nil {
			return err
		}
	}
	return nil
}
