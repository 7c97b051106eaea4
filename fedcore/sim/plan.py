"""What travels between the simulation driver and its workers: one round's plan (broadcast once)
and one chunk's result. Frozen dataclasses that pickle, so every backend carries the same fields.

Torch-free: a worker that runs numpy clients never imports torch (it would cost ~300 MB a
process); tensors travel as numpy arrays, bfloat16 ones as their raw bits (``Bf16Bits``)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from typing import TYPE_CHECKING

import numpy as np

from fedcore.arrays import widen_bf16
from fedcore.operations import WireOptions

if TYPE_CHECKING:
    from fedcore.strategy import WeightedSum


@dataclass(frozen=True)
class Bf16Bits:
    """A bfloat16 tensor as its raw bits (numpy has no bfloat16): the upper half of float32."""

    bits: np.ndarray  # uint16

    def as_float32(self) -> np.ndarray:
        """The exact float32 values (bf16 widens without rounding)."""
        return widen_bf16(self.bits)


# Tensors as numpy arrays (Ray hands those to actors without a copy).
PlainState = dict[str, "np.ndarray | Bf16Bits"]
Status = Literal["ok", "failed", "refused"]


@dataclass(frozen=True)
class RoundPlan:
    """Everything a worker needs for one round, identical for every client of the round."""

    round: int
    global_state: PlainState  # the model as clients receive it (the decoded wire payload)
    config: Mapping[str, Any]  # the round's training instruction
    wire: WireOptions
    max_update_norm: float | None
    max_num_samples: int
    every_update: bool  # True: return each encoded update (strategy needs them); False: fold


@dataclass(frozen=True)
class Task:
    """One chunk of a round's cohort: client indices and the names they registered under."""

    cids: tuple[int, ...]
    names: tuple[str, ...]


@dataclass(frozen=True)
class ClientOutcome:
    cid: int
    status: Status
    num_samples: int = 0  # the weight it was folded with (clipped like the server does)
    metrics: Mapping[str, float] = field(default_factory=dict)
    reason: str = ""


@dataclass(frozen=True)
class ChunkResult:
    """A chunk's clients folded into one partial sum (or, for strategies that need every update,
    their encoded updates in ``payloads``, aligned with the ``ok`` outcomes)."""

    outcomes: tuple[ClientOutcome, ...]
    partial: WeightedSum | None
    payloads: tuple[bytes, ...] = ()
    busy_s: float = 0.0
