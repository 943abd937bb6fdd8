#!/usr/bin/env bash
# Cross-node against same-node latency in the cluster lab (docs/CLUSTER.md, issue 20's
# target: cross-node 1:1 p99 send→delivery within 2 ms of the same-node figure).
#
# Starts scripts/cluster-lab.sh (nats-server and three nodes on loopback addresses), then
# runs `petrel bench chat1v1` in alternating rounds:
#   same   both users of every pair on node 0
#   cross  the first of each pair on node 0, the second on node 1 (--peer-server): every
#          message is acked through the owner node and pushed across NATS
# A pair's conversation is owned by whichever node its partition falls on, so in both
# kinds about two thirds of the appends go to another node for storage; what differs is
# where the recipient's session is. Prints each round's summary, a table of the
# send→ack and send→delivery percentiles per round, and the disk's fdatasync latency
# (the nodes run `sync = batch`: every ack waits for one). Stops the lab afterwards.
#
# Usage: scripts/bench/cluster-latency.sh [BENCH ARGS...]
#   e.g. scripts/bench/cluster-latency.sh --pairs 100 --rate 10000 --duration 8
#
# Environment:
#   PETREL       petrel binary [default: $CARGO_TARGET_DIR/release/petrel, built if missing]
#   NODE_CPUS    per node CPU lists for the lab [default: "0 0 0": one core each, all on
#                CPU 0 — on a 2-CPU machine the load generator needs the other to itself,
#                since it spins between paced sends]
#   CLIENT_CPUS  taskset list for the load generator [default: 1]
#   ROUNDS       rounds of (same, cross) [default: 3]
#   EXTRA_CONFIG lines for the nodes' config [default: rate_limit_per_second = 0]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
source "$here/../env.sh"
PETREL=${PETREL:-$CARGO_TARGET_DIR/release/petrel}
CLIENT_CPUS=${CLIENT_CPUS:-1}
ROUNDS=${ROUNDS:-3}
export NODE_CPUS=${NODE_CPUS:-0 0 0}
export LAB_DIR=${LAB_DIR:-/tmp/petrel-cluster-bench}
# A load generator's users send far more than a person: no per-user rate limit.
export EXTRA_CONFIG=${EXTRA_CONFIG:-rate_limit_per_second = 0}
if [[ ! -x $PETREL ]]; then
  (cd "$repo" && cargo build --release --bin petrel)
fi
export PETREL
args=("$@")
((${#args[@]})) || args=(--pairs 100 --rate 10000 --duration 8 --warmup 2)

bash "$repo/scripts/cluster-lab.sh" down
trap 'bash "$repo/scripts/cluster-lab.sh" down' EXIT
bash "$repo/scripts/cluster-lab.sh" up >/dev/null
# Let every node hear every other (heartbeats every 250 ms).
sleep 2

out=$(mktemp -d)
for round in $(seq 1 "$ROUNDS"); do
  for kind in same cross; do
    peer=127.0.1.1:9500 offset=0
    if [[ $kind == cross ]]; then peer=127.0.1.2:9500 offset=500000; fi
    echo "=== round $round: $kind (peer on $peer)"
    taskset -c "$CLIENT_CPUS" "$PETREL" bench chat1v1 --server 127.0.1.1:9500 \
      --peer-server "$peer" --key-file "$LAB_DIR/keys" \
      --first-user $((1000000 * round + offset)) \
      "${args[@]}" | tee "$out/$round-$kind.txt"
  done
done

echo
echo "=== summary (µs): percentiles per round"
printf '%-6s %-6s %12s %12s %12s %12s\n' round kind "ack p50" "ack p99" "deliv p50" "deliv p99"
for round in $(seq 1 "$ROUNDS"); do
  for kind in same cross; do
    f=$out/$round-$kind.txt
    ack=$(grep -m1 'send → ack' "$f" | awk '{print $5 $6, $9 $10}')
    del=$(grep -m1 'send → delivery' "$f" | awk '{print $5 $6, $9 $10}')
    printf '%-6s %-6s %12s %12s %12s %12s\n' "$round" "$kind" $ack $del
  done
done
echo
echo "=== the disk's fdatasync latency (every ack waits for one)"
mkdir -p "$LAB_DIR" && python3 "$here/fsync-probe.py" --dir "$LAB_DIR" || echo "(fsync-probe.py failed)"
rm -rf "$out"
