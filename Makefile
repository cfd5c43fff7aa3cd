# ledgerline — the two commands of the README, and their parts.
#
#   make demo   install what is missing, build (release), run the demo:
#               nats-server, receivers, the pipeline, out/ledger.csv
#   make test   install what is missing (chromium for the console's browser
#               test too), then format check, cargo deny (licenses, bans,
#               sources), the test build linted by clippy, all tests
#   make lint   format check, cargo deny, clippy and rustdoc (every doc link)
#   make chaos  the long form of the chaos test (tests/it/chaos.rs): 3,000
#               orders, 10 SIGKILLs, 3 nats-server restarts, a failing receiver
#   make fuzz   cargo-fuzz: each target for FUZZ_SECONDS (not part of `make test`;
#               docs/fuzzing.md)
#
# Pinned external tools (nats-server, bean-check, an SMTP sink, cargo-deny)
# live in .tools/ (git-ignored), installed by scripts/install-tools.sh.

SHELL := /bin/bash
export PATH := $(CURDIR)/.tools/bin:$(PATH)
# Property tests run this many cases each (CI: 1,000).
export PROPTEST_CASES ?= 1000
# The release binary, wherever cargo puts it.
BIN := $(or $(CARGO_TARGET_DIR),target)/release/ledgerline

.PHONY: demo test chaos tools browser build build-tests lint lint-fast clippy doc doc-check run-tests bench clean-tools fuzz fuzz-cmin fuzz-tools

tools:
	@scripts/install-tools.sh

# Debian's chromium and chromedriver, for the console's browser test
# (tests/it/console.rs); installed only when missing.
browser:
	@scripts/install-browser.sh

build:
	cargo build --release --locked

# cargo deny: licences, banned crates (a second TLS stack) and sources, per
# deny.toml. Advisories need github.com (RustSec), so they are not run here;
# see README, Tests.
lint: tools lint-fast clippy doc-check

# Clippy on its own (`make clippy`), in its own target folder. `make test`
# does not run this: its one test build is linted by clippy as it compiles
# (TEST_ENV below), so the code is compiled once, not checked and built.
CLIPPY_TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)/clippy
clippy:
	CARGO_TARGET_DIR=$(CLIPPY_TARGET_DIR) cargo clippy --locked --all-targets -- -D warnings

# The code's documentation (module docs included), in target/doc.
doc:
	RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps --document-private-items

# Every doc link checked (rustdoc, warnings denied), in its own target
# folder. Part of `make lint`, not of `make test`: rustdoc needs its own
# check build of every dependency (≈ 95 s of CPU), which kept a fresh
# clone's `make test` above 5 minutes on 2 cores.
DOC_TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)/doc-check
doc-check:
	CARGO_TARGET_DIR=$(DOC_TARGET_DIR) RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps --document-private-items

lint-fast:
	cargo fmt --check
	cargo deny --locked check --hide-inclusion-graph licenses bans sources

# The test build is compiled by clippy-driver (what `cargo clippy` runs,
# here with code generation): every target (`--all-targets`: the library,
# the binary, the tests, the benches) is linted with warnings denied while
# it is built, so clippy costs no second compile of the dependencies.
# No incremental cache: a fresh build is faster without one. Where the
# build's time went: target/cargo-timings/cargo-timing.html.
# The toolchain's own clippy-driver (it must match rustc), else one on PATH.
CLIPPY_DRIVER := $(firstword $(wildcard $(shell rustc --print sysroot 2>/dev/null)/bin/clippy-driver) $(shell command -v clippy-driver 2>/dev/null))
TEST_ENV = RUSTC_WORKSPACE_WRAPPER=$(CLIPPY_DRIVER) CLIPPY_ARGS=-Dwarnings CARGO_INCREMENTAL=0

# Most integration tests wait on NATS, sockets and timers rather than
# compute, so they run several at a time even on two cores.
TEST_THREADS ?= 6
run-tests:
	$(TEST_ENV) cargo test --locked -- --test-threads $(TEST_THREADS)

build-tests:
	@test -n "$(CLIPPY_DRIVER)" || { echo "clippy-driver not found: rustup component add clippy" >&2; exit 1; }
	$(TEST_ENV) cargo test --locked --no-run --all-targets --timings

# The tests are built, and linted, first (while the browser is installed, if
# it is missing: the download overlaps the compile); then they run. Each
# one's output is printed whole when it ends; any failing fails `make test`.
test: tools lint-fast
	$(MAKE) --no-print-directory -j2 --output-sync=target build-tests browser
	$(MAKE) --no-print-directory run-tests

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

# Fuzzing with cargo-fuzz (libFuzzer). Stable Rust: RUSTC_BOOTSTRAP=1 lets it
# use the nightly flags it needs. Each target runs FUZZ_SECONDS, one after
# the other; new inputs go to fuzz/work/<target> (git-ignored), the committed
# corpus fuzz/corpus/<target> is only read. `make fuzz-cmin` folds what a run
# found back into the committed corpus, cut to FUZZ_CORPUS_MAX inputs per
# target. See docs/fuzzing.md.
FUZZ_SECONDS ?= 600
FUZZ_TARGETS ?= events config records
# Inputs kept per target in the committed corpus (the ones covering most edges).
FUZZ_CORPUS_MAX ?= 80
FUZZ_TARGET_DIR ?= $(if $(CARGO_TARGET_DIR),$(CARGO_TARGET_DIR)-fuzz,fuzz/target)
FUZZ = env RUSTC_BOOTSTRAP=1 cargo fuzz
FUZZ_BUILD_FLAGS = -s none --target-dir $(FUZZ_TARGET_DIR)

fuzz-tools:
	@command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz --version 0.13.2 --root .tools

fuzz: fuzz-tools
	@set -e; for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/work/$$t fuzz/corpus/$$t; \
	  case $$t in events) len=32768;; *) len=8192;; esac; \
	  echo "== fuzz $$t for $(FUZZ_SECONDS) s"; \
	  nice -n 10 $(FUZZ) run $(FUZZ_BUILD_FLAGS) $$t fuzz/work/$$t fuzz/corpus/$$t -- \
	    -dict=fuzz/dicts/$$t.dict -max_len=$$len \
	    -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1; \
	done

fuzz-cmin: fuzz-tools
	@set -e; host=$$(rustc -vV | sed -n 's/^host: //p'); \
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/work/$$t fuzz/corpus/$$t; \
	  $(FUZZ) build $(FUZZ_BUILD_FLAGS) $$t; \
	  tmp=$$(mktemp -d); \
	  $(FUZZ_TARGET_DIR)/$$host/release/$$t -merge=1 -use_counters=0 -max_len=32768 \
	    -merge_control_file=$$tmp/control $$tmp fuzz/corpus/$$t fuzz/work/$$t; \
	  python3 scripts/fuzz-corpus-cut.py $$tmp/control fuzz/corpus/$$t $(FUZZ_CORPUS_MAX); \
	  rm -rf $$tmp; \
	done
