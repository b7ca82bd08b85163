#!/usr/bin/env bash
# ensure-deps.sh installs the Debian packages the tests need (the IPVS VM
# harness and the real-packet tests): qemu, kmod (depmod), iptables, ipset,
# iproute2, conntrack. Idempotent: a fast no-op when everything is present;
# `apt-get update` runs at most once and only when something is missing.
#
# `ensure-deps.sh bpf` installs what regenerating the BPF objects needs
# instead (clang with the bpf target, llvm-strip, libbpf and kernel
# headers); building never needs them, the objects are committed.
#
# `ensure-deps.sh e2e` installs what the control-plane tests (test/cluster,
# `make test-e2e`) need: nftables (upstream kube-proxy's nftables mode execs
# nft).
set -euo pipefail

PACKAGES=(qemu-system-x86 kmod iptables ipset iproute2 conntrack)
if [ "${1:-}" = bpf ]; then
	PACKAGES=(clang llvm libbpf-dev linux-libc-dev)
fi
if [ "${1:-}" = e2e ]; then
	PACKAGES=(nftables)
fi

installed() {
	# dpkg-query prints "install ok installed" only for a fully configured package.
	[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

missing=()
for p in "${PACKAGES[@]}"; do
	installed "$p" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
	exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
	echo "ensure-deps: missing packages ${missing[*]} and not root; install them with apt-get" >&2
	exit 1
fi

export DEBIAN_FRONTEND=noninteractive
echo "ensure-deps: installing ${missing[*]}" >&2
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
