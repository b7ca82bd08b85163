#!/bin/sh
# select-iptables: the image's entrypoint. Points iptables, ip6tables and
# their -save/-restore at the backend the node already uses, so the rules
# the agent writes (the IPVS dataplane's masquerading) sit beside the
# kubelet's and the CNI's, not in a second, invisible ruleset; then execs
# its arguments (the agent). The same idea as kube-proxy's image
# (kubernetes-sigs/iptables-wrappers), written for Debian's alternatives:
#
#   1. SWITCHYARD_IPTABLES_MODE=legacy|nft, when set, decides.
#   2. The kubelet's hint chain (KUBE-IPTABLES-HINT, or KUBE-KUBELET-CANARY
#      of older kubelets) in the mangle table of one backend decides.
#   3. Otherwise the backend with more rules; nft on a tie (a fresh node).
#
# Reading the legacy tables needs NET_RAW (see deploy/unprivileged-patch.yaml).
set -eu

has_chain() { # backend chain
	"iptables-$1" -w 5 -t mangle -S "$2" >/dev/null 2>&1 ||
		"ip6tables-$1" -w 5 -t mangle -S "$2" >/dev/null 2>&1
}

rules() { # backend
	{ "iptables-$1-save" 2>/dev/null || true; "ip6tables-$1-save" 2>/dev/null || true; } | grep -c '^-' || true
}

mode=${SWITCHYARD_IPTABLES_MODE:-}
if [ -z "$mode" ]; then
	for chain in KUBE-IPTABLES-HINT KUBE-KUBELET-CANARY; do
		if has_chain nft "$chain"; then
			mode=nft
		elif has_chain legacy "$chain"; then
			mode=legacy
		fi
		[ -n "$mode" ] && break
	done
fi
if [ -z "$mode" ]; then
	mode=nft
	if [ "$(rules legacy)" -gt "$(rules nft)" ]; then
		mode=legacy
	fi
fi
case "$mode" in
legacy | nft) ;;
*)
	echo "select-iptables: SWITCHYARD_IPTABLES_MODE=$mode: must be legacy or nft" >&2
	exit 2
	;;
esac
update-alternatives --set iptables "/usr/sbin/iptables-$mode" >/dev/null
update-alternatives --set ip6tables "/usr/sbin/ip6tables-$mode" >/dev/null
echo "select-iptables: iptables backend $mode" >&2
[ "$#" -gt 0 ] || set -- /switchyard
exec "$@"
