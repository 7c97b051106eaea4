"""A ready-made ``NumpyClient`` workload (torch-free, picklable): the benchmark's ``dim``-float
model with a tiny local step, the numpy twin of ``fedcore.sim.workloads.VectorClients``."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedcore.sim.numpy_client import Arrays, FitResult, NumpyClient


class VectorStep(NumpyClient):
    """Moves the model a step ``lr`` towards a target in [-1, 1) drawn from the round's seed."""

    def __init__(self, num_samples: int) -> None:
        self.num_samples = num_samples

    def fit(self, parameters: Arrays, config: Mapping[str, Any], seed: int) -> FitResult:
        lr = float(config.get("lr", 0.05))
        target = float(np.random.default_rng(seed).random()) * 2 - 1
        w = np.multiply(parameters["w"], np.float32(1 - lr))
        w += np.float32(lr * target)
        return FitResult({"w": w}, self.num_samples, {"target": target})


class NumpyVectorClients:
    """``client_fn`` of ``dim``-float numpy clients with 10..59 samples each (by client index)."""

    def __init__(self, dim: int = 1_000_000) -> None:
        self.dim = dim

    def initial_state(self) -> dict[str, np.ndarray]:
        return {"w": np.zeros(self.dim, np.float32)}

    def __call__(self, cid: int) -> VectorStep:
        return VectorStep(10 + cid % 50)
