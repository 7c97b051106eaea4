"""Clients written with numpy alone, for simulations of many clients.

A worker that runs only ``NumpyClient`` s never imports torch: each worker process then costs
tens of MB instead of the ~300 MB ``import torch`` takes, and a round skips the model copies
a torch client needs (load_state_dict, state_dict). The Federation, its checks and the strategy
are the same; see ``fedcore.sim.numpy_worker`` for how an update is checked and folded.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Arrays = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class FitResult:
    """What a client's local training returns: its new weights (every tensor of the global model,
    same shapes), the number of samples it trained on (the FedAvg weight) and any metrics."""

    parameters: Arrays
    num_samples: int
    metrics: Mapping[str, float] = field(default_factory=dict)


class NumpyClient(ABC):
    """Subclass this and return instances from ``client_fn(cid)``."""

    @abstractmethod
    def fit(self, parameters: Arrays, config: Mapping[str, Any], seed: int) -> FitResult:
        """Train from ``parameters`` (the round's global model, float32 arrays, **read-only**:
        return new arrays). ``config`` is the round's training instruction (epochs, lr, ...);
        ``seed`` is this (round, client)'s seed, the same on every backend and worker."""
