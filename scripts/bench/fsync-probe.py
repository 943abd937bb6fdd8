#!/usr/bin/env python3
"""The disk's own fdatasync latency, to print next to any durable latency.

Appends COUNT records of SIZE bytes to a file in DIR (default: the current directory;
give the filesystem the server's data directory is on) and calls fdatasync after each,
as a WAL group commit does. Prints p50/p90/p99/max in microseconds, one line, and with
--json the same as a JSON object. Standard library only.

Usage: scripts/bench/fsync-probe.py [--dir DIR] [--count 500] [--size 4096] [--json]
"""
import argparse
import json
import os
import sys
import tempfile
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default=".", help="directory on the filesystem to probe")
    parser.add_argument("--count", type=int, default=500, help="fdatasync calls")
    parser.add_argument("--size", type=int, default=4096, help="bytes appended before each")
    parser.add_argument("--json", action="store_true", help="also print a JSON object")
    args = parser.parse_args()
    if args.count < 1 or args.size < 1:
        print("fsync-probe: --count and --size must be positive", file=sys.stderr)
        return 2
    record = os.urandom(args.size)
    samples = []
    with tempfile.NamedTemporaryFile(dir=args.dir, prefix="petrel-fsync-") as f:
        fd = f.fileno()
        for _ in range(args.count):
            os.write(fd, record)
            start = time.perf_counter_ns()
            os.fdatasync(fd)
            samples.append((time.perf_counter_ns() - start) / 1000)
    samples.sort()

    def pct(p: float) -> float:
        return samples[min(len(samples) - 1, int(p / 100 * len(samples)))]

    result = {
        "count": len(samples),
        "p50_us": round(pct(50), 1),
        "p90_us": round(pct(90), 1),
        "p99_us": round(pct(99), 1),
        "max_us": round(samples[-1], 1),
    }
    print(
        f"fdatasync ({args.size} B appends, {len(samples)} calls, {os.path.abspath(args.dir)}): "
        f"p50 {result['p50_us']} µs, p90 {result['p90_us']} µs, "
        f"p99 {result['p99_us']} µs, max {result['max_us']} µs"
    )
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
