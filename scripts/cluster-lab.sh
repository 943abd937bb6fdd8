#!/usr/bin/env bash
# The cluster lab: a three-node Petrel cluster on this machine (docs/CLUSTER.md).
#
#   nats-server   127.0.0.1:14222        (its own, with JetStream; not the system's service)
#   node 0        127.0.1.1:9500   metrics :9100   dispatch :9080   api :9400   pool general
#   node 1        127.0.1.2:9500   metrics :9100   dispatch :9080   api :9400   pool general
#   node 2        127.0.1.3:9500   metrics :9100   dispatch :9080   api :9400   pool dedicated
#   (STANDBY=1)   127.0.1.11-13, the same ports: each node's standby
#
# Each node has two cores, ownership = "per-core", its own data directory and the lab's
# shared key file. The addresses are loopback addresses (127.0.0.0/8 is all loopback on
# Linux): nothing leaves the machine and no interface is configured.
#
# Usage: scripts/cluster-lab.sh up|down|status
#   up      build petrel (release), start nats-server and every node not running yet
#           (so it also restarts a node that was killed); waits until each serves
#   down    stop every node (SIGTERM, then SIGKILL after 10 s) and nats-server, and
#           remove the lab directory; safe to run any number of times
#   status  print what runs; exit 0 if everything does, 1 otherwise
#
# LAB_DIR (default /tmp/petrel-cluster-lab) holds the config, data, logs and pid files.
# PETREL (default: the release build) is the binary to run.
# NODE_CPUS (default "0,1 0,1 0,1"): each node's CPUs, one comma-separated list per node
# (every node must run as many cores), e.g. "0 1 1" for one core each, node 0 on CPU 0.
# EXTRA_CONFIG: more lines for the nodes' config file (top-level keys).
# REPLICAS (default 0): `[cluster] replicas`, copies of each node's replica log on the
# lab's JetStream (0 or 1 with one nats-server): with 1 every write is on JetStream
# before it is acked, and a node started on an emptied data directory rebuilds its
# database from its log.
# STANDBY=1 (needs REPLICAS=1): every node also gets a standby (docs/CLUSTER.md,
# "Standby and handover"), at 127.0.1.11-13 with data in $LAB_DIR/standby<n>: it
# follows the node's replica log, and serves the node when the serving process is
# drained. `up` starts a stopped process of a pair as the standby when the other one
# serves the node, so after `petrel admin drain --data-dir $LAB_DIR/node1` and `up`, standby1
# serves node 1 and node1 is its standby.
# The API key is in $LAB_DIR/api-key; put user 7 in the dedicated pool with
#   curl -X PUT -H "Authorization: Bearer $(cat $LAB_DIR/api-key)" \
#     -d '{"pool":"dedicated"}' http://127.0.1.1:9400/v1/users/7/pool
# and ask where user 7 should connect (with a token of theirs) with
#   curl -H "Authorization: Bearer TOKEN" http://127.0.1.2:9080/v1/dispatch
set -euo pipefail
cd "$(dirname "$0")/.."

LAB_DIR=${LAB_DIR:-/tmp/petrel-cluster-lab}
NATS_ADDR=127.0.0.1:14222
NODES=3
read -r -a NODE_CPUS <<<"${NODE_CPUS:-0,1 0,1 0,1}"

node_addr() { echo "127.0.1.$(($1 + 1))"; }
standby_addr() { echo "127.0.1.$(($1 + 11))"; }

