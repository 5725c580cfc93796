# Tern: the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: run test lint fmt tools bench bench-micro bench-lorawan fuzz-smoke e2e build

## Make sure protoc and other system tools are present (installed from Debian when missing).
tools:
	@scripts/ensure-tools.sh

build: tools
	$(CARGO) build --release --workspace

## Build and start the stack: all five roles in one process, embedded defaults,
## HTTP on :1885 (/healthz, /readyz, /metrics) and gRPC on :1884. Ctrl-C stops it.
run: tools
	TERN_GIT_COMMIT=$$(git rev-parse --short HEAD 2>/dev/null) $(CARGO) run --release -p tern -- start

## The whole test suite: unit, property, vector and CLI tests, then doc tests.
## Tests that need PostgreSQL get a throwaway server (scripts/test-postgres.sh), unless
## TERN_TEST_POSTGRES_URL already names one; etcd and nats-server are started by the tests.
test: tools
	@url="$${TERN_TEST_POSTGRES_URL:-$$(scripts/test-postgres.sh start)}" && \
	export TERN_TEST_POSTGRES_URL="$$url" && \
	export TERN_TEST_POSTGRES_CA="$${TERN_TEST_POSTGRES_CA:-$$(scripts/test-postgres.sh ca)}" && \
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --all-targets --no-fail-fast; \
	else \
		$(CARGO) test --workspace --all-targets --no-fail-fast; \
	fi
	$(CARGO) test --workspace --doc
	@scripts/chart-test.sh

## The Helm chart: lint, render and strict Kubernetes-schema validation of every topology,
## each tern.toml through `tern config`, and negative cases that must fail (needs PyPI once:
## a venv in target/chart-venv). Also part of `make test`.
.PHONY: chart-test
chart-test:
	scripts/chart-test.sh

## Formatting and lints, as CI runs them.
lint: tools
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## End-to-end benchmark (bench/README.md): `tern start` driven over real UDP and MQTT;
## prints the table and writes bench/results/<date>-<commit>.json and a plot.
## Flags: make bench BENCH_FLAGS="--quick" (or --runs N, --profile, --devices N, --out DIR).
BENCH_FLAGS ?= --runs 3
BENCH_TARGET = $${CARGO_TARGET_DIR:-target}
bench: tools
	$(CARGO) build --release -p tern -p tern-bench
	$(BENCH_TARGET)/release/tern-bench --tern $(BENCH_TARGET)/release/tern --out bench/results $(BENCH_FLAGS)

## Criterion micro-benchmarks of every crate.
bench-micro: tools
	$(CARGO) bench --workspace

## Criterion benchmarks of decode, MIC and decrypt of a 20-byte uplink.
bench-lorawan:
	$(CARGO) bench -p lorawan --bench uplink

## A short libFuzzer run of every fuzz target (not in CI: it builds libFuzzer first).
FUZZ_SECONDS ?= 30
fuzz-smoke:
	scripts/fuzz-smoke.sh $(FUZZ_SECONDS)

## End-to-end scenarios (e2e/): real `tern` processes driven by simulated gateways and
## devices, checked through real clients; the cluster scenario gets the throwaway
## PostgreSQL (also part of `make test`).
e2e: tools
	$(CARGO) build -p tern -p ternctl
	@url="$${TERN_TEST_POSTGRES_URL:-$$(scripts/test-postgres.sh start)}" && \
	export TERN_TEST_POSTGRES_URL="$$url" && \
	$(CARGO) test -p tern-e2e
