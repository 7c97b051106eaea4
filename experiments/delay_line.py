"""A userspace delay line: link delay and loss on kernels built without ``netem``.

Why: ``tc netem`` is the usual way to give an emulated link its round-trip time, but some kernels
(this project's CI machines among them: CONFIG_NET_SCH_NETEM is not set) have only tbf and htb,
which shape the rate and nothing else. This process stands in for netem on one device's uplink.

How (set up by :func:`experiments.emulation.install_delay_line`): inside the device's network
namespace the route to the subnet points at a TUN device. Every packet the device sends arrives
here; it is held for ``--delay-ms`` (dropped with probability ``--loss``) and written back into
the TUN, from where the kernel forwards it out of ``eth0`` (policy rule ``iif <tun>``) through
the tbf rate shaper. The whole round trip is put on the uplink: TCP's RTT, its ACK clock and
every request/response exchange see the same round trip as with netem's half-and-half split.

The queue is bounded (``--limit`` packets, like netem's ``limit``; beyond it packets drop).
Only the standard library is used, so the process starts fast in any namespace. Run with
``--help`` for the options; it prints ``ready`` once the TUN is attached.
"""
from __future__ import annotations

import argparse
import collections
import fcntl
import os
import random
import select
import signal
import struct
import sys
import time
from dataclasses import dataclass

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
MAX_PACKET = 65536


@dataclass
class LineStats:
    """What the line did: packets passed on, dropped by the loss draw, dropped by the limit."""

    forwarded: int = 0
    lost: int = 0
    overflow: int = 0


def open_tun(name: str) -> int:
    """Attach to the TUN device ``name`` (created beforehand with ``ip tuntap add``); a
    non-blocking fd that reads and writes bare IP packets."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    os.set_blocking(fd, False)
    return fd


def run(fd: int, delay_s: float, *, loss: float = 0.0, limit: int = 10_000, seed: int = 0,
        stats: LineStats | None = None, until: float | None = None) -> LineStats:
    """Hold every packet read from ``fd`` for ``delay_s`` and write it back, FIFO (a constant
    delay keeps the order, so a deque is the schedule). Runs until ``until`` (monotonic) or
    forever."""
    stats = stats or LineStats()
    rng = random.Random(seed)
    queue: collections.deque[tuple[float, bytes]] = collections.deque()
    while until is None or time.monotonic() < until:
        wait = 1.0 if not queue else max(0.0, queue[0][0] - time.monotonic())
        if until is not None:
            wait = min(wait, max(0.0, until - time.monotonic()))
        ready, _, _ = select.select([fd], [], [], wait)
        if ready:
            while True:
                try:
                    packet = os.read(fd, MAX_PACKET)
                except BlockingIOError:
                    break
                if loss > 0 and rng.random() < loss:
                    stats.lost += 1
                elif len(queue) >= limit:
                    stats.overflow += 1
                else:  # timed when read, so no packet leaves sooner than delay_s after it arrived
                    queue.append((time.monotonic() + delay_s, packet))
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            try:
                os.write(fd, queue.popleft()[1])
                stats.forwarded += 1
            except BlockingIOError:  # the kernel's backlog is full: the packet is lost, as on a wire
                stats.overflow += 1
    return stats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="delay_line", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dev", required=True, help="the TUN device to attach to (created with `ip tuntap add`)")
    p.add_argument("--delay-ms", type=float, required=True, help="how long each packet is held (the link's RTT)")
    p.add_argument("--loss", type=float, default=0.0, help="probability that a packet is dropped (0..1)")
    p.add_argument("--limit", type=int, default=10_000, help="most packets held at once; more are dropped")
    p.add_argument("--seed", type=int, default=0, help="seed of the loss draws")
    a = p.parse_args(argv)
    if a.delay_ms < 0 or not 0.0 <= a.loss < 1.0 or a.limit < 1:
        p.error("need --delay-ms >= 0, 0 <= --loss < 1 and --limit >= 1")
    try:
        fd = open_tun(a.dev)
    except OSError as exc:
        print(f"delay_line: cannot attach to TUN device {a.dev!r}: {exc}", file=sys.stderr)
        return 1
    stats = LineStats()

    def report(*_: object) -> None:
        print(f"forwarded {stats.forwarded} lost {stats.lost} overflow {stats.overflow}", flush=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, report)
    signal.signal(signal.SIGINT, report)
    print("ready", flush=True)
    run(fd, a.delay_ms / 1000.0, loss=a.loss, limit=a.limit, seed=a.seed, stats=stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
