# Capstan's entry points. `make demo` and `make test` work on a fresh machine: they install what
# they need (Debian packages, the control plane built from Go modules) and are safe to repeat.

SHELL := /bin/bash
ENV := tests/env
# The control plane that `make up` / `make demo` keep running for people (tests start their own).
DEV_DIR ?= $(HOME)/.cache/capstan/dev

.PHONY: test lint unit crds demo up down env tools bench

## test: formatting, lints, unit tests and integration tests against a real control plane
test: tools
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	cargo test

## tools: build (once) the pinned control plane and render tools; install git server and Prometheus packages
tools:
	@$(ENV)/controlplane.sh build >/dev/null
	@$(ENV)/rendertools.sh build >/dev/null
	@$(ENV)/gitserver.sh install
	@$(ENV)/prometheus.sh install

## bench: the benchmark scenarios (all, or SCENARIOS="cold steady latency drift scale fetch");
## a full run rewrites docs/benchmarks.md
bench: tools
	cargo bench --bench capstan -- $(SCENARIOS)

## crds: regenerate crds/ and the Helm chart's copy from the Rust types
crds:
	cargo run --quiet -- crd --output-dir crds
	cargo run --quiet -- crd --output-dir deploy/helm/capstan/crds

## demo: a local control plane and git server, with the GitRepository CRD installed
demo:
	examples/demo.sh

## up / down / env: a long-lived control plane for development, in $(DEV_DIR)
up:
	@$(ENV)/controlplane.sh up $(DEV_DIR)
down:
	@$(ENV)/controlplane.sh down $(DEV_DIR)
env:
	@$(ENV)/controlplane.sh env $(DEV_DIR)
