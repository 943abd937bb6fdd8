#!/usr/bin/env python3
"""Per-thread CPU time and run-queue wait of a running process, over an interval.

Reads /proc/PID/task/*/schedstat (time on a CPU, time runnable but waiting for one,
number of times it was scheduled in) when started and again when stopped (after
--seconds, or on SIGTERM/SIGINT), and prints one row per thread name: the time each
thread ran, how long it waited to run, and that wait per scheduling. The wait is the
scheduler's share of a latency: a thread woken to finish an fsync that sits behind a
busy-polling loop on the same CPU shows up here.

Usage: thread-stats.py --pid PID [--seconds N]
Used by scripts/bench/pinned.sh (THREAD_STATS=1) around the benchmark's run.
"""

import argparse
import collections
import os
import signal
import sys
import threading


def sample(pid):
    """{tid: (name, run_ns, wait_ns, slices)} for every live thread of pid."""
    out = {}
    base = f"/proc/{pid}/task"
    try:
        tids = os.listdir(base)
    except FileNotFoundError:
        return out
    for tid in tids:
        try:
            with open(f"{base}/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"{base}/{tid}/schedstat") as f:
                run, wait, slices = (int(x) for x in f.read().split()[:3])
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
        out[tid] = (name, run, wait, slices)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=3600.0)
    args = parser.parse_args()
    if not os.path.exists(f"/proc/{args.pid}/task"):
        sys.exit(f"thread-stats: no process {args.pid}")
    before = sample(args.pid)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait(args.seconds)
    after = sample(args.pid)

    rows = collections.OrderedDict()
    for tid, (name, run, wait, slices) in after.items():
        r0, w0, s0 = before.get(tid, (name, 0, 0, 0))[1:]
        # Threads of one kind (RocksDB's pool, say) are summed under their name.
        acc = rows.setdefault(name, [0, 0, 0, 0])
        acc[0] += run - r0
        acc[1] += wait - w0
        acc[2] += slices - s0
        acc[3] += 1
    print(f"threads of pid {args.pid} over the run (from /proc/PID/task/*/schedstat):")
    print(f"  {'thread':<20} {'n':>3} {'ran ms':>10} {'waited ms':>10} {'scheduled':>10} {'wait/sched µs':>14}")
    for name, (run, wait, slices, n) in sorted(rows.items(), key=lambda kv: -kv[1][0]):
        per = wait / slices / 1e3 if slices else 0.0
        print(f"  {name:<20} {n:>3} {run / 1e6:>10.1f} {wait / 1e6:>10.1f} {slices:>10} {per:>14.1f}")


if __name__ == "__main__":
    main()
