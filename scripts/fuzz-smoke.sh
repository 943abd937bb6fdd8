#!/usr/bin/env bash
# A short fuzz run of every target of every fuzz crate (default 30 s each), as CI does.
# Works on a stable toolchain: RUSTC_BOOTSTRAP lets stable rustc accept the sanitizer flags
# cargo-fuzz passes. Longer runs: `FUZZ_SECONDS=600 bash scripts/fuzz-smoke.sh`; one crate
# or target: `FUZZ_CRATES=dataplane FUZZ_TARGETS=xdp_ingress bash scripts/fuzz-smoke.sh`.
# Targets, seeds and the last long runs' numbers: docs/FUZZING.md.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
seconds="${FUZZ_SECONDS:-30}"
# Every crate with a cargo-fuzz crate in <crate>/fuzz.
crates="${FUZZ_CRATES:-proto control dataplane sdk}"
only="${FUZZ_TARGETS:-}"
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
target_dir="${CARGO_FUZZ_TARGET_DIR:-$HOME/.cache/petrel-fuzz-target}"
ran=0
for crate in $crates; do
  cd "$root/$crate"
  for target in $(cargo fuzz list); do
    if [[ -n "$only" && " $only " != *" $target "* ]]; then
      continue
    fi
    corpus="fuzz/corpus/$target"
    mkdir -p "$corpus" "fuzz/artifacts/$target"
    dict=()
    if [[ -f "fuzz/$target.dict" ]]; then
      dict=(-dict="fuzz/$target.dict")
    fi
    echo "fuzz: $crate/$target for ${seconds}s"
    log=$(mktemp)
    status=0
    RUSTC_BOOTSTRAP=1 cargo fuzz run --target-dir "$target_dir" "$target" "$corpus" "fuzz/seeds/$target" -- \
      "${dict[@]}" -max_total_time="$seconds" -artifact_prefix="fuzz/artifacts/$target/" >"$log" 2>&1 || status=$?
    grep -E '^#[0-9]+[[:space:]]+DONE|ERROR|SUMMARY|panicked' "$log" || true
    if ((status != 0)); then
      tail -40 "$log" >&2
      echo "fuzz: $crate/$target failed (exit $status); crashing inputs, if any, are in $crate/fuzz/artifacts/$target" >&2
      exit 1
    fi
    rm -f "$log"
    ran=$((ran + 1))
  done
done
if ((ran == 0)); then
  echo "fuzz: no target ran (FUZZ_CRATES='$crates' FUZZ_TARGETS='$only')" >&2
  exit 1
fi
echo "fuzz: $ran targets, ${seconds}s each, no crash"
