#!/usr/bin/env bash
# One `petrel bench` run on loopback with the server and the load generator on separate
# cores (the setup the numbers in docs/PERFORMANCE.md use): `petrel serve` pinned to
# SERVER_CPUS with its dataplane loop on SERVER_CORES, `petrel bench` pinned to
# CLIENT_CPUS. The server gets a fresh temporary data directory and no rate limit, and is
# stopped (SIGTERM) afterwards, also on failure.
#
# Usage: scripts/bench/pinned.sh SCENARIO [BENCH ARGS...]
#   e.g. scripts/bench/pinned.sh chat1v1 --pairs 100 --rate 10000 --duration 10
#
# Environment:
#   PETREL         petrel binary [default: $CARGO_TARGET_DIR/release/petrel]
#   SERVER_CPUS    taskset list for the whole server process [default: 0]
#   SERVER_CORES   `petrel serve --cores` [default: 0]
#   CLIENT_CPUS    taskset list for the load generator [default: 1]
#   PORT           [default: 9630]
#   SERVE_ARGS     extra `petrel serve` flags, e.g. "--sync none" or "--poll busy"
#   FSYNC_PROBE    fdatasync calls measured on the data directory's filesystem right
#                  after the run (scripts/bench/fsync-probe.py), printed next to the
#                  bench's latencies; 0 skips it [default: 500]
#   THREAD_STATS   1: print each server thread's CPU time and run-queue wait over the
#                  bench's run (scripts/bench/thread-stats.py) [default: 0]
#   PERF_RECORD    a file: a flat `perf record` of the server over the bench's run
#                  goes there (`perf report -i FILE --sort sym`); unset: none
#   TLS            1: the server speaks TLS with a fresh self-signed certificate
#                  (openssl, P-256) and the bench connects with --tls [default: 0]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
source "$here/../env.sh"
source "$here/lib.sh"
[[ $# -ge 1 ]] || { sed -n '2,/^set -euo/p' "$0" | sed 's/^# \{0,1\}//;/^set -euo/d' >&2; exit 2; }
PETREL=${PETREL:-$CARGO_TARGET_DIR/release/petrel}
SERVER_CPUS=${SERVER_CPUS:-0}
SERVER_CORES=${SERVER_CORES:-0}
CLIENT_CPUS=${CLIENT_CPUS:-1}
PORT=${PORT:-9630}
[[ -x $PETREL ]] || { echo "pinned: no petrel binary at $PETREL" >&2; exit 1; }

data=$(mktemp -d /tmp/petrel-pinned.XXXXXX)
pid=
cleanup() {
  stop_server "$pid"
  rm -rf "$data"
}
trap cleanup EXIT

cat >"$data/petrel.toml" <<EOF
data_dir = "$data"
listen = ["127.0.0.1:$PORT"]
log_level = "warn"
rate_limit_per_second = 0
EOF
tls_args=()
if [[ ${TLS:-0} == 1 ]]; then
  make_test_cert "$data"
fi
# shellcheck disable=SC2086 # SERVE_ARGS is a word list on purpose
taskset -c "$SERVER_CPUS" "$PETREL" serve --config "$data/petrel.toml" --cores "$SERVER_CORES" \
  ${SERVE_ARGS:-} >"$data/serve.out" 2>"$data/serve.err" &
pid=$!
wait_for_banner "$pid" "$data/serve.out" ||
  { cat "$data/serve.err" >&2; echo "pinned: server did not start" >&2; exit 1; }
stats_pid=
if [[ ${THREAD_STATS:-0} == 1 ]]; then
  taskset -c "$CLIENT_CPUS" python3 "$here/thread-stats.py" --pid "$pid" >"$data/threads.out" &
  stats_pid=$!
fi
perf_pid=
if [[ -n ${PERF_RECORD:-} ]]; then
  taskset -c "$CLIENT_CPUS" perf record -q -p "$pid" -o "$PERF_RECORD" 2>"$data/perf.err" &
  perf_pid=$!
fi
taskset -c "$CLIENT_CPUS" "$PETREL" bench "$@" --server "127.0.0.1:$PORT" \
  --key-file "$data/keys" --server-pid "$pid" "${tls_args[@]}"
if [[ -n $perf_pid ]]; then
  kill -INT "$perf_pid" && wait "$perf_pid" || true
fi
if [[ -n $stats_pid ]]; then
  kill -TERM "$stats_pid" && wait "$stats_pid" || true
  cat "$data/threads.out"
fi
if [[ ${FSYNC_PROBE:-500} != 0 ]]; then
  # The disk's own fdatasync latency bounds every durable latency above: same run, same
  # filesystem, the server idle (its CPU), the probe on the client's CPU.
  taskset -c "$CLIENT_CPUS" python3 "$here/fsync-probe.py" --dir "$data" --count "${FSYNC_PROBE:-500}"
fi
