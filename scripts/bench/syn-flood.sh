#!/usr/bin/env bash
# A spoofed SYN flood against the AF_XDP dataplane, and what real clients see meanwhile:
# `petrel serve --dataplane xdp` on the host end of a veth lab (CPU 0), a flood of
# spoofed SYNs from 10.99.0.0/16 (scripts/bench/syn-flood.py, raw frames, CPU 1) and,
# once the flood runs, `petrel bench connect` logging real clients in one at a time from
# the lab's own address (CPU 1). Each configuration in CONFIGS runs in turn, in one
# invocation, so they compare side by side:
#
#   noflood    the default configuration without a flood: the clients' baseline
#   cookies    the default: SYNs past xdp_syn_backlog (4096 per core) get SYN cookies
#   nobacklog  xdp_syn_backlog = 100000000: every SYN held as a socket, as before cookies
#   dropping   xdp_syn_cookies = false: SYNs past the backlog are dropped
#
# For each it prints the flood's achieved rate, the clients' connect→login latency and
# failures, the server's RSS growth, its half-open connections and cookie counters.
#
# Usage (root): scripts/bench/syn-flood.sh
#
# Environment:
#   PETREL    petrel binary [default: $CARGO_TARGET_DIR/release/petrel]
#   RATE      spoofed SYNs per second [default: 100000; 0: as fast as one Python thread]
#   DURATION  seconds of flood [default: 20]
#   CLIENTS   real clients logged in, one at a time, during the flood [default: 200]
#   CONFIGS   which configurations [default: "noflood cookies nobacklog dropping"]
#   OUT       directory for configs, data and logs [default: a temp dir]
# The lab and the server are removed on exit, also after a failure. Traffic stays on the
# lab's veth: the spoofed sources are nobody's, and the SYN-ACKs to them are dropped by
# the lab namespace's kernel.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
source "$repo/scripts/env.sh"
source "$here/lib.sh"

export PETREL_LAB_NS=${PETREL_LAB_NS:-petrel-flood}
export PETREL_LAB_HOST_IF=${PETREL_LAB_HOST_IF:-pfl-h}
export PETREL_LAB_PEER_IF=${PETREL_LAB_PEER_IF:-pfl-n}
export PETREL_LAB_HOST_ADDR=10.77.41.1
export PETREL_LAB_PEER_ADDR=10.77.41.2
export PETREL_LAB_CLIENT_NET=
PETREL=${PETREL:-$CARGO_TARGET_DIR/release/petrel}
RATE=${RATE:-100000}
DURATION=${DURATION:-20}
CLIENTS=${CLIENTS:-200}
CONFIGS=${CONFIGS:-noflood cookies nobacklog dropping}
OUT=${OUT:-$(mktemp -d /tmp/petrel-syn-flood.XXXXXX)}

