"""The seed of one client's local training in one round: the same wherever the client runs
(a process on either transport, or any simulation worker and backend), so runs reproduce."""
from __future__ import annotations

import zlib


def client_round_seed(seed: int, name: str, round_number: int) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode()) + round_number) % 2**31
