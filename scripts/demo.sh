#!/usr/bin/env bash
# switchyard demo: a node, a client and four backend "pods", each in its own
# network namespace on this machine, with the agent running in the node
# namespace on the manifests in examples/. No cluster needed.
#
#   scripts/demo.sh          run, show traffic, wait for Ctrl-C, tear down
#   scripts/demo.sh --once   run, show traffic, tear down (used by the tests)
#
# Needs root. Only namespaces created here are programmed; traffic stays
# inside them.
set -euo pipefail
cd "$(dirname "$0")/.."
ONCE=0
[[ "${1:-}" == "--once" ]] && ONCE=1
[[ $EUID -eq 0 ]] || { echo "demo: run as root (it creates network namespaces)" >&2; exit 1; }

bash scripts/ensure-deps.sh >/dev/null
export PATH=/usr/local/go/bin:$PATH
mkdir -p bin
go build -o bin/switchyard ./cmd/switchyard
go build -o bin/yardecho ./test/cmd/yardecho

SUFFIX=$$
NODE=sy-node-$SUFFIX
CLIENT=sy-client-$SUFFIX
WORK=$(mktemp -d /tmp/switchyard-demo.XXXXXX)
PODS=()
PIDS=()

teardown() {
  set +e
  echo
  echo "== tearing down"
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  wait 2>/dev/null
  # The agent leaves its rules in place on exit by design; the namespace
  # goes away with them.
  for ns in "$CLIENT" "${PODS[@]}" "$NODE"; do ip netns del "$ns" 2>/dev/null; done
  rm -rf "$WORK"
}
trap teardown EXIT
trap 'exit 130' INT TERM

ip netns add "$NODE"
ip netns add "$CLIENT"
ip -n "$NODE" link set lo up
ip -n "$CLIENT" link set lo up
ip netns exec "$NODE" sysctl -qw net.ipv4.ip_forward=1

# Client <-> node: 198.18.0.0/24 (the benchmarking range).
ip link add sy-c-$SUFFIX netns "$CLIENT" type veth peer name client netns "$NODE"
ip -n "$CLIENT" link set sy-c-$SUFFIX name eth0
ip -n "$CLIENT" addr add 198.18.0.2/24 dev eth0
ip -n "$CLIENT" link set eth0 up
ip -n "$CLIENT" route add default via 198.18.0.1
ip -n "$NODE" addr add 198.18.0.1/24 dev client
ip -n "$NODE" link set client up

# Pods: routed veths, as many CNIs do: the pod has a /32 and a default route
# via the node's gateway address 10.244.1.1; the node has a /32 route per pod.
add_pod() { # name ip
  local name=$1 ip=$2 ns=sy-$1-$SUFFIX
  PODS+=("$ns")
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip link add "sy-p-$SUFFIX" netns "$ns" type veth peer name "$name" netns "$NODE"
  ip -n "$ns" link set "sy-p-$SUFFIX" name eth0
  ip -n "$ns" addr add "$ip/32" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route add 10.244.1.1 dev eth0
  ip -n "$ns" route add default via 10.244.1.1
  ip -n "$NODE" addr add 10.244.1.1/32 dev "$name"
  ip -n "$NODE" link set "$name" up
  ip -n "$NODE" route add "$ip/32" dev "$name"
}
start() { # ns args...
  local ns=$1; shift
  ip netns exec "$ns" "$@" &
  PIDS+=($!)
}
add_pod web-0 10.244.1.10
add_pod web-1 10.244.1.11
add_pod echo-0 10.244.1.30
add_pod dns-0 10.244.1.53
start sy-web-0-$SUFFIX bin/yardecho serve -name web-0 -tcp :8080
start sy-web-1-$SUFFIX bin/yardecho serve -name web-1 -tcp :8080
start sy-echo-0-$SUFFIX bin/yardecho serve -name echo-0 -tcp :8080
start sy-dns-0-$SUFFIX bin/yardecho serve -name dns-0 -udp :53

echo "== starting switchyard in namespace $NODE (log: $WORK/switchyard.log)"
start "$NODE" bin/switchyard --manifests examples --hostname-override demo-node \
  --cluster-cidr 10.244.0.0/16 --state-dir "$WORK/state" --min-sync-period 200ms -v=1 \
  >"$WORK/switchyard.log" 2>&1
AGENT=${PIDS[-1]}

# Wait (bounded) for the first sync to program the web Service.
for i in $(seq 1 50); do
  if ip netns exec "$CLIENT" bin/yardecho probe -n 1 -timeout 200ms tcp 10.96.100.10:80 >/dev/null 2>&1; then break; fi
  if ! kill -0 "$AGENT" 2>/dev/null; then echo "demo: switchyard exited:"; cat "$WORK/switchyard.log"; exit 1; fi
  sleep 0.2
done
sed -n 's/.*"Dataplane chosen" dataplane="\([a-z]*\)" reason=\(.*\)/== dataplane: \1 (\2)/p' "$WORK/switchyard.log" | head -1

status=0
probe() { # description proto addr
  echo
  echo "== $1"
  ip netns exec "$CLIENT" bin/yardecho probe -n 20 "$2" "$3" || status=1
}
probe "ClusterIP web (10.96.100.10:80) from the client: two backends" tcp 10.96.100.10:80
probe "NodePort echo (node 198.18.0.1:30080): SNAT, the backend sees the node address" tcp 198.18.0.1:30080
probe "LoadBalancer web-lb (192.0.2.10:80)" tcp 192.0.2.10:80
probe "UDP dns (10.96.100.53:53)" udp 10.96.100.53:53

if [[ $ONCE -eq 1 ]]; then
  exit $status
fi
echo
echo "== switchyard is running. Edit examples/*.yaml and re-run a probe:"
echo "   ip netns exec $CLIENT bin/yardecho probe tcp 10.96.100.10:80"
echo "   Ctrl-C tears everything down."
wait "$AGENT"
