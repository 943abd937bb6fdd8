#!/usr/bin/env bash
# Kernel sockets vs AF_XDP vs DPDK, back to back, on the veth lab: one `petrel bench`
# scenario against `petrel serve --dataplane kernel`, then the same against `--dataplane
# xdp`, then (a petrel built with --features dpdk) against `--dataplane dpdk` on
# net_af_packet, with the load generator inside the lab namespace; prints the results side
# by side with the xdp/kernel and dpdk/kernel ratios of throughput, p50, p99 and server
# memory per connection. For the dpdk run the host end's kernel address is removed (the
# DPDK port owns it; the kernel would answer the same SYNs).
#
#   host (root namespace)                          namespace $PETREL_LAB_NS
#   $PETREL_LAB_HOST_IF  10.77.30.1  <── veth ──>  $PETREL_LAB_PEER_IF  10.77.30.2
#   petrel serve (kernel, then xdp)                petrel bench (+ 10.78.x.y sources)
#   route 10.78.0.0/16 dev $PETREL_LAB_HOST_IF
#
# Usage (root):
#   scripts/bench/compare.sh SCENARIO [BENCH ARGS...]
#   e.g. scripts/bench/compare.sh chat1v1 --pairs 100 --rate 20000 --duration 10
#        scripts/bench/compare.sh connect -n 50000 --duration 20
#
# Environment:
#   PETREL            petrel binary [default: $CARGO_TARGET_DIR/release/petrel]
#   PETREL_LAB_NS, PETREL_LAB_HOST_IF, PETREL_LAB_PEER_IF, PETREL_LAB_HOST_ADDR,
#   PETREL_LAB_PEER_ADDR   passed to scripts/veth-lab.sh [default: petrel-bench, pbn-h,
#                     pbn-n, 10.77.30.1, 10.77.30.2]
#   PORT              server port [default: 9530]
#   CLIENT_MODE       kernel (kernel sockets, several processes past 18,000 connections)
#                     or xdp (petrel bench --client-mode xdp: userspace TCP over AF_XDP
#                     on $PETREL_LAB_PEER_IF, sources from 10.78.0.0/16, one process)
#                     [default: kernel]
#   SOURCES           kernel client mode: extra client source addresses 10.78.0.1..
#                     added in the namespace (one per 25,000 connections is plenty)
#                     [default: 0]
#   XDP_ARGS          extra `petrel serve` flags for the xdp run, e.g. "--queues 0,1 --cores 0,1"
#   DPDK              1: run the dpdk column too [default: 1 when $PETREL links DPDK]
#   DPDK_ARGS         extra `petrel serve` flags for the dpdk run, e.g. "--poll busy"
#                     (it gets --cores with SERVER_CPUS' first CPU, one queue)
#   KERNEL_ARGS       extra `petrel serve` flags for the kernel run, e.g. "--cores 0"
#   SERVER_CPUS       taskset CPU list for the server process [default: 0]
#   CLIENT_CPUS       taskset CPU list for the load generator [default: 1] (as pinned.sh:
#                     server and client never compete for a core)
#   TLS=1             both servers speak TLS (a fresh self-signed certificate) and the
#                     load generator connects with --tls: what TLS costs on each dataplane
#   OUT               directory for the JSON results and server logs [default: a temp dir]
#   KEEP_LAB=1        leave the lab up afterwards
#
# The lab (with its route for 10.78.0.0/16 via the host veth) and both servers are
# removed on exit, also after a failure. Needs python3 (for the ratios).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
source "$repo/scripts/env.sh"
source "$here/lib.sh"

