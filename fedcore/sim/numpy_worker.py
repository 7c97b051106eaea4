"""How a simulation worker runs a ``NumpyClient``: no torch anywhere on this path.

The update goes through the upload gate's rules as the server would hold it after the wire: cast
to the wire dtype (float16, or bfloat16 rounded to nearest even as torch does), refused if any
value is NaN/Inf or it is too far from the global model (``fedcore.update_checks``), then folded
into a ``WeightedSum`` (its numpy fold: fedcore.strategy is torch-free until a tensor is one).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedcore.arrays import all_finite, bf16_bits, widen_bf16
from fedcore.config import Settings
from fedcore.seeds import client_round_seed
from fedcore.sim.numpy_client import FitResult, NumpyClient
from fedcore.sim.plan import Bf16Bits, RoundPlan
from fedcore.strategy import WeightedSum
from fedcore.update_checks import check_update_norm, is_untrained, non_finite_refusal

_WIRE_DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
                "bf16": "bfloat16", "bfloat16": "bfloat16"}


@dataclass(frozen=True)
class Trained:
    """One client's local result, before the upload gate's checks."""

    state: Mapping[str, Any]
    num_samples: int
    metrics: dict[str, float]


def round_to_bf16(a: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), as float32; values past
    bfloat16's range become ±Inf."""
    return widen_bf16(bf16_bits(a))


def as_received(state: Mapping[str, np.ndarray], wire_dtype: str) -> dict[str, np.ndarray]:
    """The update as the server would hold it after the wire, or PayloadError (non-finite).
    Trained float tensors are cast to the wire dtype; untrained ones and integers stay exact."""
    target = _WIRE_DTYPES[wire_dtype]
    out: dict[str, np.ndarray] = {}
    for name, a in state.items():
        if a.dtype.kind == "f":
            if not all_finite(a):
                raise non_finite_refusal()
            if not is_untrained(name):
                if target == "float32":
                    a = np.asarray(a, dtype=np.float32)
                elif target == "float16":
                    a = a.astype(np.float16)
                else:
                    a = round_to_bf16(a)
                if target != "float32" and not all_finite(a):  # past the narrower type's range
                    raise non_finite_refusal()
        out[name] = a
    return out


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

    def new_partial(self) -> WeightedSum:
        return WeightedSum()

    def encode(self, trained: Trained, plan: RoundPlan, name: str) -> bytes:
        """For strategies that need every update: the update's wire payload (torch is imported
        here, on this path only)."""
        import torch

        from fedcore.sim.torch_worker import encode_update

        state = {k: torch.from_numpy(np.array(v)) for k, v in trained.state.items()}
        ref = {k: torch.from_numpy(np.array(v)) for k, v in self._global.items()}
        return encode_update(state, ref, plan, name)
