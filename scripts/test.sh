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
# The DPDK dataplane (cargo feature `dpdk`, libdpdk-dev from setup.sh) is built and tested
# too: its unit tests, the EAL tests on net_null, and every end-to-end test's `NAME::dpdk`
# variant (root). PETREL_DPDK=0 leaves it out (a machine without DPDK).
features=()
if [[ ${PETREL_DPDK:-1} != 0 ]]; then
  features=(--features petrel/dpdk,petrel-dataplane/dpdk)
fi
root_only=()
if [[ $(id -u) -eq 0 || -n ${CI:-} ]]; then
  root_only=(--run-ignored all)
else
  echo "test.sh: not root: the root-only tests (AF_XDP, veth lab, namespaces, disk full) are skipped" >&2
fi
cargo nextest run --workspace --no-fail-fast "${features[@]}" "${root_only[@]}" "$@"
# The end-to-end suites again with the server on one core (the home core alone, no rings
# between cores); the run above used every CPU. Kernel and AF_XDP: with AF_XDP the one
# loop reads both of the lab's queues. (The DPDK variants run on one core already.)
PETREL_TEST_CORES=1 cargo nextest run -p petrel --no-fail-fast "${features[@]}" \
  --test serve --test scenarios --test many_connections --test sdk --test ops_metrics \
  -E 'not test(/::dpdk$/)' "${root_only[@]}" "$@"
# The end-to-end suites once more with one control plane on core 0 and the other core
# doing I/O only (`ownership = "home"`, the fallback layout), which the runs above do not
# use (per-core is the default; one core is the same either way).
PETREL_TEST_OWNERSHIP=home cargo nextest run -p petrel --no-fail-fast "${features[@]}" \
  --test serve --test scenarios --test sdk --test api \
  -E 'not test(/::dpdk$/)' "${root_only[@]}" "$@"
# nextest does not run doc tests; they are part of the suite too.
cargo test --workspace --doc
