#!/usr/bin/env bash
# Installs cargo-deny, pinned, from crates.io into .tools/bin/ (gitignored), for `make deny`.
# Built from source with its own Cargo.lock (--locked), so a new release of one of its
# dependencies cannot change the tool. Idempotent: a binary already at the pinned version is
# left alone, so a second run takes well under a second. The first build takes several minutes.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
CARGO_DENY_VERSION="0.20.2"

log() { printf 'install-cargo-deny: %s\n' "$*"; }

if [[ -x "$TOOLS/bin/cargo-deny" ]] \
   && [[ "$("$TOOLS/bin/cargo-deny" --version 2>/dev/null)" == "cargo-deny $CARGO_DENY_VERSION" ]]; then
  log "cargo-deny $CARGO_DENY_VERSION already in $TOOLS/bin"
  exit 0
fi
log "building cargo-deny $CARGO_DENY_VERSION from crates.io into $TOOLS/bin (takes a few minutes)"
# Its own target directory: the project's target/ stays untouched, and a failed build is retried
# from where it stopped.
CARGO_TARGET_DIR="$TOOLS/build/cargo-deny" \
  cargo install --quiet --locked --root "$TOOLS" "cargo-deny@$CARGO_DENY_VERSION"
rm -rf "$TOOLS/build/cargo-deny"
log "installed $("$TOOLS/bin/cargo-deny" --version)"
