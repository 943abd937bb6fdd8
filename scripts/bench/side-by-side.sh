#!/usr/bin/env bash
# Petrel next to mosquitto in one run: ROUNDS rounds, each a Petrel run
# (scripts/bench/pinned.sh, once per SERVE_ARGS variant) then a mosquitto run
# (scripts/bench/mosquitto.sh) with the same bench arguments and the same cores, then
# the disk's fdatasync latency on the Petrel data directory's filesystem. Prints one
# table: send → ack and send → delivery percentiles, acked msg/s and server CPU per
# message for every run, and the fdatasync percentiles next to them.
#
# Usage: scripts/bench/side-by-side.sh chat1v1 [BENCH ARGS...]
#   e.g. scripts/bench/side-by-side.sh chat1v1 --pairs 100 --rate 10000 --duration 8
#
# Environment (also those of pinned.sh and mosquitto.sh: PETREL, SERVER_CPUS,
# CLIENT_CPUS, ...):
#   ROUNDS         rounds [default: 2]
#   VARIANTS       Petrel's `petrel serve` flag sets, separated by `;`
#                  [default: "--poll busy;--poll busy --sync none"]
#   FSYNC_PROBE    fdatasync calls for the probe [default: 500]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
[[ $# -ge 1 ]] || { sed -n '2,/^set -euo/p' "$0" | sed 's/^# \{0,1\}//;/^set -euo/d' >&2; exit 2; }
ROUNDS=${ROUNDS:-2}
VARIANTS=${VARIANTS:-"--poll busy;--poll busy --sync none"}
out=$(mktemp -d /tmp/petrel-side.XXXXXX)
trap 'rm -rf "$out"' EXIT

IFS=';' read -r -a variants <<<"$VARIANTS"
for round in $(seq "$ROUNDS"); do
  for k in "${!variants[@]}"; do
    echo "side-by-side: round $round, petrel ${variants[$k]}" >&2
    SERVE_ARGS="${variants[$k]}" FSYNC_PROBE=0 "$here/pinned.sh" "$@" --json --quiet \
      >"$out/petrel-$k-$round.json"
  done
  echo "side-by-side: round $round, mosquitto" >&2
  "$here/mosquitto.sh" "$@" --json --quiet >"$out/mosquitto-$round.json"
done
python3 "$here/fsync-probe.py" --dir /tmp --count "${FSYNC_PROBE:-500}" --json |
  tail -n 1 >"$out/fsync.json"
VARIANTS="$VARIANTS" python3 - "$out" <<'PY'
import glob, json, os, sys

out = sys.argv[1]
variants = os.environ["VARIANTS"].split(";")
rows = []
for path in sorted(glob.glob(f"{out}/*.json")):
    name = os.path.basename(path)[:-5]
    if name == "fsync":
        continue
    with open(path) as f:
        r = json.load(f)
    kind, *rest = name.split("-")
    label = "mosquitto" if kind == "mosquitto" else f"petrel {variants[int(rest[0])]}"
    rows.append((label, rest[-1], r))
with open(f"{out}/fsync.json") as f:
    fs = json.load(f)
print(f"{'server':34} {'round':>5} {'acked/s':>9} {'ack p50':>9} {'p90':>9} {'p99':>9} "
      f"{'dlv p50':>9} {'p99':>9} {'CPU/msg':>8}")
for label, rnd, r in sorted(rows, key=lambda x: (x[1], x[0])):
    a, d = r["ack"], r["delivery"]
    cpu = (r.get("server_figures") or {}).get("cpu_secs_per_1000_messages")
    cpu = f"{cpu * 1000:.1f} µs" if cpu is not None else "—"
    us = lambda v: f"{v:.0f} µs" if v < 1000 else f"{v / 1000:.2f} ms"
    print(f"{label:34} {rnd:>5} {r['throughput_msgs_per_sec']:>9.0f} {us(a['p50_us']):>9} "
          f"{us(a['p90_us']):>9} {us(a['p99_us']):>9} {us(d['p50_us']):>9} "
          f"{us(d['p99_us']):>9} {cpu:>8}")
    c = r["counts"]
    if c["acked"] < c["sent"] or c["delivered"] < r["expected_deliveries"]:
        print(f"  WARNING: {c['sent'] - c['acked']} unacked, "
              f"{r['expected_deliveries'] - c['delivered']} undelivered")
print(f"fdatasync ({fs['count']} × 4 KiB, same filesystem): p50 {fs['p50_us']} µs, "
      f"p90 {fs['p90_us']} µs, p99 {fs['p99_us']} µs, max {fs['max_us']} µs")
PY