[[ $# -ge 1 ]] || { sed -n '2,/^set -euo/p' "$0" | sed 's/^# \{0,1\}//;/^set -euo/d' >&2; exit 2; }
scenario=$1
shift
bench_args=("$@")

export PETREL_LAB_NS=${PETREL_LAB_NS:-petrel-bench}
export PETREL_LAB_HOST_IF=${PETREL_LAB_HOST_IF:-pbn-h}
export PETREL_LAB_PEER_IF=${PETREL_LAB_PEER_IF:-pbn-n}
export PETREL_LAB_HOST_ADDR=${PETREL_LAB_HOST_ADDR:-10.77.30.1}
export PETREL_LAB_PEER_ADDR=${PETREL_LAB_PEER_ADDR:-10.77.30.2}
export PETREL_LAB_CLIENT_NET=10.78.0.0/16
CLIENT_MODE=${CLIENT_MODE:-kernel}
PETREL=${PETREL:-$CARGO_TARGET_DIR/release/petrel}
PORT=${PORT:-9530}
SOURCES=${SOURCES:-0}
SERVER_CPUS=${SERVER_CPUS:-0}
CLIENT_CPUS=${CLIENT_CPUS:-1}
OUT=${OUT:-$(mktemp -d /tmp/petrel-compare.XXXXXX)}
mkdir -p "$OUT"

die() { echo "compare: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "must run as root (veth lab)"
[[ -x $PETREL ]] || die "no petrel binary at $PETREL (cargo build --release --bin petrel)"
command -v python3 >/dev/null || die "python3 not found"
(( SOURCES <= 65000 )) || die "SOURCES must be at most 65000"
[[ $CLIENT_MODE == kernel || $CLIENT_MODE == xdp ]] || die "CLIENT_MODE must be kernel or xdp"
(( SOURCES == 0 )) || [[ $CLIENT_MODE == kernel ]] ||
  die "SOURCES is for the kernel client mode (the xdp client owns 10.78.0.0/16 itself)"

server_pid=
cleanup() {
  stop_server "$server_pid"
  if [[ ${KEEP_LAB:-0} != 1 ]]; then
    bash "$repo/scripts/veth-lab.sh" down >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

bash "$repo/scripts/veth-lab.sh" up

source_flag=()
if [[ $CLIENT_MODE == xdp ]]; then
  source_flag=(--client-mode xdp --xdp-iface "$PETREL_LAB_PEER_IF" --xdp-source-net 10.78.0.0/16)
elif (( SOURCES > 0 )); then
  # Client addresses 10.78.0.1 ... on the namespace end; the host reaches them through
  # its veth end (the lab's route, not an address: the host must not own them).
  for k in $(seq 1 "$SOURCES"); do
    ip netns exec "$PETREL_LAB_NS" ip addr add "10.78.$(( k / 256 )).$(( k % 256 ))/32" \
      dev "$PETREL_LAB_PEER_IF"
  done
  last="10.78.$(( SOURCES / 256 )).$(( SOURCES % 256 ))"
  source_flag=(--source-ips "10.78.0.1-$last")
fi

# One run: start the server in MODE, wait for its banner, bench from the namespace, stop.
run_mode() {
  local mode=$1
  shift
  local data="$OUT/data-$mode"
  rm -rf "$data"
  mkdir -p "$data"
  cat >"$data/petrel.toml" <<EOF
data_dir = "$data"
log_level = "warn"
rate_limit_per_second = 0
EOF
  tls_args=()
  if [[ ${TLS:-0} == 1 ]]; then
    make_test_cert "$data"
  fi
  taskset -c "$SERVER_CPUS" "$PETREL" serve --config "$data/petrel.toml" --dataplane "$mode" \
    --listen "$PETREL_LAB_HOST_ADDR:$PORT" "$@" >"$OUT/serve-$mode.out" 2>"$OUT/serve-$mode.err" &
  server_pid=$!
  if ! wait_for_banner "$server_pid" "$OUT/serve-$mode.out"; then
    echo "compare: petrel serve --dataplane $mode did not start:" >&2
    tail -5 "$OUT/serve-$mode.err" >&2
    kill -KILL "$server_pid" 2>/dev/null || true
    server_pid=
    return 1
  fi
  echo "compare: $mode server up (pid $server_pid); running petrel bench $scenario ${bench_args[*]}" >&2
  local ok=0
  ip netns exec "$PETREL_LAB_NS" taskset -c "$CLIENT_CPUS" "$PETREL" bench "$scenario" \
    --server "$PETREL_LAB_HOST_ADDR:$PORT" --key-file "$data/keys" --server-pid "$server_pid" \
    --json --quiet "${source_flag[@]}" "${tls_args[@]}" "${bench_args[@]}" >"$OUT/$mode.json" || ok=1
  stop_server "$server_pid"
  server_pid=
  return $ok
}

echo "compare: load average $(cut -d' ' -f1-3 /proc/loadavg) (the machine may be shared)" >&2
kernel_ok=0
xdp_ok=0
# shellcheck disable=SC2086 # *_ARGS are word lists on purpose
run_mode kernel ${KERNEL_ARGS:-} || kernel_ok=1
# The interface is needed for the AF_XDP socket and the filter program.
# shellcheck disable=SC2086
run_mode xdp --iface "$PETREL_LAB_HOST_IF" ${XDP_ARGS:-} || xdp_ok=1

dpdk_ok=skip
links_dpdk=0
[[ $(ldd "$PETREL" 2>/dev/null) == *librte_ethdev* ]] && links_dpdk=1
if [[ ${DPDK:-$links_dpdk} == 1 ]]; then
  # The DPDK port owns the address: the kernel must not have it any more.
  ip addr del "$PETREL_LAB_HOST_ADDR/24" dev "$PETREL_LAB_HOST_IF"
  dpdk_cpu=${SERVER_CPUS%%[,-]*}
  dpdk_ok=0
  # shellcheck disable=SC2086
  run_mode dpdk --cores "$dpdk_cpu" --dpdk-args "-l $dpdk_cpu --no-huge -m 512 --no-pci \
--no-shconf --no-telemetry --vdev=net_af_packet0,iface=$PETREL_LAB_HOST_IF" ${DPDK_ARGS:-} ||
    dpdk_ok=1
fi

python3 - "$OUT/kernel.json" "$OUT/xdp.json" "$kernel_ok" "$xdp_ok" "$OUT/dpdk.json" "$dpdk_ok" <<'EOF'
import json, sys

def load(path, ok):
    if ok != "0":
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

kernel, xdp = load(sys.argv[1], sys.argv[3]), load(sys.argv[2], sys.argv[4])
dpdk = load(sys.argv[5], sys.argv[6])

def figures(r):
    if r is None:
        return None
    messaging = r["counts"]["sent"] > 0
    lat = r["ack"] if messaging else r["ping"]
    server = r.get("server_figures") or {}
    return {
        "throughput": r["throughput_msgs_per_sec"] if messaging else r["connect_rate"],
        "deliveries/s": r["deliveries_per_sec"],
        "p50_us": lat["p50_us"],
        "p99_us": lat["p99_us"],
        "ping_p50_us": r["ping"]["p50_us"],
        "rss_per_conn_B": server.get("rss_per_connection_bytes"),
        "label": "send→ack" if messaging else "ping→pong",
        "throughput_label": "msg/s acked" if messaging else "logins/s",
    }

k, x, d = figures(kernel), figures(xdp), figures(dpdk)
ref = k or x or d
if ref is None:
    print("compare: neither run produced results")
    sys.exit(1)
rows = [
    ("throughput (" + ref["throughput_label"] + ")", "throughput"),
    ("deliveries/s", "deliveries/s"),
    ("p50 " + ref["label"] + " (µs)", "p50_us"),
    ("p99 " + ref["label"] + " (µs)", "p99_us"),
    ("p50 ping→pong (µs)", "ping_p50_us"),
    ("server RSS per connection (B)", "rss_per_conn_B"),
]
def cell(f, key):
    if f is None or f.get(key) is None:
        return "—"
    return f"{f[key]:,.1f}"
def ratio(f, key):
    if k and f and k.get(key) and f.get(key) is not None:
        return f"{f[key] / k[key]:.3f}"
    return "—"
print(f"{'':34} {'kernel':>14} {'xdp':>14} {'dpdk':>14} {'xdp/kernel':>11} {'dpdk/kernel':>12}")
for label, key in rows:
    print(f"{label:34} {cell(k, key):>14} {cell(x, key):>14} {cell(d, key):>14} "
          f"{ratio(x, key):>11} {ratio(d, key):>12}")
if x is None:
    print("compare: the xdp run failed (see serve-xdp.err); ratios need both runs")
if k is None:
    print("compare: the kernel run failed (see serve-kernel.err)")
if d is None and sys.argv[6] != "skip":
    print("compare: the dpdk run failed (see serve-dpdk.err)")
EOF
echo "compare: results and server logs in $OUT" >&2
[[ $kernel_ok == 0 && $xdp_ok == 0 ]]
