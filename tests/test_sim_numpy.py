"""NumpyClients in simulations (issue 15): workers that never import torch, the same checks and
the same model as torch clients. Every backend and K matches InlineBackend; a numpy client and a
torch client computing the same step give the same global model on every wire dtype; bfloat16
rounding matches torch's; bad updates are refused or failed one by one."""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from fedcore import arrays
from fedcore.client import FLClient
from fedcore.config import Settings
from fedcore.sim import (FitResult, InlineBackend, NumpyClient, NumpyVectorClients, ProcessBackend, SimClock,
                         sim_federation, simulate)
from fedcore.sim.backends import Backend
from fedcore.sim.driver import SimResult
from fedcore.sim.numpy_worker import round_to_bf16
from fedcore.sim.numpy_worker import NumpyRunner
from fedcore.sim.workloads import Vector
from sim_numpy_clients import ReportsTorchClients

DIM = 3000
N, C, ROUNDS = 14, 9, 3


@pytest.fixture(autouse=True)
def _quiet() -> None:
    logging.getLogger("fedcore").setLevel(logging.WARNING)


def _run(backend: Backend, clients: Any = None, settings: Settings | None = None, rounds: int = ROUNDS) -> SimResult:
    vc = clients or NumpyVectorClients(dim=DIM)
    clock = SimClock()
    fed = sim_federation(NumpyVectorClients(dim=DIM).initial_state(), C, clock=clock, settings=settings)
    return simulate(fed, vc, N, C, rounds, backend, seed=5, clock=clock)


def _np(x: Any) -> np.ndarray:
    return arrays.to_numpy(x)


def _max_diff(a: SimResult, b: SimResult) -> float:
    return max(float(np.abs(_np(a.final_state[k]).astype(np.float64) - _np(b.final_state[k])).max())
               for k in a.final_state)


@pytest.fixture(scope="module")
def reference() -> SimResult:
    return _run(InlineBackend())


def test_numpy_clients_move_the_model(reference: SimResult) -> None:
    assert all(h.num_participants == C for h in reference.history)
    assert float(np.abs(reference.final_state["w"]).sum()) > 0
    assert "target" in reference.history[-1].fit_metrics


@pytest.mark.parametrize("k", [2, 3])
def test_inline_chunks_match(reference: SimResult, k: int) -> None:
    assert _max_diff(_run(InlineBackend(num_workers=k)), reference) <= 1e-6


@pytest.mark.parametrize("k", [1, 2, 3])
def test_process_backend_matches_inline(reference: SimResult, k: int) -> None:
    result = _run(ProcessBackend(num_workers=k))
    assert result.num_workers == k
    assert _max_diff(result, reference) <= 1e-6


def test_process_workers_never_import_torch() -> None:
    result = _run(ProcessBackend(num_workers=2), clients=ReportsTorchClients(), rounds=1)
    assert result.history[0].num_participants == C
    assert result.history[0].fit_metrics["torch_loaded"] == 0.0


# ---------------------------------------------------------------- same step, numpy or torch
def _offset(cid: int) -> float:
    return (cid % 7 - 3) * 0.37 + 1e-3 * cid


class _NumpyStep(NumpyClient):
    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, parameters: Mapping[str, np.ndarray], config: Mapping[str, Any], seed: int) -> FitResult:
        w = parameters["w"] * np.float32(0.75) + np.float32(_offset(self.cid))
        return FitResult({"w": w}, 10 + self.cid, {})


class _NumpySteps:
    def __call__(self, cid: int) -> _NumpyStep:
        return _NumpyStep(cid)


