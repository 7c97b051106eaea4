"""Simulated drop-outs and stragglers, drawn per (round, client) from a seed: the same fates on
every backend and every number of workers."""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Fate = Literal["ok", "drop", "late"]


@dataclass(frozen=True)
class Faults:
    """``drop``: share of selected clients that leave mid-round (the server sees them drop);
    ``late``: share whose update would arrive after the round's deadline (stragglers)."""

    drop: float = 0.0
    late: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (0 <= self.drop <= 1 and 0 <= self.late <= 1 and self.drop + self.late <= 1):
            raise ValueError("drop and late are shares in [0, 1] with drop + late <= 1")

    def fates(self, round_number: int, cids: Sequence[int]) -> dict[int, Fate]:
        if not self.drop and not self.late:
            return {c: "ok" for c in cids}
        out: dict[int, Fate] = {}
        for c in cids:
            u = float(np.random.default_rng([self.seed, round_number, c]).random())
            out[c] = "drop" if u < self.drop else "late" if u < self.drop + self.late else "ok"
        return out


class SimClock:
    """Monotonic time that the driver can move forward (to a round's deadline, so stragglers are
    left out without waiting for real)."""

    def __init__(self) -> None:
        self._offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self._offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock only moves forward")
        self._offset += seconds
