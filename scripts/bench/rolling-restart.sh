#!/usr/bin/env bash
# A rolling restart of the cluster lab under load (docs/CLUSTER.md; issue 20's target:
# all three nodes restarted in turn under 5,000 msg/s, 0 acked messages lost, 0
# duplicates, every client back within its back-off window).
#
# Starts scripts/cluster-lab.sh (nats-server and three nodes on loopback addresses), then
# runs examples/rolling_restart.rs: SDK clients (default back-off, every process's
# dispatch directory) sending 1:1 messages at RATE msg/s in all to users who never log
# in, each client starting on a different node. While they send, every node in turn is
# drained with `petrel admin drain` (its clients are kicked with the addresses of the
# others and reconnect there) and started again on its disk (with STANDBY=1 its standby
# takes it over, and it comes back as the standby). When the load stops, every client waits for its outbox
# to drain, and every conversation is read back through the API and checked. Prints the
# JSON report and the disk's fdatasync latency; exits non-zero if an acked message was
# lost or duplicated. Stops the lab afterwards.
#
# Usage: scripts/bench/rolling-restart.sh
#
# Environment:
#   RATE         messages per second, all clients together [default: 5000]
#   CLIENTS      SDK clients [default: 60]
#   DURATION     seconds of load [default: 60]
#   GAP          seconds between the start and the first drain, and after each restart
#                [default: 12]
#   NODE_CPUS    per node CPU lists for the lab [default: "0 0 0"]
#   CLIENT_CPUS  taskset list for the load generator [default: 1]
#   EXTRA_CONFIG lines for the nodes' config [default: rate_limit_per_second = 0]
#   REPLICAS     the lab's `[cluster] replicas` [default: 0]
#   STANDBY      1: every node has a standby (needs REPLICAS=1); a drain hands the node
#                over to it, and the drained process comes back as the standby
#                [default: 0]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
source "$here/../env.sh"
RATE=${RATE:-5000}
CLIENTS=${CLIENTS:-60}
DURATION=${DURATION:-60}
GAP=${GAP:-12}
CLIENT_CPUS=${CLIENT_CPUS:-1}
export NODE_CPUS=${NODE_CPUS:-0 0 0}
export LAB_DIR=${LAB_DIR:-/tmp/petrel-cluster-roll}
# A load generator's users send far more than a person: no per-user rate limit.
export EXTRA_CONFIG=${EXTRA_CONFIG:-rate_limit_per_second = 0}
(cd "$repo" && cargo build --release --bin petrel --example rolling_restart)
export PETREL=$CARGO_TARGET_DIR/release/petrel
load_bin=$CARGO_TARGET_DIR/release/examples/rolling_restart

bash "$repo/scripts/cluster-lab.sh" down
trap 'bash "$repo/scripts/cluster-lab.sh" down' EXIT
bash "$repo/scripts/cluster-lab.sh" up >/dev/null
# Let every node hear every other (heartbeats every 250 ms).
sleep 2

# The audit at the end reads through a serving node's API: with standbys, every node
# has been handed to its standby by then (127.0.1.11-13). The clients know every
# process's dispatch directory, as an app would be configured, and ask them after a
# round of failed connects: a client kicked with no other node of its pool to go to
# (node 2 is the lab's dedicated pool) finds its node's new process there.
api=127.0.1.1:9400
directories=http://127.0.1.1:9080,http://127.0.1.2:9080,http://127.0.1.3:9080
if [[ ${STANDBY:-0} == 1 ]]; then
  api=127.0.1.11:9400
  directories=$directories,http://127.0.1.11:9080,http://127.0.1.12:9080,http://127.0.1.13:9080
fi
report=$(mktemp)
taskset -c "$CLIENT_CPUS" "$load_bin" \
  --servers 127.0.1.1:9500,127.0.1.2:9500,127.0.1.3:9500 \
  --key-file "$LAB_DIR/keys" --api "$api" --api-key-file "$LAB_DIR/api-key" \
  --directory "$directories" \
  --clients "$CLIENTS" --rate "$RATE" --duration "$DURATION" >"$report" &
load=$!

sleep "$GAP"
for n in 0 1 2; do
  echo "=== $(date +%T) draining node $n"
  # Returns once the node's process has exited (its files closed); the lab counts an
  # exited process its parent has not reaped yet as stopped, and starts it again.
  "$PETREL" admin drain --data-dir "$LAB_DIR/node$n" --wait 30
  echo "=== $(date +%T) node $n stopped; starting it again (as its standby with STANDBY=1)"
  bash "$repo/scripts/cluster-lab.sh" up >/dev/null
  sleep "$GAP"
done
status=0
wait "$load" || status=$?
echo "=== report"
cat "$report"
rm -f "$report"
echo "=== the disk's fdatasync latency (every ack waits for one)"
python3 "$here/fsync-probe.py" --dir "$LAB_DIR" || echo "(fsync-probe.py failed)"
exit "$status"