# Whether the process of pid file $1 runs: an exited one its parent has not reaped yet
# (a zombie, state Z) does not — it holds no port and no data dir any more.
running() {
  [[ -f $1 ]] || return 1
  local stat
  stat=$(cat "/proc/$(cat "$1")/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != [ZX] ]]
}

# serving ADDR NAME: whether process NAME serves its node: it listens on ADDR:9500 (a
# waiting standby does not), or it is a standby taking the node over right now (its log
# says so since it last began to wait).
serving() {
  local addr=$1 name=$2
  (exec 3<>"/dev/tcp/$addr/9500") 2>/dev/null && return 0
  running "$LAB_DIR/$name.pid" || return 1
  [[ -f $LAB_DIR/$name.log ]] || return 1
  [[ $(grep -E "petrel: standby of node|took the node over" "$LAB_DIR/$name.log" | tail -n 1) == *"took the node over"* ]]
}

wait_port() {
  local addr=$1 port=$2 what=$3
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/$addr/$port") 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "cluster-lab: $what did not start on $addr:$port; see $LAB_DIR" >&2
  return 1
}

up() {
  bash scripts/setup.sh
  source scripts/env.sh
  if [[ -z ${PETREL:-} ]]; then
    cargo build --release --bin petrel
    PETREL=$CARGO_TARGET_DIR/release/petrel
  fi
  mkdir -p "$LAB_DIR"
  if ! running "$LAB_DIR/nats.pid"; then
    printf 'listen: %s\nmax_payload: 8MB\njetstream { store_dir: "%s" }\n' \
      "$NATS_ADDR" "$LAB_DIR/jetstream" >"$LAB_DIR/nats.conf"
    nats-server -c "$LAB_DIR/nats.conf" >"$LAB_DIR/nats.log" 2>&1 &
    echo $! >"$LAB_DIR/nats.pid"
    wait_port "${NATS_ADDR%:*}" "${NATS_ADDR#*:}" nats-server
  fi
  cat >"$LAB_DIR/petrel.toml" <<EOF
ownership = "per-core"
log_level = "info"
${EXTRA_CONFIG:-}

[cluster]
nats_url = "nats://$NATS_ADDR"
name = "lab"
nodes = $NODES
replicas = ${REPLICAS:-0}

[dispatch]
pools = { dedicated = [2] }
EOF
  [[ -f $LAB_DIR/api-key ]] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$LAB_DIR/api-key"
  if [[ ${STANDBY:-0} == 1 && ${REPLICAS:-0} == 0 ]]; then
    echo "cluster-lab: STANDBY=1 needs REPLICAS=1 (a standby follows the node's replica log)" >&2
    return 2
  fi
  for n in $(seq 0 $((NODES - 1))); do
    # A process of a pair starts as the standby when the other one serves the node;
    # otherwise it serves it (the other may be a standby still waiting).
    if serving "$(standby_addr "$n")" "standby$n"; then
      start_process "$n" node "$(node_addr "$n")" --standby
    else
      start_process "$n" node "$(node_addr "$n")"
    fi
    if [[ ${STANDBY:-0} == 1 ]]; then
      if serving "$(node_addr "$n")" "node$n"; then
        start_process "$n" standby "$(standby_addr "$n")" --standby
      else
        start_process "$n" standby "$(standby_addr "$n")"
      fi
    fi
  done
  status
  echo "cluster-lab: logs in $LAB_DIR/node*.log; a token: $PETREL token issue --key-file $LAB_DIR/keys --user 1 --device laptop"
}

# start_process N KIND ADDR [--standby]: starts the process KIND (node or standby) of
# node N on ADDR unless it runs; waits until it serves, or as a standby until it
# follows the node's replica log.
start_process() {
  local n=$1 kind=$2 addr=$3 standby=${4:-}
  local name=$kind$n
  if running "$LAB_DIR/$name.pid"; then
    return 0
  fi
  mkdir -p "$LAB_DIR/$name"
  touch "$LAB_DIR/$name.log"
  local lines
  lines=$(wc -l <"$LAB_DIR/$name.log")
  "$PETREL" serve --config "$LAB_DIR/petrel.toml" --cluster-node "$n" $standby \
    --cores "${NODE_CPUS[$n]:-0,1}" \
    --data-dir "$LAB_DIR/$name" --key-file "$LAB_DIR/keys" \
    --listen "$addr:9500" --metrics-addr "$addr:9100" \
    --dispatch-addr "$addr:9080" --api-addr "$addr:9400" --api-key-file "$LAB_DIR/api-key" \
    >>"$LAB_DIR/$name.log" 2>&1 &
  echo $! >"$LAB_DIR/$name.pid"
  if [[ -z $standby ]]; then
    wait_port "$addr" 9500 "node $n ($name)"
    return
  fi
  for _ in $(seq 1 300); do
    if tail -n +"$((lines + 1))" "$LAB_DIR/$name.log" | grep -q "petrel: standby of node"; then
      return 0
    fi
    running "$LAB_DIR/$name.pid" || break
    sleep 0.1
  done
  echo "cluster-lab: the standby of node $n ($name) did not start; see $LAB_DIR/$name.log" >&2
  return 1
}

stop_pid() {
  local file=$1
  running "$file" || { rm -f "$file"; return 0; }
  local pid
  pid=$(cat "$file")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$file"
}

down() {
  [[ -d $LAB_DIR ]] || return 0
  for n in $(seq 0 $((NODES - 1))); do
    stop_pid "$LAB_DIR/standby$n.pid"
    stop_pid "$LAB_DIR/node$n.pid"
  done
  stop_pid "$LAB_DIR/nats.pid"
  rm -rf "$LAB_DIR"
}

status() {
  local ok=0
  if running "$LAB_DIR/nats.pid"; then
    echo "nats-server  $NATS_ADDR  pid $(cat "$LAB_DIR/nats.pid")"
  else
    echo "nats-server  not running"
    ok=1
  fi
  for n in $(seq 0 $((NODES - 1))); do
    if running "$LAB_DIR/node$n.pid"; then
      echo "node $n       $(node_addr "$n"):9500  pid $(cat "$LAB_DIR/node$n.pid")"
    else
      echo "node $n       not running"
      ok=1
    fi
    if [[ -f $LAB_DIR/standby$n.pid ]]; then
      if running "$LAB_DIR/standby$n.pid"; then
        echo "standby $n    $(standby_addr "$n"):9500  pid $(cat "$LAB_DIR/standby$n.pid")"
      else
        echo "standby $n    not running"
        ok=1
      fi
    fi
  done
  return $ok
}

case ${1:-} in
up) up ;;
down) down ;;
status) status ;;
*)
  echo "usage: $0 up|down|status" >&2
  exit 2
  ;;
esac
