#!/usr/bin/env bash
# What nginx in front of Petrel costs (docs/OPERATIONS.md, "Behind nginx"): one Petrel,
# run with the shipped scripts/deploy/nginx/ configuration, and `petrel bench` against
# five ways in, in alternating rounds:
#   direct        Petrel's own plaintext listener (no PROXY header)
#   nginx         nginx's TCP port 9500 -> Petrel's PROXY listeners
#   direct-tls    Petrel's own TLS listener
#   tls-at-nginx  nginx ends TLS on 9543, plaintext + PROXY to Petrel
#   tls-through   nginx passes TLS through on 9443, Petrel ends it (PROXY + TLS)
# Everything runs in a network namespace of its own (the shipped ports are fixed), and
# it is removed afterwards, also on failure. Petrel and nginx share SERVER_CPUS (a
# balancer on the same box), the load generator gets CLIENT_CPUS. Prints each run's
# bench summary and the CPU time nginx and Petrel spent during it.
#
# Usage: scripts/bench/behind-nginx.sh [BENCH ARGS...]
#   e.g. scripts/bench/behind-nginx.sh --pairs 100 --rate 10000 --duration 8
#
# Environment:
#   PETREL       petrel binary [default: $CARGO_TARGET_DIR/release/petrel]
#   SERVER_CPUS  taskset list for Petrel and nginx [default: 0]
#   CLIENT_CPUS  taskset list for the load generator [default: 1]
#   ROUNDS       rounds over the five ways in [default: 2]
#   WAYS         which ways, space separated [default: all five]
#   SYNC         Petrel's `sync` mode [default: none, so the disk's fsync latency does not
#                hide the hop's; batch for the durable figures]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
source "$here/../env.sh"
source "$here/lib.sh"
PETREL=${PETREL:-$CARGO_TARGET_DIR/release/petrel}
SERVER_CPUS=${SERVER_CPUS:-0}
CLIENT_CPUS=${CLIENT_CPUS:-1}
ROUNDS=${ROUNDS:-2}
WAYS=${WAYS:-direct nginx direct-tls tls-at-nginx tls-through}
SYNC=${SYNC:-none}
[[ -x $PETREL ]] || { echo "behind-nginx: no petrel binary at $PETREL" >&2; exit 1; }
command -v nginx >/dev/null || { echo "behind-nginx: no nginx (scripts/setup.sh installs it)" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || { echo "behind-nginx: needs root (a network namespace)" >&2; exit 1; }
bench_args=("$@")
[[ ${#bench_args[@]} -gt 0 ]] || bench_args=(--pairs 100 --rate 10000 --duration 8)

ns=petrel-ngx-bench-$$
data=$(mktemp -d /tmp/petrel-nginx.XXXXXX)
pid=
server=
cleanup() {
  [[ -f $data/nginx.pid ]] && ip netns exec "$ns" kill -TERM "$(cat "$data/nginx.pid")" 2>/dev/null || true
  [[ -n ${server:-} ]] && stop_server "$server"
  [[ -n $pid ]] && kill "$pid" 2>/dev/null || true
  sleep 0.5
  ip netns delete "$ns" 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up
in_ns() { ip netns exec "$ns" "$@"; }

make_test_cert "$data"
# The shipped Petrel config, plus a direct plaintext (9630) and TLS (9631) listener that
# expect no PROXY header, a temporary data directory and the test certificate; the
# per-address limit is off (every bench connection comes from 127.0.0.1).
sed -e "s#^data_dir = .*#data_dir = \"$data\"#" \
    -e 's#^listen = \[$#listen = ["127.0.0.1:9630",#' \
    -e 's#^listen = \["127.0.0.1:9511",#listen = ["127.0.0.1:9631", "127.0.0.1:9511",#' \
    -e "s#/etc/petrel/tls/fullchain.pem#$data/tls.crt#; s#/etc/petrel/tls/privkey.pem#$data/tls.key#" \
    -e 's#^max_connections_per_address = .*#max_connections_per_address = 0#' \
    -e '/^log_format/d; /^metrics_addr/d' \
    "$repo/scripts/deploy/nginx/petrel-behind-nginx.toml" >"$data/petrel.toml"
sed -i "/^max_connections = /a log_level = \"warn\"\nrate_limit_per_second = 0\nsync = \"$SYNC\"" "$data/petrel.toml"
sed -e "s#/etc/petrel/tls/fullchain.pem#$data/tls.crt#; s#/etc/petrel/tls/privkey.pem#$data/tls.key#" \
  "$repo/scripts/deploy/nginx/nginx.conf" >"$data/nginx.conf"

in_ns taskset -c "$SERVER_CPUS" "$PETREL" serve --config "$data/petrel.toml" --cores 0 \
  >"$data/serve.out" 2>"$data/serve.err" &
pid=$!
wait_for_banner "$pid" "$data/serve.out" ||
  { cat "$data/serve.err" >&2; echo "behind-nginx: server did not start" >&2; exit 1; }
# `ip netns exec` forks: the server is its child.
server=$(pgrep -n -f "serve --config $data/petrel.toml")
in_ns taskset -c "$SERVER_CPUS" nginx -c "$data/nginx.conf" \
  -g "pid $data/nginx.pid; error_log $data/nginx.err warn;"
for _ in $(seq 50); do [[ -s $data/nginx.pid ]] && break; sleep 0.1; done
[[ -s $data/nginx.pid ]] || { cat "$data/nginx.err" >&2; exit 1; }

# CPU ticks (user + system) of the given processes.
cpu_of() {
  local total=0 ticks p
  for p in "$@"; do
    ticks=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)
    total=$((total + ticks))
  done
  echo "$total"
}
# This nginx: its master and the master's workers.
nginx_pids() {
  local master
  master=$(cat "$data/nginx.pid")
  echo "$master $(pgrep -P "$master" -d ' ' || true)"
}
hz=$(getconf CLK_TCK)

for round in $(seq "$ROUNDS"); do
  for way in $WAYS; do
    case $way in
      direct) target=(--server 127.0.0.1:9630) ;;
      nginx) target=(--server 127.0.0.1:9500) ;;
      direct-tls) target=(--server 127.0.0.1:9631 "${tls_args[@]}") ;;
      tls-at-nginx) target=(--server 127.0.0.1:9543 "${tls_args[@]}") ;;
      tls-through) target=(--server 127.0.0.1:9443 "${tls_args[@]}") ;;
      *) echo "behind-nginx: unknown way $way" >&2; exit 2 ;;
    esac
    # shellcheck disable=SC2046 # a list of pids
    n0=$(cpu_of $(nginx_pids)); p0=$(cpu_of "$server")
    echo "=== round $round: $way"
    in_ns taskset -c "$CLIENT_CPUS" "$PETREL" bench chat1v1 "${bench_args[@]}" "${target[@]}" \
      --key-file "$data/keys" --server-pid "$server" --quiet
    # shellcheck disable=SC2046
    n1=$(cpu_of $(nginx_pids)); p1=$(cpu_of "$server")
    awk -v n=$((n1 - n0)) -v p=$((p1 - p0)) -v hz="$hz" \
      'BEGIN { printf "cpu: nginx %.2f s, petrel %.2f s\n", n / hz, p / hz }'
  done
done
