# misim: `make test` runs every check CI runs, installing what it needs itself.
SHELL := /bin/bash
CARGO ?= cargo
MISIM_BIN ?= $(CURDIR)/target/debug/misim

.PHONY: test fmt-check clippy rust-test interop build bench docker-e2e

test: fmt-check clippy rust-test interop docker-e2e

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

rust-test:
	$(CARGO) test --workspace --locked

build:
	$(CARGO) build --locked --bin misim

# Official clients (MSAL, azure-identity, azure-mgmt-*) against a real `misim up`, from a pinned
# venv; then the az CLI (its own pinned venv) and the Rust azure_identity crate (its own lock
# file), each inside a network namespace holding only loopback.
interop: build
	MISIM_BIN=$(MISIM_BIN) tests/interop/run.sh
	MISIM_BIN=$(MISIM_BIN) tests/interop/az/run.sh
	MISIM_BIN=$(MISIM_BIN) tests/interop/rust/run.sh
	MISIM_BIN=$(MISIM_BIN) tests/interop/vm_exec/run.sh

# The docker compose environment (docker/compose.yaml): images built offline from this
# checkout's binary, two example apps as VMs, failure cases; skipped loudly without Docker.
docker-e2e: build
	MISIM_BIN=$(MISIM_BIN) tests/docker/run.sh

# Throughput and start-up benchmarks (see docs/performance.md).
bench:
	$(CARGO) build --release --locked --bin misim --bin misim-bench
	./target/release/misim-bench --misim ./target/release/misim
