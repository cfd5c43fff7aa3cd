# ledgerline — the two commands of the README, and their parts.
#
#   make demo   install what is missing, build (release), run the demo:
#               nats-server, receivers, the pipeline, out/ledger.csv
#   make test   install what is missing, then format check, clippy,
#               cargo deny (licenses, bans, sources), all tests
#
# Pinned external tools (nats-server, bean-check, an SMTP sink, cargo-deny)
# live in .tools/ (git-ignored), installed by scripts/install-tools.sh.

SHELL := /bin/bash
export PATH := $(CURDIR)/.tools/bin:$(PATH)
# Property tests run this many cases each (CI: 1,000).
export PROPTEST_CASES ?= 1000
# The release binary, wherever cargo puts it.
BIN := $(or $(CARGO_TARGET_DIR),target)/release/ledgerline

.PHONY: demo test tools build lint bench clean-tools

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

demo: tools build
	$(BIN) demo --out out

bench: tools
	cargo bench --locked

clean-tools:
	rm -rf .tools
