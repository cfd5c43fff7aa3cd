#!/usr/bin/env bash
# Installs Debian's chromium and chromedriver for the console's browser
# test (tests/it/console_browser.rs) when they are missing. `make test`
# runs it next to the test build (`make -j`), so the download overlaps the
# compile rather than adding to it.
#
# Needs apt-get (Debian, Ubuntu) and root, or sudo without a password.
# Environment:
#   CHROMIUM_BIN, CHROMEDRIVER_BIN  when both are set (and executable), a
#                                   browser installed elsewhere is used and
#                                   nothing is installed.
set -euo pipefail

say() { printf 'install-browser: %s\n' "$*"; }

if [[ -n "${CHROMIUM_BIN:-}" && -n "${CHROMEDRIVER_BIN:-}" ]]; then
    if [[ -x "$CHROMIUM_BIN" && -x "$CHROMEDRIVER_BIN" ]]; then
        exit 0
    fi
    say "error: CHROMIUM_BIN=$CHROMIUM_BIN or CHROMEDRIVER_BIN=$CHROMEDRIVER_BIN is not an executable" >&2
    exit 1
fi

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    say "error: chromium and chromedriver are missing and there is no apt-get to install them;" >&2
    say "       install both, or set CHROMIUM_BIN and CHROMEDRIVER_BIN" >&2
    exit 1
fi

if [[ "$(id -u)" == 0 ]]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    say "error: installing chromium needs root: run 'sudo apt-get install chromium chromium-driver'" >&2
    say "       (or this script as root), or set CHROMIUM_BIN and CHROMEDRIVER_BIN" >&2
    exit 1
fi

# Serialise concurrent runs on one machine (apt holds its own lock, and
# would fail rather than wait).
if command -v flock >/dev/null 2>&1; then
    exec 9>/tmp/ledgerline-install-browser.lock
    flock 9
    if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
        exit 0
    fi
fi

export DEBIAN_FRONTEND=noninteractive
say "apt-get installing chromium chromium-driver"
if ! "${as_root[@]}" apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; then
    say "package lists may be stale: apt-get update, then again"
    "${as_root[@]}" apt-get update -qq
    "${as_root[@]}" apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    say "error: apt-get succeeded but chromium or chromedriver is not on PATH" >&2
    exit 1
fi
say "ok: $(chromium --version 2>/dev/null), $(chromedriver --version 2>/dev/null | cut -d' ' -f1-2)"
