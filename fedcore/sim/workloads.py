"""Ready-made ``client_fn``s: picklable (module-level classes), and each worker builds its heavy
parts (model, data) once and reuses them for every client it runs.

``VectorClients``: a model of ``dim`` floats and a tiny local step (the benchmark's workload,
optionally with CPU-bound work per client). ``PartitionClients``: the configured data set split
among N clients and the zoo's model (what ``fedcore simulate`` runs).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from fedcore.app.apps import ClientApp
from fedcore.client import FLClient
from fedcore.config import Settings


class Vector(nn.Module):
    """One flat parameter: the smallest model of a given size."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(dim))


class _Sized(Dataset[int]):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def vector_step(model: nn.Module, data: Dataset[Any], *, epochs: int = 1, batch_size: int = 32, lr: float = 0.05,
                proximal_mu: float = 0.0, global_state: Mapping[str, torch.Tensor] | None = None, seed: int = 0,
                cpu_work: int = 0) -> dict[str, float]:
    """Move towards a client-specific target drawn from ``seed``; ``cpu_work`` adds that many
    small matrix products (a CPU-bound client) whose result nudges the target."""
    gen = torch.Generator().manual_seed(seed)
    target = float(torch.rand((), generator=gen)) * 2 - 1
    if cpu_work:
        x = torch.rand(128, 128, generator=gen)
        m = torch.rand(128, 128, generator=gen) / 64
        for _ in range(cpu_work):
            x = torch.tanh(x @ m)
        target += float(x.mean()) * 1e-3
    with torch.no_grad():
        w = model.get_parameter("w")
        w.mul_(1 - lr).add_(lr * target)
    return {"target": target}


class VectorClients:
    """``client_fn`` of ``dim``-float clients with 10..59 samples each (by client index)."""

    def __init__(self, dim: int = 1_000_000, cpu_work: int = 0, seed: int = 0) -> None:
        self.dim, self.cpu_work, self.seed = dim, cpu_work, seed
        self._model: Vector | None = None
        self._settings: Settings | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"dim": self.dim, "cpu_work": self.cpu_work, "seed": self.seed, "_model": None, "_settings": None}

    def initial_state(self) -> dict[str, torch.Tensor]:
        return Vector(self.dim).state_dict()

    def _step(self, model: nn.Module, data: Dataset[Any], **kw: Any) -> dict[str, float]:
        return vector_step(model, data, cpu_work=self.cpu_work, **kw)

    def __call__(self, cid: int) -> FLClient:
        if self._model is None:
            self._model, self._settings = Vector(self.dim), Settings(seed=self.seed)
        n = 10 + cid % 50
        return FLClient(self._model, _Sized(n), name=f"client_{cid}", settings=self._settings, train_fn=self._step,
                        num_samples=n)


class PartitionClients:
    """``client_fn`` over the configured data set split among ``num_clients`` (the demo's
    partitioning); the data is loaded once per worker."""

    def __init__(self, settings: Settings, num_clients: int) -> None:
        self.settings, self.num_clients = settings, num_clients
        self._data: Any = None
        self._model: nn.Module | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"settings": self.settings, "num_clients": self.num_clients, "_data": None, "_model": None}

    def __call__(self, cid: int) -> ClientApp:
        if self._data is None:
            from fedcore.app.data import load_federated
            from fedcore.app.models import build_model

            s = self.settings
            self._data = load_federated(s.dataset, self.num_clients, partition=s.partition, alpha=s.alpha,
                                        seed=s.seed, data_dir=s.data_dir)
            self._model = build_model(s.model, s.dataset, self._data.num_classes, seed=s.seed)
        share = self._data.clients[cid]
        assert self._model is not None
        return ClientApp(self._model, share.train, share.val)
