#!/usr/bin/env bash
# A short fuzz run of every fuzz target (default 30 s each), as CI does. Works on a stable
# toolchain: RUSTC_BOOTSTRAP lets stable rustc accept the sanitizer flags cargo-fuzz passes.
# Longer runs: `FUZZ_SECONDS=600 bash scripts/fuzz-smoke.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-30}"
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
target_dir="${CARGO_FUZZ_TARGET_DIR:-$HOME/.cache/petrel-fuzz-target}"
cd proto
for target in $(cargo fuzz list); do
  corpus="fuzz/corpus/$target"
  mkdir -p "$corpus"
  echo "fuzz: $target for ${seconds}s"
  log=$(mktemp)
  status=0
  RUSTC_BOOTSTRAP=1 cargo fuzz run --target-dir "$target_dir" "$target" "$corpus" "fuzz/seeds/$target" -- \
    -dict="fuzz/$target.dict" -max_total_time="$seconds" >"$log" 2>&1 || status=$?
  grep -E '^#[0-9]+[[:space:]]+DONE|ERROR|SUMMARY|panicked' "$log" || true
  if ((status != 0)); then
    tail -40 "$log" >&2
    echo "fuzz: $target failed (exit $status); crashing inputs, if any, are in proto/fuzz/artifacts/$target" >&2
    exit 1
  fi
  rm -f "$log"
done