class _TorchSteps:
    def __init__(self) -> None:
        self.model = Vector(DIM)

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, _: dict[str, Any]) -> None:
        self.model = Vector(DIM)

    def __call__(self, cid: int) -> FLClient:
        def step(model: torch.nn.Module, *_: Any, **__: Any) -> dict[str, float]:
            with torch.no_grad():
                w = model.get_parameter("w")
                w.copy_(w * torch.tensor(0.75, dtype=torch.float32) + torch.tensor(_offset(cid), dtype=torch.float32))
            return {}

        return FLClient(self.model, TensorDataset(torch.zeros(10 + cid)), name=f"client_{cid}", train_fn=step,
                        num_samples=10 + cid)


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_numpy_and_torch_clients_give_the_same_model(dtype: str) -> None:
    settings = Settings(dtype=dtype, max_update_norm=None)
    a = _run(InlineBackend(num_workers=2), clients=_NumpySteps(), settings=settings)
    b = _run(InlineBackend(num_workers=2), clients=_TorchSteps(), settings=settings)
    assert np.array_equal(_np(a.final_state["w"]), _np(b.final_state["w"]))  # the same casts and fold, bit for bit
    assert float(np.abs(_np(a.final_state["w"])).sum()) > 0


def test_bf16_rounding_matches_torch() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([
        rng.standard_normal(20_000).astype(np.float32) * np.float32(1e3),
        np.array([1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, -(1.0 + 2.0**-8), 3.3e38, -3.39e38, 1e-40, -1e-41, 0.0, -0.0],
                 np.float32),  # ties to even both ways, overflow to Inf, subnormals, signed zeros
    ])
    want = torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    got = round_to_bf16(x)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


# ---------------------------------------------------------------- bad clients
class _Bad(NumpyClient):
    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, parameters: Mapping[str, np.ndarray], config: Mapping[str, Any], seed: int) -> FitResult:
        w = parameters["w"] + np.float32(0.5)
        if self.cid == 1:
            w[3] = math.nan
        elif self.cid == 2:
            return FitResult({"w": w[:-1]}, 10)
        elif self.cid == 3:
            return FitResult({"v": w}, 10)
        elif self.cid == 4:
            parameters["w"][0] = 1.0  # the global is read-only: this client fails alone
        elif self.cid == 5:
            w = w * np.float32(1e6)
        elif self.cid == 6:
            return FitResult({"w": w}, 0)
        return FitResult({"w": w}, 10)


class _BadClients:
    def __call__(self, cid: int) -> _Bad:
        return _Bad(cid)


def test_bad_numpy_updates_are_refused_or_failed_one_by_one() -> None:
    clock = SimClock()
    fed = sim_federation(NumpyVectorClients(dim=DIM).initial_state(), 8, clock=clock,
                         settings=Settings(max_update_norm=100.0))
    result = simulate(fed, _BadClients(), 8, 8, 1, InlineBackend(), seed=1, clock=clock)
    h = result.history[0]
    assert sorted(h.participants) == ["client_0", "client_7"]
    reasons = {r.client: r.reason for r in h.refused}
    assert "NaN or Inf" in reasons["client_1"] and "max_update_norm" in reasons["client_5"]
    assert sorted(h.dropped) == ["client_1", "client_2", "client_3", "client_4", "client_5", "client_6"]
    assert np.allclose(result.final_state["w"], 0.5)  # the good clients' step, nothing else


def test_numpy_clients_say_what_they_cannot_do() -> None:
    with pytest.raises(ValueError, match="int8 update codec"):
        _run(InlineBackend(), settings=Settings(quantize_update=True), rounds=1)
    with pytest.raises(ValueError, match="local DP"):
        NumpyRunner(Settings(local_dp_clip=1.0))  # a worker's settings (simulate(Settings(...), ...))


def test_a_torch_only_strategy_gets_the_numpy_clients_model_as_tensors() -> None:
    """FedAdam steps in torch: the Federation converts the numpy model, and the workers' numpy
    partial sums are merged as tensors; the same rounds on torch clients give the same model."""
    settings = Settings(strategy="fedadam", max_update_norm=None)
    a = _run(InlineBackend(num_workers=2), clients=_NumpySteps(), settings=settings)
    b = _run(InlineBackend(num_workers=2), clients=_TorchSteps(), settings=settings)
    assert isinstance(a.final_state["w"], torch.Tensor)
    assert torch.equal(a.final_state["w"], b.final_state["w"]) and float(a.final_state["w"].abs().sum()) > 0
