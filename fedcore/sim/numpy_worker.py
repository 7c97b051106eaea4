"""How a simulation worker runs a ``NumpyClient``: no torch anywhere on this path.

The update goes through the upload gate's rules as the server would hold it after the wire: cast
to the wire dtype (float16, or bfloat16 rounded to nearest even as torch does), refused if any
value is NaN/Inf or it is too far from the global model (``fedcore.update_checks``), then folded
into an ``ArraySum``.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedcore.config import Settings
from fedcore.seeds import client_round_seed
from fedcore.sim.array_sum import ArraySum
from fedcore.sim.numpy_client import FitResult, NumpyClient
from fedcore.sim.plan import Bf16Bits, RoundPlan
from fedcore.update_checks import check_norm, is_untrained, non_finite_refusal

_WIRE_DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
                "bf16": "bfloat16", "bfloat16": "bfloat16"}


@dataclass(frozen=True)
class Trained:
    """One client's local result, before the upload gate's checks."""

    state: Mapping[str, Any]
    num_samples: int
    metrics: dict[str, float]


def round_to_bf16(a: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), as float32. Finite input
    only (the caller refuses NaN/Inf first); values past bfloat16's range become ±Inf."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
    rounded &= np.uint32(0xFFFF0000)
    return rounded.view(np.float32)


def _finite(a: np.ndarray) -> bool:
    # A finite sum proves every value finite in one reduction; a non-finite one (NaN/Inf, or an
    # overflow of large finite values) gets the exact check.
    return bool(np.isfinite(a.sum())) or bool(np.isfinite(a).all())


def as_received(state: Mapping[str, np.ndarray], wire_dtype: str) -> dict[str, np.ndarray]:
    """The update as the server would hold it after the wire, or PayloadError (non-finite).
    Trained float tensors are cast to the wire dtype; untrained ones and integers stay exact."""
    target = _WIRE_DTYPES[wire_dtype]
    out: dict[str, np.ndarray] = {}
    for name, a in state.items():
        if a.dtype.kind == "f":
            if not _finite(a):
                raise non_finite_refusal()
            if not is_untrained(name):
                if target == "float32":
                    a = np.asarray(a, dtype=np.float32)
                elif target == "float16":
                    a = a.astype(np.float16)
                else:
                    a = round_to_bf16(a)
                if target != "float32" and not _finite(a):  # past the narrower type's range
                    raise non_finite_refusal()
        out[name] = a
    return out


def check_update_norm(state: Mapping[str, np.ndarray], glob: Mapping[str, np.ndarray], bound: float | None) -> None:
    """``fedcore.federation.check_update_norm`` over numpy arrays (float64 sums)."""
    if bound is None:
        return
    diff_sq, ref_sq = 0.0, 0.0
    for name, a in state.items():
        if a.dtype.kind != "f" or is_untrained(name):
            continue
        g = np.asarray(glob[name], dtype=np.float64).reshape(-1)
        d = np.subtract(a.reshape(-1), g, dtype=np.float64)
        diff_sq += float(np.dot(d, d))
        ref_sq += float(np.dot(g, g))
    check_norm(diff_sq, ref_sq, bound)


class NumpyRunner:
    """Runs ``NumpyClient`` s for one worker: receives each round's model once, read-only."""

    def __init__(self, settings: Settings) -> None:
        if settings.local_dp_clip is not None:
            raise ValueError("local DP (local_dp_clip) is not available to NumpyClients; use an FLClient")
        self.settings = settings
        self._round: int | None = None
        self._global: dict[str, np.ndarray] = {}

    def receive(self, plan: RoundPlan) -> None:
        if plan.wire.update == "q8":
            raise ValueError("the int8 update codec (quantize_update) is not available to NumpyClients")
        if plan.wire.dtype not in _WIRE_DTYPES:
            raise ValueError(f"wire dtype {plan.wire.dtype!r} is not available to NumpyClients")
        if self._round == plan.round:
            return
        glob: dict[str, np.ndarray] = {}
        for name, v in plan.global_state.items():
            a = v.as_float32() if isinstance(v, Bf16Bits) else v.view()
            a.flags.writeable = False  # a client that writes into the global fails, alone
            glob[name] = a
        self._global, self._round = glob, plan.round

    def train(self, client: NumpyClient, name: str, plan: RoundPlan) -> Trained:
        fit = client.fit(self._global, dict(plan.config), client_round_seed(self.settings.seed, name, plan.round))
        if not isinstance(fit, FitResult):
            raise TypeError(f"fit() returned {type(fit).__name__}; expected a FitResult")
        params = {k: np.asarray(v) for k, v in fit.parameters.items()}
        if params.keys() != self._global.keys():
            raise ValueError(f"fit() returned tensors {sorted(params)}; the model has {sorted(self._global)}")
        for k, v in params.items():
            if v.shape != self._global[k].shape:
                raise ValueError(f"fit() returned {k} of shape {v.shape}; the model's is {self._global[k].shape}")
        samples = min(int(fit.num_samples), plan.max_num_samples)
        if samples <= 0:
            raise ValueError(f"client {name} has no training samples")
        return Trained(params, samples, {k: float(v) for k, v in fit.metrics.items()})

    def check(self, trained: Trained, plan: RoundPlan) -> dict[str, np.ndarray]:
        received = as_received(trained.state, plan.wire.dtype)
        check_update_norm(received, self._global, plan.max_update_norm)
        return received

    def new_partial(self) -> ArraySum:
        return ArraySum()

    def encode(self, trained: Trained, plan: RoundPlan, name: str) -> bytes:
        """For strategies that need every update: the update's wire payload (torch is imported
        here, on this path only)."""
        import torch

        from fedcore.sim.torch_worker import encode_update

        state = {k: torch.from_numpy(np.array(v)) for k, v in trained.state.items()}
        ref = {k: torch.from_numpy(np.array(v)) for k, v in self._global.items()}
        return encode_update(state, ref, plan, name)
