#!/usr/bin/env bash
# Builds and starts Petrel from a fresh clone with default settings. Extra arguments go to
# `petrel serve` (see `petrel serve --help` and docs/CONFIGURATION.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
cargo build --release --bin petrel
exec "$CARGO_TARGET_DIR/release/petrel" serve "$@"
