#!/usr/bin/env bash
# Many idle logged-in connections on the AF_XDP dataplane, and the server's memory per
# connection: `petrel serve --dataplane xdp` on the host end of a veth lab, `petrel bench
# connect` inside the lab namespace: by default with the userspace-TCP client over
# AF_XDP (one process, sources from 10.78.0.0/16, no descriptor per connection); with
# CLIENT_MODE=kernel, kernel-TCP clients over several source addresses and worker
# processes, past the 20,000-descriptor limit of one process.
#
#   host (root namespace)                          namespace $PETREL_LAB_NS
#   $PETREL_LAB_HOST_IF  10.77.40.1  <── veth ──>  $PETREL_LAB_PEER_IF  10.77.40.2 (.. .(1+SOURCES))
#   petrel serve --dataplane xdp                   petrel bench connect -n N
#   route 10.78.0.0/16 dev $PETREL_LAB_HOST_IF       (xdp client: 10.78.0.0/16)
#
# Usage (root): scripts/bench/xdp-idle.sh [BENCH ARGS...]
#   e.g. N=100000 scripts/bench/xdp-idle.sh --duration 10
#
# Environment:
#   PETREL      petrel binary [default: $CARGO_TARGET_DIR/release/petrel]
#   N           connections [default: 100000]
#   CLIENT_MODE xdp or kernel [default: xdp]
#   SOURCES     kernel client mode: source addresses (each gets ~28,000 ports)
#               [default: N/20000 + 1]
#   MAX_CONNECTIONS  the server's max_connections [default: 2 × N]; below N the rest
#               are refused (their SYNs dropped and counted) and the bench reports how
#               many got in
#   SERVER_CPUS taskset CPU list for the server (e.g. 0, with EXTRA='cores = [0]' so its
#               one loop serves both queues) [default: not pinned]
#   CLIENT_CPUS taskset CPU list for the load generator (e.g. 1) [default: not pinned]
#   EXTRA       extra TOML lines for the server, e.g. $'xdp_tcp_rx_buffer = 512\nxdp_tcp_tx_buffer = 512'
#   LOG_LEVEL   the server's log level [default: info: its AF_XDP pollers log their
#               sockets' kernel drop counters when they stop, printed at the end]
#   OUT         directory for the server's config, data and logs [default: a temp dir]
# The lab and the server are removed on exit, also after a failure.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
source "$repo/scripts/env.sh"
source "$here/lib.sh"

export PETREL_LAB_NS=${PETREL_LAB_NS:-petrel-idle}
export PETREL_LAB_HOST_IF=${PETREL_LAB_HOST_IF:-pid-h}
export PETREL_LAB_PEER_IF=${PETREL_LAB_PEER_IF:-pid-n}
export PETREL_LAB_HOST_ADDR=10.77.40.1
export PETREL_LAB_PEER_ADDR=10.77.40.2
export PETREL_LAB_CLIENT_NET=10.78.0.0/16
CLIENT_MODE=${CLIENT_MODE:-xdp}
PETREL=${PETREL:-$CARGO_TARGET_DIR/release/petrel}
N=${N:-100000}
SOURCES=${SOURCES:-$(( N / 20000 + 1 ))}
OUT=${OUT:-$(mktemp -d /tmp/petrel-xdp-idle.XXXXXX)}

die() { echo "xdp-idle: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "must run as root (veth lab, XDP)"
[[ -x $PETREL ]] || die "no petrel binary at $PETREL (cargo build --release --bin petrel)"
(( SOURCES >= 1 && SOURCES <= 200 )) || die "SOURCES must be between 1 and 200"
[[ $CLIENT_MODE == kernel || $CLIENT_MODE == xdp ]] || die "CLIENT_MODE must be kernel or xdp"

server_pid=
cleanup() {
  stop_server "$server_pid"
  bash "$repo/scripts/veth-lab.sh" down >/dev/null 2>&1 || true
}
trap cleanup EXIT

bash "$repo/scripts/veth-lab.sh" up
if [[ $CLIENT_MODE == xdp ]]; then
  client_flags=(--client-mode xdp --xdp-iface "$PETREL_LAB_PEER_IF" --xdp-source-net 10.78.0.0/16)
  SOURCES="$(( N / 60000 + 1 )) (of 10.78.0.0/16, userspace TCP)"
else
  sources=$PETREL_LAB_PEER_ADDR
  for k in $(seq 3 $(( SOURCES + 1 ))); do
    ip netns exec "$PETREL_LAB_NS" ip addr add "10.77.40.$k/24" dev "$PETREL_LAB_PEER_IF"
    sources="$sources,10.77.40.$k"
  done
  client_flags=(--source-ips "$sources")
fi

mkdir -p "$OUT"
printf 'data_dir = "%s"\nlog_level = "%s"\nmax_connections = %d\nrate_limit_per_second = 0\n%s\n' \
  "$OUT" "${LOG_LEVEL:-info}" "${MAX_CONNECTIONS:-$(( N * 2 ))}" "${EXTRA:-}" >"$OUT/petrel.toml"
pin_server=() pin_client=()
[[ -n ${SERVER_CPUS:-} ]] && pin_server=(taskset -c "$SERVER_CPUS")
[[ -n ${CLIENT_CPUS:-} ]] && pin_client=(taskset -c "$CLIENT_CPUS")
"${pin_server[@]}" "$PETREL" serve --config "$OUT/petrel.toml" --dataplane xdp --iface "$PETREL_LAB_HOST_IF" \
  --listen "$PETREL_LAB_HOST_ADDR:9500" >"$OUT/serve.out" 2>"$OUT/serve.err" &
server_pid=$!
wait_for_banner "$server_pid" "$OUT/serve.out" ||
  { tail -5 "$OUT/serve.err" >&2; die "petrel serve --dataplane xdp did not start"; }

echo "xdp-idle: server pid $server_pid; $N connections from $SOURCES source addresses" >&2
ip netns exec "$PETREL_LAB_NS" "${pin_client[@]}" "$PETREL" bench connect -n "$N" \
  --server "$PETREL_LAB_HOST_ADDR:9500" --key-file "$OUT/keys" --server-pid "$server_pid" \
  "${client_flags[@]}" --quiet "$@" || status=$?
stop_server "$server_pid"
server_pid=
echo "xdp-idle: the server's AF_XDP sockets when it stopped:" >&2
grep -h "AF_XDP poller stopped" "$OUT/serve.err" "$OUT/serve.out" >&2 || echo "  (not logged; LOG_LEVEL=info)" >&2
exit "${status:-0}"
