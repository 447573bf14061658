# Capstan's entry points. `make demo` and `make test` work on a fresh machine: they install what
# they need (Debian packages, the control plane built from Go modules) and are safe to repeat.

SHELL := /bin/bash
ENV := tests/env
# The control plane that `make up` / `make demo` keep running for people (tests start their own).
DEV_DIR ?= $(HOME)/.cache/capstan/dev

.PHONY: test lint unit crds demo up down env tools image bench fuzz fuzz-tools screenshots

## test: formatting, lints, unit tests, integration tests against a real control plane, and the
## node tests (tests/node: the image, the chart installed with helm, the operator as a Pod; root)
test: tools
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo test --workspace
	$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=$(FUZZ_SMOKE_SECONDS) FUZZ_BUILD=--dev

# The fuzz smoke run inside `make test`: seconds per target, in an unoptimised build (half the
# build time of an optimised one on two cores; it runs the seeds and a few thousand inputs).
FUZZ_SMOKE_SECONDS ?= 20
FUZZ_SECONDS ?= 300
FUZZ_BUILD ?=
FUZZ_TARGETS := manifests urls_and_refs

## fuzz: each fuzz target for FUZZ_SECONDS (default 300), with the nightly toolchain; new inputs
## go to fuzz/corpus, crashes to fuzz/artifacts
fuzz: fuzz-tools
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/corpus/$$t; \
		echo "fuzzing $$t for $(FUZZ_SECONDS) s"; \
		cargo +nightly fuzz run $(FUZZ_BUILD) --fuzz-dir fuzz $$t fuzz/corpus/$$t fuzz/seeds/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 || exit 1; \
	done

fuzz-tools:
	@rustup run nightly rustc --version >/dev/null 2>&1 || { echo "the nightly toolchain is needed for fuzzing (rustup toolchain install nightly)"; exit 1; }
	@command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --version 0.13.2 --locked

## tools: build (once) the pinned control plane, node and render tools and Gitea; install the git
## server, Prometheus and node packages (containerd, runc, CNI plugins, buildah)
tools:
	@$(ENV)/controlplane.sh build >/dev/null
	@$(ENV)/node.sh install
	@$(ENV)/node.sh build >/dev/null
	@$(ENV)/rendertools.sh build >/dev/null
	@$(ENV)/gitserver.sh install
	@$(ENV)/prometheus.sh install
	@$(ENV)/prometheus.sh build >/dev/null
	@$(ENV)/gitea.sh build >/dev/null
	@$(ENV)/browser.sh install

## image: the controller image from the Dockerfile, built here without network (buildah); prints
## its name and size
image:
	@$(ENV)/image.sh build

## bench: the benchmark scenarios (all, or SCENARIOS="cold steady latency drift scale fetch monorepo inventory notify remote flux ui");
## each run rewrites its sections of docs/benchmarks.md; builds (once) Flux's controllers for 'flux'
bench: tools
	@$(ENV)/flux.sh build >/dev/null
	cargo bench --bench capstan -- $(SCENARIOS)

## screenshots: the web UI's main pages in headless Chromium at 1280x800 (and a phone's width),
## against the local control plane, into docs/ui/
screenshots: tools
	CAPSTAN_SCREENSHOTS=$(CURDIR)/docs/ui cargo test --test integration -- --ignored --exact ui::screenshots

## crds: regenerate crds/ and the Helm chart's copy from the Rust types
crds:
	cargo run --quiet -- crd --output-dir crds
	cargo run --quiet -- crd --output-dir deploy/helm/capstan/crds

## demo: a local node, the operator's image installed with helm, a git server, and a GitRepository
## whose Deployment runs (root; `examples/demo.sh down` stops it and restores the host)
demo:
	examples/demo.sh

## up / down / env: a long-lived control plane for development, in $(DEV_DIR)
up:
	@$(ENV)/controlplane.sh up $(DEV_DIR)
down:
	@$(ENV)/controlplane.sh down $(DEV_DIR)
env:
	@$(ENV)/controlplane.sh env $(DEV_DIR)
