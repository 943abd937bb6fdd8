#!/usr/bin/env bash
# Crash soak against the release build: SDK clients under mixed load (one-to-one, group,
# chatroom, history, sync after every reconnect) while `petrel serve` is SIGKILLed at
# random points and restarted on the same data directory. After every restart it checks
# that each outbox drains, every acked message is stored exactly once at its acked seq
# with gap-free seqs, and no client was shown a message twice; then prints a summary
# (kills, messages acked, lost, duplicated, elapsed).
#
# Usage: scripts/soak.sh [KILLS]      (default 20)
#   SOAK_SEED=N      replays a run (the seed is printed at the start and in the summary)
#   SOAK_CLIENTS=N   SDK clients (default 8)
#
# The driver is the test tests/soak.rs (the test suite runs it with 3 kills), built with
# the release profile so the server under test is the release `petrel` binary.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
export SOAK_KILLS=${1:-${SOAK_KILLS:-20}}
cargo nextest run --release -p petrel --test soak --no-capture
