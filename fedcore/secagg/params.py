"""Public parameters of a secure-aggregation round, the neighbour graph and quantisation.

Arithmetic is in Z_{2^32} (uint32 numpy arrays wrap for free). A client's float update is clipped
to [−clip, clip] and mapped to an integer in [0, 2^bits − 1]; the sum of ``n`` such integers
must stay below 2^32, so ``n · (2^bits − 1) < 2^32`` is checked up front (16 bits: up to 65,537
clients). Stochastic rounding (default) keeps the mean unbiased; ``nearest`` is deterministic.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MODULUS_BITS = 32
MODULUS = 1 << MODULUS_BITS


class SecAggError(ValueError):
    """The protocol cannot go on (too many drop-outs, a bad message, a parameter out of range)."""


class SecAggMessageError(SecAggError):
    """A secagg message could not be decoded (malformed, over a bound, wrong version)."""


@dataclass(frozen=True)
class SecAggParams:
    """What every participant of a round agrees on.

    ``threshold``: shares needed to reconstruct a client's secrets (Shamir degree + 1); None →
    ``n // 2 + 1`` (a majority of the round). ``neighbours``: the SecAgg+ degree k of each client
    in the masking graph; None or ≥ n − 1 → every pair (plain SecAgg).
    """

    bits: int = 16
    clip: float = 1.0
    threshold: int | None = None
    neighbours: int | None = None
    rounding: str = "stochastic"

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 31:
            raise SecAggError(f"secagg bits must be in 1..31, not {self.bits}")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise SecAggError(f"secagg clip must be a positive number, not {self.clip}")
        if self.rounding not in ("stochastic", "nearest"):
            raise SecAggError(f"secagg rounding must be 'stochastic' or 'nearest', not {self.rounding!r}")
        if self.neighbours is not None and self.neighbours < 1:
            raise SecAggError("secagg neighbours must be >= 1 (or unset for all pairs)")

    @property
    def levels(self) -> int:
        return (1 << self.bits) - 1

    def check_capacity(self, n: int) -> None:
        """Refuse a round whose sum could overflow Z_{2^32}."""
        if n * self.levels >= MODULUS:
            most = (MODULUS - 1) // self.levels
            raise SecAggError(f"{n} clients × {self.bits}-bit values can overflow the 2^32 modulus; "
                              f"use at most {most} clients or fewer bits")

    def threshold_for(self, n: int) -> int:
        t = self.threshold if self.threshold is not None else n // 2 + 1
        degree = self.degree_for(n)
        if not 1 <= t <= degree + 1:
            raise SecAggError(f"secagg threshold {t} must be in 1..{degree + 1} (neighbours + 1) for {n} clients")
        return t

    def degree_for(self, n: int) -> int:
        k = self.neighbours
        return n - 1 if k is None or k >= n - 1 else k


def neighbours(ids: Sequence[int], k: int | None, seed: bytes) -> dict[int, frozenset[int]]:
    """The SecAgg+ masking graph: ids in a ring permuted by the public ``seed``, each linked to
    ⌈k/2⌉ ids on either side (a Harary-like graph, symmetric). k None or ≥ n − 1: all pairs."""
    members = sorted(set(ids))
    n = len(members)
    if k is None or k >= n - 1:
        return {i: frozenset(j for j in members if j != i) for i in members}
    ring = sorted(members, key=lambda i: hashlib.sha256(seed + i.to_bytes(4, "big")).digest())
    half = (k + 1) // 2
    out: dict[int, set[int]] = {i: set() for i in members}
    for pos, i in enumerate(ring):
        for step in range(1, half + 1):
            j = ring[(pos + step) % n]
            if j != i:
                out[i].add(j)
                out[j].add(i)
    return {i: frozenset(v) for i, v in out.items()}


def quantize(x: np.ndarray, params: SecAggParams, rng: np.random.Generator | None = None) -> np.ndarray:
    """Floats → uint32 in [0, 2^bits − 1] (clipped to [−clip, clip] first)."""
    if not np.all(np.isfinite(x)):
        raise SecAggError("the update holds NaN or Inf; it cannot be quantised")
    scaled = (np.clip(x.astype(np.float64), -params.clip, params.clip) + params.clip) * (params.levels / (2 * params.clip))
    if params.rounding == "nearest":
        q = np.rint(scaled)
    else:
        rng = rng or np.random.default_rng()
        low = np.floor(scaled)
        q = low + (rng.random(scaled.shape) < scaled - low)
    return np.clip(q, 0, params.levels).astype(np.uint32)


def dequantize_mean(total: np.ndarray, count: int, params: SecAggParams) -> np.ndarray:
    """The mean float update of ``count`` clients from the integer sum of their quantised updates."""
    if count < 1:
        raise SecAggError("no client in the sum")
    return total.astype(np.float64) / count * (2 * params.clip / params.levels) - params.clip