die() { echo "syn-flood: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "must run as root (veth lab, XDP)"
[[ -x $PETREL ]] || die "no petrel binary at $PETREL (cargo build --release --bin petrel)"
(( DURATION >= 6 )) || die "DURATION must be at least 6 seconds"

server_pid=
flood_pid=
cleanup() {
  [[ -n $flood_pid ]] && kill "$flood_pid" 2>/dev/null || true
  stop_server "$server_pid"
  bash "$repo/scripts/veth-lab.sh" down >/dev/null 2>&1 || true
}
trap cleanup EXIT

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
metric() { curl -s "http://$metrics/metrics" | awk -v m="$1" '$1 == m {print $2}'; }

bash "$repo/scripts/veth-lab.sh" up >/dev/null
host_mac=$(cat "/sys/class/net/$PETREL_LAB_HOST_IF/address")
metrics=127.0.0.1:9611

for config in $CONFIGS; do
  case $config in
    noflood | cookies) extra= ;;
    nobacklog) extra='xdp_syn_backlog = 100000000' ;;
    dropping) extra='xdp_syn_cookies = false' ;;
    *) die "unknown configuration $config" ;;
  esac
  dir="$OUT/$config"
  mkdir -p "$dir"
  printf 'data_dir = "%s"\nlog_level = "warn"\nrate_limit_per_second = 0\nmax_connections = 100000\nmetrics_addr = "%s"\n%s\n' \
    "$dir" "$metrics" "$extra" >"$dir/petrel.toml"
  "$PETREL" serve --config "$dir/petrel.toml" --dataplane xdp --iface "$PETREL_LAB_HOST_IF" \
    --listen "$PETREL_LAB_HOST_ADDR:9500" --cores 0 >"$dir/serve.out" 2>"$dir/serve.err" &
  server_pid=$!
  wait_for_banner "$server_pid" "$dir/serve.out" ||
    { tail -5 "$dir/serve.err" >&2; die "petrel serve --dataplane xdp did not start"; }
  rss_before=$(rss_kib "$server_pid")

  if [[ $config == noflood ]]; then
    (sleep "$DURATION"; echo '{"sent": 0, "seconds": 0, "rate": 0}' >"$dir/flood.json") &
  else
    ip netns exec "$PETREL_LAB_NS" taskset -c 1 python3 "$here/syn-flood.py" \
      --iface "$PETREL_LAB_PEER_IF" --dst "$PETREL_LAB_HOST_ADDR" --port 9500 \
      --dst-mac "$host_mac" --rate "$RATE" --duration "$DURATION" >"$dir/flood.json" &
  fi
  flood_pid=$!
  sleep 3
  # Real clients, one handshake and login at a time, from the lab's own address.
  ip netns exec "$PETREL_LAB_NS" taskset -c 1 "$PETREL" bench connect -n "$CLIENTS" \
    --server "$PETREL_LAB_HOST_ADDR:9500" --key-file "$dir/keys" --connect-concurrency 1 \
    --connect-timeout $(( DURATION - 4 )) --duration 1 --quiet --json >"$dir/bench.json" 2>"$dir/bench.err" ||
    echo "syn-flood: $config: petrel bench connect failed: $(tail -1 "$dir/bench.err")" >&2
  rss_during=$(rss_kib "$server_pid")
  half_open=$(metric petrel_xdp_half_open_connections)
  wait "$flood_pid" || true
  flood_pid=
  rss_end=$(rss_kib "$server_pid")
  sent=$(metric 'petrel_xdp_syn_cookies_total{outcome="sent"}')
  opened=$(metric 'petrel_xdp_syn_cookies_total{outcome="opened"}')
  dropped=$(metric 'petrel_xdp_syn_cookies_total{outcome="backlog_full"}')
  stop_server "$server_pid"
  server_pid=

  python3 - "$config" "$dir" "$rss_before" "$rss_during" "$rss_end" "${half_open:-?}" "${sent:-0}" "${opened:-0}" "${dropped:-0}" <<'EOF'
import json, sys
config, d, before, during, end, half_open, sent, opened, dropped = sys.argv[1:]
flood = json.load(open(f"{d}/flood.json"))
try:
    bench = json.load(open(f"{d}/bench.json"))
except (OSError, ValueError):
    bench = {}
mib = lambda kib: (int(kib) - int(before)) / 1024
print(f"{config:10} flood {flood['rate']:>7}/s ({flood['sent']} SYNs) | "
      f"RSS +{mib(during):.1f} MiB at 3 s, +{mib(end):.1f} MiB at the end | half-open {half_open} | "
      f"cookies sent {sent}, opened {opened} | dropped past backlog {dropped}")
if bench:
    login = bench["login"]
    print(f"{'':10} clients: {bench['counts']['logged_in']} of {bench['connections']} logged in; "
          f"connect→login p50 {login['p50_us'] / 1000:.2f} ms, p99 {login['p99_us'] / 1000:.2f} ms, "
          f"max {login['max_us'] / 1000:.2f} ms")
else:
    print(f"{'':10} clients: not all logged in (see {d}/bench.err)")
EOF
done
