#!/usr/bin/env bash
# Runs Petrel's whole test suite from a fresh clone: installs what is missing, then runs
# every workspace test (unit, integration, doc tests).
#
# The first run builds RocksDB's C++ (about 13 minutes on 2 cores); later runs reuse it
# from the shared target directory (scripts/env.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
# Tests that need root (the veth lab, XDP, AF_XDP, network namespaces, the disk-full
# test's tmpfs) are #[ignore]d with the reason, so a run without root lists them as
# skipped rather than passing them untested. As root they run too, and in CI always: there a missing privilege fails them
# loudly.
root_only=()
if [[ $(id -u) -eq 0 || -n ${CI:-} ]]; then
  root_only=(--run-ignored all)
else
  echo "test.sh: not root: the root-only tests (AF_XDP, veth lab, namespaces, disk full) are skipped" >&2
fi
cargo nextest run --workspace --no-fail-fast "${root_only[@]}" "$@"
# The end-to-end suites again with the server on one core (the home core alone, no rings
# between cores); the run above used every CPU. Both dataplanes: with AF_XDP the one
# loop reads both of the lab's queues.
PETREL_TEST_CORES=1 cargo nextest run -p petrel --no-fail-fast \
  --test serve --test scenarios --test many_connections --test sdk --test ops_metrics \
  "${root_only[@]}" "$@"
# nextest does not run doc tests; they are part of the suite too.
cargo test --workspace --doc
