#!/usr/bin/env bash
# Installs cargo-deny, pinned, from crates.io into .tools/bin/ (gitignored), for `make deny`.
# Built from source with its own Cargo.lock (--locked), so a new release of one of its
# dependencies cannot change the tool.
#
# The build takes several minutes, and CI runs in a fresh clone each time: so the binary is built
# once per machine into a cache outside the clone (~/.cache/dynamodb-nakadi-relay/) and copied
# from there. Idempotent: with the pinned version already in place it takes well under a second.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
CARGO_DENY_VERSION="0.20.2"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/dynamodb-nakadi-relay/cargo-deny-$CARGO_DENY_VERSION"

log() { printf 'install-cargo-deny: %s\n' "$*"; }
pinned() { [[ -x "$1" && "$("$1" --version 2>/dev/null)" == "cargo-deny $CARGO_DENY_VERSION" ]]; }

if pinned "$TOOLS/bin/cargo-deny"; then
  log "cargo-deny $CARGO_DENY_VERSION already in $TOOLS/bin"
  exit 0
fi
if ! pinned "$CACHE/bin/cargo-deny"; then
  log "building cargo-deny $CARGO_DENY_VERSION from crates.io into $CACHE (takes a few minutes)"
  # Its own target directory, so the project's target/ stays untouched.
  CARGO_TARGET_DIR="$CACHE/build" \
    cargo install --quiet --locked --root "$CACHE" "cargo-deny@$CARGO_DENY_VERSION"
  rm -rf "$CACHE/build"
fi
mkdir -p "$TOOLS/bin"
install -m 0755 "$CACHE/bin/cargo-deny" "$TOOLS/bin/cargo-deny"
log "installed $("$TOOLS/bin/cargo-deny" --version) into $TOOLS/bin"
