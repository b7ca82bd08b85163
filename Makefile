# switchyard — build and test entry points. Every target installs what it
# needs (scripts/ensure-deps.sh) so a fresh Debian machine works.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
GO ?= go
# Minimum number of passing host tests: fewer means tests silently vanished.
MIN_HOST_TESTS ?= 40

.PHONY: all build deps vet test test-unit test-vm test-demo demo bench-sync generate bench-rebalance cluster-bins test-e2e bench-scale

all: build

build:
	$(GO) build -o bin/switchyard ./cmd/switchyard
	$(GO) build -o bin/yardctl ./cmd/yardctl

deps:
	bash scripts/ensure-deps.sh

vet:
	$(GO) vet ./...

# Host tests: unit tests against fakes plus real-kernel tests in network
# namespaces (iptables, ipset, netns helpers). Needs root for the latter.
test-unit: deps vet
	$(GO) test -count=1 -timeout 20m -json ./... | $(GO) run ./test/cmd/testsummary $(MIN_HOST_TESTS)

# Real IPVS: boots a Debian kernel under qemu with the test/ipvsvm tests as
# /init (see test/vm). The kernel package is cached in .cache/vm.
test-vm: deps
	$(GO) run ./test/vm/cmd/vmtest -pkg ./test/ipvsvm -agent ./cmd/switchyard -timeout 20m $(if $(RUN),-run '$(RUN)') $(if $(V),-v)

# The README's first command: namespaces for a node, a client and backend
# pods on this machine, the agent on examples/, traffic shown; Ctrl-C ends it.
demo:
	bash scripts/demo.sh

# Regenerates the BPF objects (ebpf/socklb_bpf*.{go,o}) from ebpf/socklb.c
# with bpf2go; installs clang from Debian packages when missing. Building
# never needs this: the generated files are committed.
generate:
	bash scripts/ensure-deps.sh bpf
	$(GO) generate ./ebpf/

# The demo, run once without waiting: proves `make demo` works here.
test-demo:
	bash scripts/demo.sh --once

# One endpoint change at 1k and 10k Services: desired-state time and
# allocations per dataplane, kernel operations (IPVS) and netlink messages
# (nftables, real kernel in a throwaway namespace) per change.
bench-sync:
	$(GO) test -run '^$$' -bench 'Desired|OneEndpointChange' -benchtime 20x ./ipvs/ ./nftables/ 2>&1 | grep -v '^[EIW][0-9]'

# Socket LB against direct pod IPs and nftables DNAT, same backends, one
# run (test/socklbbench, real kernel, needs root): connect rate and
# request/reply throughput, paths interleaved, 8 rounds; then medians and
# ratios to direct (goal: socketlb >= 0.98x). About two minutes.
bench-ebpf:
	out=$$(mktemp); trap 'rm -f "$$out"' EXIT; \
	$(GO) test -run '^$$' -bench 'SocketLB' -benchtime 1x -timeout 10m ./test/socklbbench/ -socklb.rounds 8 2>&1 | grep -v '^[EIW][0-9]' | tee "$$out"; \
	$(GO) run ./test/socklbbench/cmd/summary < "$$out"

# The connection rebalancer at scale (test/rebalancebench, real kernel,
# needs root): 1000 long-lived connections (a request every 100 ms,
# reconnect on reset) on 2 backends, the Service scaled to 4, with
# rebalancing off and on in one run on the nftables agent; prints the
# table (time to max/mean <= 1.10, resets against the minimum, failed
# requests, agent CPU) and writes docs/bench-rebalance.png. About two
# minutes. REBALANCE_FLAGS adds flags, e.g. '-rebalance.clients 100'.
bench-rebalance:
	$(GO) test -count=1 -v -run '^TestRebalanceBench$$' -timeout 15m ./test/rebalancebench/ \
		-rebalance.bench -rebalance.png '$(CURDIR)/docs/bench-rebalance.png' $(REBALANCE_FLAGS) 2>&1 | grep -v '^[EIW][0-9]'

# switchyard against upstream kube-proxy (nftables and iptables mode) on one
# API server, each in its own network namespace (test/e2e/scalebench, real
# kernel, needs root): at 1k, 10k and 30k Services x 5 endpoints, cold full
# sync and one EndpointSlice change -> kernel programmed (read from the
# kernel), RSS, CPU idle and under 50 changes/s; prints a table per scale
# with the switchyard / kube-proxy ratios and writes docs/bench-scale.png
# (results: docs/benchmarks.md). SCALE_FLAGS adds flags, e.g.
# '-scale.services 1000,10000' to leave out 30k.
bench-scale: cluster-bins
	bash scripts/ensure-deps.sh e2e
	@command -v iptables-restore >/dev/null || { echo 'bench-scale: kube-proxy iptables mode needs iptables (apt-get install iptables)' >&2; exit 1; }
	cd test/e2e && $(GO) test -count=1 -v -run '^TestScaleBench$$' -timeout 90m ./scalebench/ \
		-scale.bench -scale.png '$(CURDIR)/docs/bench-scale.png' $(SCALE_FLAGS) 2>&1 | grep --line-buffered -v '^[EIW][0-9]'

test: test-unit test-demo test-vm test-e2e

# kube-apiserver, upstream kube-proxy and etcd for the control-plane tests,
# built from the separate Go module test/cluster (k8s.io/kubernetes and
# go.etcd.io/etcd/server/v3 as modules) into a cache keyed by its go.mod,
# go.sum and the Go version: $SWITCHYARD_CLUSTER_CACHE, else
# ${XDG_CACHE_HOME:-~/.cache}/switchyard-cluster. A cold build takes about
# 5 minutes on 2 cores; a cached one is a no-op.
cluster-bins:
	cd test/cluster && $(GO) run ./cmd/clusterbins

# The control-plane tests: test/cluster (etcd + kube-apiserver on
# loopback, the agent's RBAC, upstream kube-proxy in nftables mode in a
# network namespace) and test/e2e (the agent spec, an API server outage,
# rebalancing Events and RBAC minimality against that control plane).
# Each is its own Go module; a cold run builds Kubernetes (some 5 minutes
# on 2 cores), later runs use the cache (see cluster-bins).
MIN_E2E_TESTS ?= 20
test-e2e: cluster-bins
	bash scripts/ensure-deps.sh e2e
	cd test/cluster && $(GO) vet ./... && $(GO) test -count=1 -timeout 20m -json ./... | (cd ../.. && $(GO) run ./test/cmd/testsummary 3)
	cd test/e2e && $(GO) vet ./... && $(GO) test -count=1 -timeout 30m -json ./... | (cd ../.. && $(GO) run ./test/cmd/testsummary $(MIN_E2E_TESTS))
