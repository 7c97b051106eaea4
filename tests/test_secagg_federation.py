"""Secure aggregation through the operations interface: real FLClient threads over the memory
transport and real REST and gRPC servers on 127.0.0.1. The server's unmasked sum must equal the
plain integer sum of the clients' quantised updates exactly, with 0, 1 and t drop-outs after
masking (a client that stops for good once it has sent its masked input)."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import transports.memory
from fedcore.client import FLClient
from fedcore.config import Settings
from fedcore.federation import Federation, FederationConfig
from fedcore.operations import Endpoint
from fedcore.secagg import SecAggFedAvg
from fedcore.transport import get_transport, register_transport

register_transport(transports.memory.TRANSPORT)

N, THRESHOLD, CLIP, BITS = 4, 2, 0.5, 16  # tolerates N − THRESHOLD = 2 drop-outs after masking


class Dropped(Exception):
    """Raised by the drop-out hook: the client stops for good after its masked input."""


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 3))


def _reference_q(delta: np.ndarray) -> np.ndarray:
    """Independent quantiser (nearest rounding) for the reference sum."""
    levels = (1 << BITS) - 1
    return np.rint((np.clip(delta, -CLIP, CLIP) + CLIP) * levels / (2 * CLIP)).astype(np.int64)


def _flat(state: dict[str, torch.Tensor]) -> np.ndarray:
    return np.concatenate([state[k].double().reshape(-1).numpy() for k in sorted(state) if state[k].is_floating_point()])


def train_fn(model: nn.Module, data: Any, *, seed: int, **kw: Any) -> dict[str, float]:
    """A stand-in for local training: a seeded perturbation of the weights (fast, deterministic)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return {"loss": 0.0}


@pytest.fixture
def served(request: pytest.FixtureRequest) -> Iterator[tuple[Federation, Settings, str]]:
    transport = request.param
    fed = Federation(
        _model().state_dict(),
        FederationConfig(min_clients=N, stop_when_done=True, round_deadline_s=60, client_timeout_s=30,
                         train_config={"epochs": 1, "batch_size": 8, "lr": 0.1}),
        strategy=SecAggFedAvg(bits=BITS, clip=CLIP, threshold=THRESHOLD, rounding="nearest", stage_timeout_s=3.0),
    ).start()
    server = get_transport(transport).server(fed, Settings(host="127.0.0.1", rest_port=0, grpc_port=0))
    server.start()
    fed.mark_serving(Endpoint(transport, server.address))
    port = {"rest_port": server.port} if transport == "rest" else {"grpc_port": server.port}
    try:
        yield fed, Settings(host="127.0.0.1", heartbeat_s=0.5, **port), transport
    finally:
        server.stop()
        fed.close()


