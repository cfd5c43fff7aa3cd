# ledgerline — the two commands of the README, and their parts.
#
#   make demo   install what is missing, build (release), run the demo:
#               nats-server, receivers, the pipeline, out/ledger.csv
#   make test   install what is missing, then format check, clippy,
#               cargo deny (licenses, bans, sources), all tests
#   make chaos  the long form of the chaos test (tests/it/chaos.rs): 3,000
#               orders, 10 SIGKILLs, 3 nats-server restarts, a failing receiver
#
# Pinned external tools (nats-server, bean-check, an SMTP sink, cargo-deny)
# live in .tools/ (git-ignored), installed by scripts/install-tools.sh.

SHELL := /bin/bash
export PATH := $(CURDIR)/.tools/bin:$(PATH)
# Property tests run this many cases each (CI: 1,000).
export PROPTEST_CASES ?= 1000
# The release binary, wherever cargo puts it.
BIN := $(or $(CARGO_TARGET_DIR),target)/release/ledgerline

.PHONY: demo test chaos tools build lint bench clean-tools

tools:
	@scripts/install-tools.sh

build:
	cargo build --release --locked

# cargo deny: licences, banned crates (a second TLS stack) and sources, per
# deny.toml. Advisories need github.com (RustSec), so they are not run here;
# see README, Tests.
lint: tools
	cargo fmt --check
	cargo clippy --locked --all-targets -- -D warnings
	cargo deny --locked check --hide-inclusion-graph licenses bans sources

test: tools lint
	cargo test --locked

# The chaos test's long form; override any of these, e.g. CHAOS_SEED=42.
CHAOS_ORDERS ?= 3000
CHAOS_KILLS ?= 10
CHAOS_NATS_RESTARTS ?= 3
chaos: tools
	CHAOS_ORDERS=$(CHAOS_ORDERS) CHAOS_KILLS=$(CHAOS_KILLS) CHAOS_NATS_RESTARTS=$(CHAOS_NATS_RESTARTS) \
		cargo test --locked --test it chaos -- --nocapture

demo: tools build
	$(BIN) demo --out out

bench: tools
	cargo bench --locked

clean-tools:
	rm -rf .tools
