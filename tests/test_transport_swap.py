"""One Federation served over REST and gRPC at once; a client swaps transport between rounds.

Client "swapper" does round 1 over gRPC, round 2 over REST, round 3 over gRPC (switching from its
``on_round_end`` callback); "rester" stays on REST and "grpcer" on gRPC. All three take part in all
three rounds, and the final global model equals the one of a run where nobody swaps: the
transport carries the same bytes, so it cannot change the result.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from fedcore.client import FLClient
from fedcore.config import Settings
from fedcore.app.data import load_federated
from fedcore.errors import AuthError, PayloadError
from fedcore.federation import Federation, FederationConfig
from fedcore.operations import Endpoint, WireOptions
from fedcore.app.models import build_model
from fedcore.transport import get_transport

ROUNDS = 3
NAMES = ("swapper", "rester", "grpcer")
START = {"swapper": "grpc", "rester": "rest", "grpcer": "grpc"}
# fp32 on the wire: no bf16 rounding cliff that a last-bit difference in summation order could tip.
WIRE = {"dtype": "fp32", "codec": "zstd"}
WIRE_OPTIONS = WireOptions("fp32", "zstd", None, "auto")


def _swap_plan(client: FLClient, round_number: int) -> None:
    client.use_transport("rest" if round_number == 1 else "grpc")


def _run(swap: bool) -> tuple[Federation, dict[str, FLClient]]:
    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)  # 3 trainers on a small machine; restored below
    try:
        return _run_federation(swap)
    finally:
        torch.set_num_threads(threads_before)


def _run_federation(swap: bool) -> tuple[Federation, dict[str, FLClient]]:
    data = load_federated("digits", len(NAMES), seed=0)
    fed = Federation(
        build_model("digits_mlp", seed=0).state_dict(),
        FederationConfig(min_clients=len(NAMES), stop_when_done=True, round_deadline_s=120, wire=WIRE_OPTIONS,
                         train_config={"epochs": 1, "batch_size": 32, "lr": 0.05}),
    ).start()
    servers = {
        name: get_transport(name).server(fed, Settings(host="127.0.0.1", rest_port=0, grpc_port=0))
        for name in ("rest", "grpc")
    }
    for name, s in servers.items():
        s.start()
        fed.mark_serving(Endpoint(name, s.address))
    settings = Settings(
        host="127.0.0.1", rest_port=servers["rest"].port, grpc_port=servers["grpc"].port,
        seed=0, local_epochs=1, batch_size=32, lr=0.05, **WIRE,
    )
    clients = {
        name: FLClient(
            build_model("digits_mlp", seed=0), data.clients[k].train, name=name, settings=settings,
            transport=START[name], on_round_end=_swap_plan if swap and name == "swapper" else None,
        )
        for k, name in enumerate(NAMES)
    }
    errors: list[BaseException] = []

    def run(c: FLClient) -> None:
        try:
            c.run(timeout_s=120)
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,), daemon=True) for c in clients.values()]
    try:
        for t in threads:
            t.start()
        fed.start_autorun(ROUNDS)
        assert fed.wait_for_round(ROUNDS, 150), fed.status()
        for t in threads:
            t.join(timeout=30)
        assert not errors, errors
    finally:
        for c in clients.values():
            c.stop()
            c.close()
        for s in servers.values():
            s.stop()
        fed.close()
    return fed, clients


@pytest.fixture(scope="module")
def runs() -> Iterator[dict[str, tuple[Federation, dict[str, FLClient]]]]:
    yield {"swap": _run(swap=True), "plain": _run(swap=False)}


def _transports_seen(fed: Federation, client_id: str) -> list[str]:
    """The transports a client registered over, in order (consecutive repeats folded)."""
    seen: list[str] = []
    for event in fed.events_since(0, 0):
        data: Any = event.data
        if event.type == "client" and data.client_id == client_id:
            if not seen or seen[-1] != data.transport:
                seen.append(data.transport)
    return seen


def test_swapper_changes_transport_each_round(runs) -> None:
    _, clients = runs["swap"]
    assert clients["swapper"].summary.transports == ["grpc", "rest", "grpc"]
    assert clients["rester"].summary.transports == ["rest"] * ROUNDS
    assert clients["grpcer"].summary.transports == ["grpc"] * ROUNDS


def test_server_sees_the_same_client_over_both_transports(runs) -> None:
    fed, clients = runs["swap"]
    swapper = clients["swapper"]
    assert _transports_seen(fed, swapper.client_id) == ["grpc", "rest", "grpc"]
    assert len(fed.clients()) == len(NAMES)  # swapping never registered a second identity


def test_history_has_everyone_in_every_round(runs) -> None:
    fed, _ = runs["swap"]
    history = fed.history()
    assert [h.round for h in history] == [1, 2, 3]
    for h in history:
        assert list(h.participants) == sorted(NAMES), h


def test_swapping_does_not_change_the_model(runs) -> None:
    swapped, plain = runs["swap"][0].global_state, runs["plain"][0].global_state
    assert swapped.keys() == plain.keys()
    for name in swapped:
        assert torch.allclose(swapped[name], plain[name], rtol=0, atol=1e-6), name


def _wait(cond, timeout_s: float = 60.0) -> None:
    end = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def test_admin_asks_a_client_to_switch_over_grpc() -> None:
    """The server side of a swap: an admin RPC makes a REST client do its next round over gRPC."""
    admin = "admin-token"
    data = load_federated("digits", 2, seed=0)
    fed = Federation(build_model("digits_mlp", seed=0).state_dict(),
                     FederationConfig(min_clients=2, admin_token=admin, wire=WIRE_OPTIONS)).start()
    servers = [get_transport(n).server(fed, Settings(rest_port=0, grpc_port=0)) for n in ("rest", "grpc")]
    for s in servers:
        s.start()
        fed.mark_serving(Endpoint(s.name, s.address))
    settings = Settings(rest_port=servers[0].port, grpc_port=servers[1].port, **WIRE)
    clients = {
        name: FLClient(build_model("digits_mlp", seed=0), data.clients[k].train, name=name, settings=settings,
                       transport=start)
        for k, (name, start) in enumerate((("mover", "rest"), ("stayer", "grpc")))
    }
    threads = [threading.Thread(target=c.run, kwargs={"max_rounds": 2, "timeout_s": 120}, daemon=True)
               for c in clients.values()]
    control = get_transport("grpc").client(settings.grpc_address, settings)
    try:
        for t in threads:
            t.start()
        _wait(lambda: fed.status().ready == 2)
        control.step(admin_token=admin)
        assert fed.wait_for_round(1, 60)
        mover = clients["mover"]
        with pytest.raises(AuthError):  # a client's token is not the admin's
            control.request_transport(mover.client_id, "grpc", admin_token=mover.token)
        with pytest.raises(PayloadError):  # INVALID_ARGUMENT
            control.request_transport(mover.client_id, "carrier-pigeon", admin_token=admin)
        out = control.request_transport(mover.client_id, "grpc", admin_token=admin)
        assert out.transport == "grpc"
        _wait(lambda: fed.status().ready == 2 and fed.status().current_round is None)
        control.step(admin_token=admin)
        assert fed.wait_for_round(2, 60)
        for t in threads:
            t.join(timeout=30)
        assert mover.summary.transports == ["rest", "grpc"]
        assert clients["stayer"].summary.transports == ["grpc", "grpc"]
        assert all(h.participants == ("mover", "stayer") for h in fed.history())
    finally:
        control.close()
        for c in clients.values():
            c.stop()
            c.close()
        for s in servers:
            s.stop()
        fed.close()