@pytest.mark.parametrize("served", ["memory", "rest", "grpc"], indirect=True)
@pytest.mark.parametrize("drops", [0, 1, N - THRESHOLD])
def test_secure_sum_equals_plain_sum(served: tuple[Federation, Settings, str], drops: int) -> None:
    fed, settings, transport = served
    initial = {k: v.clone() for k, v in fed.global_state.items()}
    trained: dict[str, dict[str, torch.Tensor]] = {}
    received: dict[str, dict[str, torch.Tensor]] = {}

    clients = []
    for k in range(N):
        data = TensorDataset(torch.randn(10, 30), torch.zeros(10, dtype=torch.long))
        c = FLClient(_model(), data, name=f"c{k}", settings=settings, transport=transport, train_fn=train_fn)
        clients.append(c)

    def snapshot(c: FLClient) -> Any:
        def hook(stage: str) -> None:
            if stage == "hello":
                trained[c.name] = {k: v.clone() for k, v in c.exchanged.state_dict().items()}
                assert c._received is not None  # the global as the client decoded it (wire dtype)
                received[c.name] = {k: v.clone() for k, v in c._received.items()}
            if stage == "masked" and c.name in dropping:
                c.stop()
                raise Dropped(c.name)  # never sends its unmasking shares
        return hook

    dropping = {f"c{k}" for k in range(drops)}
    errors: dict[str, BaseException] = {}

    def run(c: FLClient) -> None:
        try:
            c.run(timeout_s=60)
        except BaseException as exc:
            errors[c.name] = exc

    for c in clients:
        c.secagg_after_stage = snapshot(c)
    threads = [threading.Thread(target=run, args=(c,), daemon=True) for c in clients]
    try:
        for t in threads:
            t.start()
        fed.start_autorun(1)
        assert fed.wait_for_round(1, 60), fed.status()
        for t in threads:
            t.join(timeout=30)
    finally:
        for c in clients:
            c.stop()
            c.close()
    assert {n: type(e) for n, e in errors.items()} == {n: Dropped for n in dropping}
    # a client whose masked input is in waits for the protocol; it is never asked to train again
    assert {c.name: c.summary.retrained_rounds for c in clients} == {c.name: [] for c in clients}
    strategy = fed.strategy
    assert isinstance(strategy, SecAggFedAvg) and strategy._last is not None and strategy._last.result is not None
    result = strategy._last.result
    # everyone sent a masked input, so everyone's update is in the sum
    assert len(result.survivors) == N and result.dropped_after_sharing == ()
    reference = sum(_reference_q(_flat(trained[c.name]) - _flat(received[c.name])) for c in clients)
    diff = result.total.astype(np.int64) - reference
    assert np.array_equal(result.total.astype(np.int64), reference), (np.abs(diff).max(), np.count_nonzero(diff), diff.size)
    # the new global is the old one plus the dequantised mean of the updates
    mean = reference / N * (2 * CLIP / ((1 << BITS) - 1)) - CLIP
    new = fed.global_state
    offset = 0
    for name in sorted(initial):
        n = initial[name].numel()
        expect = initial[name].double() + torch.from_numpy(mean[offset:offset + n]).reshape(initial[name].shape)
        assert torch.allclose(new[name].double(), expect, atol=1e-6)
        offset += n
    record = fed.history()[-1]
    assert record.num_participants == N and record.strategy_metrics["secagg_survivors"] == N


@pytest.mark.parametrize("served", ["memory"], indirect=True)
def test_too_many_dropouts_leave_the_global_unchanged(served: tuple[Federation, Settings, str]) -> None:
    fed, settings, transport = served
    initial = {k: v.clone() for k, v in fed.global_state.items()}
    clients = [FLClient(_model(), TensorDataset(torch.randn(4, 30), torch.zeros(4, dtype=torch.long)), name=f"c{k}",
                        settings=settings, transport=transport, train_fn=train_fn) for k in range(N)]
    dropping = {"c0", "c1", "c2"}  # N − THRESHOLD + 1: one share short

    def hook_for(c: FLClient) -> Any:
        def hook(stage: str) -> None:
            if stage == "masked" and c.name in dropping:
                c.stop()
                raise Dropped(c.name)
        return hook

    for c in clients:
        c.secagg_after_stage = hook_for(c)
    threads = [threading.Thread(target=lambda c=c: _quiet_run(c), daemon=True) for c in clients]
    try:
        for t in threads:
            t.start()
        fed.start_autorun(1)
        assert fed.wait_for_round(1, 60), fed.status()
    finally:
        for c in clients:
            c.stop()
        for t in threads:  # a stopped client ends after its long-poll; none may outlive the server
            t.join(timeout=30)
        for c in clients:
            c.close()
    record = fed.history()[-1]
    assert record.num_participants == 0 and set(record.dropped) == {c.name for c in clients}
    assert all(torch.equal(fed.global_state[k], v) for k, v in initial.items())


def _quiet_run(c: FLClient) -> None:
    try:
        c.run(timeout_s=60)
    except Dropped:
        pass
