#!/usr/bin/env bash
# The reference run: Debian's mosquitto pinned to SERVER_CPUS, loaded by `petrel bench
# --protocol mqtt` pinned to CLIENT_CPUS, the same way scripts/bench/pinned.sh loads
# Petrel (same pairs, rate, payload and histograms; QoS 1 publish → PUBACK is "send →
# ack"). mosquitto persists nothing (persistence false, its default): it acks from
# memory, where Petrel acks after fdatasync unless `--sync none`. The broker gets a
# temporary config and is stopped afterwards, also on failure. Installs mosquitto with
# apt if it is missing (root).
#
# Usage: scripts/bench/mosquitto.sh SCENARIO [BENCH ARGS...]
#   e.g. scripts/bench/mosquitto.sh chat1v1 --pairs 100 --rate 10000 --duration 10
#
# Environment:
#   PETREL         petrel binary [default: $CARGO_TARGET_DIR/release/petrel]
#   SERVER_CPUS    taskset list for mosquitto [default: 0]
#   CLIENT_CPUS    taskset list for the load generator [default: 1]
#   MQTT_PORT      [default: 9883]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
source "$here/../env.sh"
[[ $# -ge 1 ]] || { sed -n '2,/^set -euo/p' "$0" | sed 's/^# \{0,1\}//;/^set -euo/d' >&2; exit 2; }
PETREL=${PETREL:-$CARGO_TARGET_DIR/release/petrel}
SERVER_CPUS=${SERVER_CPUS:-0}
CLIENT_CPUS=${CLIENT_CPUS:-1}
MQTT_PORT=${MQTT_PORT:-9883}
[[ -x $PETREL ]] || { echo "mosquitto: no petrel binary at $PETREL" >&2; exit 1; }
if ! command -v mosquitto >/dev/null && [[ -x /usr/sbin/mosquitto ]]; then
  PATH=$PATH:/usr/sbin
fi
if ! command -v mosquitto >/dev/null; then
  echo "mosquitto: installing Debian's mosquitto" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null ||
    { echo "mosquitto: cannot install mosquitto (apt-get install mosquitto, as root)" >&2; exit 1; }
  PATH=$PATH:/usr/sbin
fi

dir=$(mktemp -d /tmp/petrel-mosquitto.XXXXXX)
pid=
cleanup() {
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$dir"
}
trap cleanup EXIT

# No limit on messages in flight or queued per client, so the broker drops nothing the
# bench counts (its defaults, 20 in flight and 1,000 queued, would at flat out), and
# TCP_NODELAY as Petrel sets it: with mosquitto's default (off) Nagle's algorithm holds
# a delivery behind the previous one's delayed ACK, 10-30 ms at low rates.
cat >"$dir/mosquitto.conf" <<CONF
listener $MQTT_PORT 127.0.0.1
allow_anonymous true
persistence false
set_tcp_nodelay true
max_inflight_messages 0
max_queued_messages 0
log_dest stderr
log_type error
log_type warning
CONF
taskset -c "$SERVER_CPUS" mosquitto -c "$dir/mosquitto.conf" 2>"$dir/mosquitto.err" &
pid=$!
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$MQTT_PORT") 2>/dev/null && break
  kill -0 "$pid" 2>/dev/null || { cat "$dir/mosquitto.err" >&2; echo "mosquitto: broker did not start" >&2; exit 1; }
  sleep 0.1
done
taskset -c "$CLIENT_CPUS" "$PETREL" bench "$@" --protocol mqtt \
  --server "127.0.0.1:$MQTT_PORT" --server-pid "$pid"
