"""NumpyClients for tests/test_sim_numpy.py, in a module that imports no torch: a worker process
that unpickles them must not load torch through this module."""
from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedcore.sim.numpy_client import FitResult, NumpyClient


class ReportsTorch(NumpyClient):
    """Reports (as a fit metric) whether torch is loaded in the process that runs it."""

    def fit(self, parameters: Mapping[str, np.ndarray], config: Mapping[str, Any], seed: int) -> FitResult:
        return FitResult({"w": parameters["w"] + np.float32(0.01)}, 10, {"torch_loaded": float("torch" in sys.modules)})


class ReportsTorchClients:
    def __call__(self, cid: int) -> ReportsTorch:
        return ReportsTorch()
