"""The upload gate's rules that do not depend on the tensor library: which tensors are never
trained, and the refusals for a non-finite update or one too far from the global model.

Torch-free on purpose: the server's torch checks and the numpy simulation workers (which never
import torch, to stay small) share these, so both refuse the same updates with the same words.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fedcore.arrays import Array, is_floating, to_numpy
from fedcore.errors import PayloadError

UNTRAINED_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
NON_FINITE = "update holds NaN or Inf values; refused"


def is_untrained(name: str) -> bool:
    """BatchNorm statistics and counters: exact in every mode."""
    return name.endswith(UNTRAINED_SUFFIXES)


def non_finite_refusal() -> PayloadError:
    return PayloadError(NON_FINITE)


def check_norm(diff_sq: float, ref_sq: float, bound: float | None) -> None:
    """Refuse an update whose L2 distance from the global model (``sqrt(diff_sq)``) is over
    ``bound × (‖global‖ + 1)``: one bad client cannot drag the average to 1e38."""
    if bound is None:
        return
    norm, ref = math.sqrt(diff_sq), math.sqrt(ref_sq)
    if norm > bound * (ref + 1.0):
        raise PayloadError(
            f"update is {norm:.3g} away from the global model, over the bound "
            f"max_update_norm × (‖global‖ + 1) = {bound * (ref + 1.0):.3g}; refused"
        )


def check_update_norm(state: Mapping[str, Array], global_state: Mapping[str, Array], bound: float | None) -> None:
    """Refuse an update far from the global model (relative L2 bound, :func:`check_norm`);
    float64 sums over torch tensors or numpy arrays."""
    if bound is None:
        return
    diff_sq, ref_sq = 0.0, 0.0
    for name, t in state.items():
        if not is_floating(t) or is_untrained(name):
            continue
        g = global_state[name]
        if isinstance(t, np.ndarray) or isinstance(g, np.ndarray):
            gn = np.asarray(to_numpy(g), dtype=np.float64).reshape(-1)
            d = np.subtract(to_numpy(t).reshape(-1), gn, dtype=np.float64)
            diff_sq += float(np.dot(d, d))
            ref_sq += float(np.dot(gn, gn))
        else:
            gd = g.double()
            diff_sq += float((t.double() - gd).square().sum())
            ref_sq += float(gd.square().sum())
    check_norm(diff_sq, ref_sq, bound)
