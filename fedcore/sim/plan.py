"""What travels between the simulation driver and its workers: one round's plan (broadcast once)
and one chunk's result. Frozen dataclasses that pickle, so every backend carries the same fields."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from fedcore.operations import WireOptions
from fedcore.strategy import WeightedSum

# Tensors as numpy where numpy has the dtype (Ray hands those to actors without a copy).
PlainState = dict[str, "np.ndarray | torch.Tensor"]
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


def to_plain(state: Mapping[str, torch.Tensor]) -> PlainState:
    """Tensors as numpy arrays where possible (bfloat16 stays a tensor)."""
    out: PlainState = {}
    for k, t in state.items():
        t = t.detach().cpu().contiguous()
        out[k] = t if t.dtype == torch.bfloat16 else t.numpy()
    return out


def to_torch(state: PlainState) -> dict[str, torch.Tensor]:
    """Writable torch tensors (a copy: arrays from a shared object store are read-only)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        out[k] = v.clone() if isinstance(v, torch.Tensor) else torch.from_numpy(np.array(v, copy=True))
    return out
