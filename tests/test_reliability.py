"""What the network and a restart throw at a federation (issue 11), at the core's level: driven
by hand with a fake clock where time matters, through the same operations every transport calls."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import FakeClock

from fedcore import wire
from fedcore.errors import (
    PayloadError,
    RateLimitedError,
    RoundStateError,
    TransportError,
    UploadTimeoutError,
)
from fedcore.federation import Federation, FederationConfig
from fedcore.operations import Caller, Endpoint, WireOptions
from fedcore.states import Action, ClientState


def _model() -> dict[str, torch.Tensor]:
    return {"w": torch.ones(3, 2), "b": torch.zeros(2)}


def _fed(clock: FakeClock | None = None, **kw) -> Federation:
    cfg = FederationConfig(wire=WireOptions("fp32", "zstd", None, "auto"), **kw)
    return Federation(_model(), cfg, clock=clock or FakeClock())


def _join(fed: Federation, name: str, peer: str = "test") -> Caller:
    reg = fed.register(Caller(peer=peer), name, 10, "test")
    me = Caller(reg.token, reg.client_id)
    fed.signal(me, ClientState.READY, 0)
    return me


def _payload(value: float) -> bytes:
    return wire.encode_state({"w": torch.full((3, 2), value), "b": torch.full((2,), value)}, dtype="fp32")


def _round(fed: Federation, clients: list[Caller], number: int, value: float = 1.0) -> None:
    fed.tick()
    for c in clients:
        fed.submit_update(c, number, _payload(value), 10)
    fed.tick()
    assert fed.round == number


def test_restart_continues_toward_the_saved_target_not_beyond(tmp_path: Path) -> None:
    fed = _fed(checkpoint_dir=tmp_path)
    a, b = _join(fed, "a"), _join(fed, "b")
    fed.autorun_to(6)
    _round(fed, [a, b], 1)
    _round(fed, [a, b], 2)
    fed.tick()
    assert fed.status().current_round == 3  # round 3 open when the server "crashes"
    again = _fed(checkpoint_dir=tmp_path)  # the same command, restarted
    assert again.round == 2 and again.status().autorun_target == 6
    again.autorun_to(6)  # what `fedcore server --autorun --rounds 6` does on resume
    assert again.status().autorun_target == 6, "a restart must not add rounds"
    a2 = again.register(a, "a", 0, "test")
    assert a2.client_id == a.client_id
    with pytest.raises(RoundStateError, match="not open"):  # the stale upload of round 3
        again.submit_update(a, 3, _payload(1.0), 10)


def test_stop_is_persisted_before_any_round_closes(tmp_path: Path) -> None:
    fed = _fed(checkpoint_dir=tmp_path)
    a, b = _join(fed, "a"), _join(fed, "b")
    fed.start_autorun(4)
    _round(fed, [a, b], 1)
    fed.stop_autorun()
    again = _fed(checkpoint_dir=tmp_path)
    assert again.status().autorun is False and again.autorun_stopped
    again.tick()
    assert again.status().current_round is None


def test_kick_is_persisted(tmp_path: Path) -> None:
    fed = _fed(checkpoint_dir=tmp_path)
    a, b = _join(fed, "a"), _join(fed, "b")
    fed.start_autorun(1)
    _round(fed, [a, b], 1)
    fed.disconnect(b.client_id)
    again = _fed(checkpoint_dir=tmp_path)
    assert again.signal(b, ClientState.READY, 0).action is Action.STOP


def test_update_far_from_the_global_is_refused_and_recorded() -> None:
    fed = _fed(max_update_norm=100.0)
    a, b = _join(fed, "a"), _join(fed, "b")
    fed.start_autorun(1)
    fed.tick()
    before = fed.global_state
    with pytest.raises(PayloadError, match="away from the global"):
        fed.submit_update(a, 1, _payload(3e38), 10)
    assert all(torch.equal(before[k], v) for k, v in fed.global_state.items())
    fed.submit_update(a, 1, _payload(2.0), 10)
    fed.submit_update(b, 1, _payload(2.0), 10)
    fed.tick()
    record = fed.history()[0]
    assert record.participants == ("a", "b")
    assert [r.client for r in record.refused] == ["a"] and "away from the global" in record.refused[0].reason
    assert float(fed.global_state["w"].abs().max()) == 2.0


def test_non_finite_metrics_and_claimed_samples() -> None:
    fed = _fed(max_num_samples=100)
    a, b = _join(fed, "a"), _join(fed, "b")
    fed.start_autorun(1)
    fed.tick()
    with pytest.raises(PayloadError, match="finite"):
        fed.submit_update(a, 1, _payload(1.0), 10, {"loss": float("nan")})
    fed.submit_update(a, 1, _payload(1.0), 10**9)  # claims a billion samples: clipped to 100
    fed.submit_update(b, 1, _payload(3.0), 100)
    fed.tick()
    assert torch.allclose(fed.global_state["w"], torch.full((3, 2), 2.0))  # equal weights after clipping
    assert fed.history()[0].clipped_samples == ("a",)


def test_registration_flood_is_rate_limited_per_source() -> None:
    clock = FakeClock()
    fed = _fed(clock, register_limit=5, register_window_s=10.0)
    for i in range(5):
        fed.register(Caller(peer="10.0.0.9"), f"c{i}", 1, "test")
    with pytest.raises(RateLimitedError):
        fed.register(Caller(peer="10.0.0.9"), "c5", 1, "test")
    fed.register(Caller(peer="10.0.0.8"), "other", 1, "test")  # another source is not affected
    clock.t += 11
    fed.register(Caller(peer="10.0.0.9"), "c6", 1, "test")


def test_clients_that_left_long_ago_are_pruned_but_stay_in_history() -> None:
    clock = FakeClock()
    fed = _fed(clock, prune_left_after_s=60.0, client_timeout_s=5.0)
    a, b = _join(fed, "a"), _join(fed, "b")
    fed.start_autorun(1)
    _round(fed, [a, b], 1)
    fed.disconnect(b.client_id, caller=b)
    clock.t += 30
    fed.signal(a, ClientState.READY, 0)
    fed.tick()
    assert {c.name for c in fed.clients()} == {"a", "b"}
    clock.t += 31
    fed.signal(a, ClientState.READY, 0)
    fed.tick()
    assert {c.name for c in fed.clients()} == {"a"}
    assert fed.history()[0].participants == ("a", "b")


def test_closing_answers_long_polls_with_reconnect_at_once() -> None:
    fed = Federation(_model(), FederationConfig()).start()
    a = _join(fed, "a")
    answers: list[Action] = []
    t = threading.Thread(target=lambda: answers.append(fed.signal(a, ClientState.READY, 20.0).action))
    t.start()
    time.sleep(0.3)
    started = time.monotonic()
    fed.close()
    t.join(5)
    assert answers == [Action.RECONNECT] and time.monotonic() - started < 2.0


def test_long_poll_ends_when_the_peer_goes_away() -> None:
    fed = Federation(_model(), FederationConfig())
    a = _join(fed, "a")
    gone = threading.Event()
    threading.Timer(0.3, gone.set).start()
    started = time.monotonic()
    instr = fed.signal(a, ClientState.READY, 20.0, still_connected=lambda: not gone.is_set())
    assert instr.action is Action.WAIT and time.monotonic() - started < 2.0


def test_health_is_ready_only_when_every_transport_serves() -> None:
    fed = _fed()
    fed.expect_transports(["rest", "grpc"])
    assert not fed.health().ready
    fed.mark_serving(Endpoint("rest", "http://127.0.0.1:1"))
    assert not fed.health().ready
    fed.mark_serving(Endpoint("grpc", "127.0.0.1:2"))
    assert fed.health().ready and fed.health().serving == ("grpc", "rest")


def test_switch_only_to_a_served_transport_and_the_instruction_carries_its_endpoint() -> None:
    fed = _fed()
    fed.mark_serving(Endpoint("rest", "http://127.0.0.1:18080"))
    fed.mark_serving(Endpoint("grpc", "127.0.0.1:18081"))
    a, _b = _join(fed, "a"), _join(fed, "b")
    with pytest.raises(ValueError, match="serves grpc, rest"):
        fed.request_transport(a.client_id, "quic")
    fed.request_transport(a.client_id, "grpc")
    fed.start_autorun(1)
    fed.tick()
    instr = fed.signal(a, ClientState.READY, 0)
    assert instr.action is Action.TRAIN and instr.switch_to == Endpoint("grpc", "127.0.0.1:18081")
    reg = fed.register(Caller(peer="test"), "c", 1, "test")
    assert {e.transport for e in reg.endpoints} == {"rest", "grpc"} and reg.wire is not None


def test_wire_update_mode_is_the_servers() -> None:
    fed = _fed()  # weights mode
    a, b = _join(fed, "a"), _join(fed, "b")
    fed.start_autorun(1)
    fed.tick()
    ref = {"w": torch.ones(3, 2), "b": torch.zeros(2)}
    delta = wire.encode_state({"w": torch.full((3, 2), 1.5), "b": torch.zeros(2)}, dtype="fp32", reference=ref,
                              quantize_update=True)
    with pytest.raises(PayloadError, match="expects 'weights'"):
        fed.submit_update(a, 1, delta, 10)


def test_train_config_comes_from_the_server_and_is_recorded() -> None:
    fed = Federation(_model(), FederationConfig(wire=WireOptions("fp32", "zstd", None, "auto"),
                                                train_config={"epochs": 3, "batch_size": 8, "lr": 0.1}),
                     clock=FakeClock(), fit_config_fn=lambda rnd: {"lr": 0.1 / rnd, "note": "mine"})
    a, b = _join(fed, "a"), _join(fed, "b")
    fed.start_autorun(1)
    fed.tick()
    instr = fed.signal(a, ClientState.READY, 0)
    assert dict(instr.config) == {"epochs": 3, "batch_size": 8, "lr": 0.1, "note": "mine"}
    fed.submit_update(a, 1, _payload(1.0), 10)
    fed.submit_update(b, 1, _payload(1.0), 10)
    fed.tick()
    assert fed.history()[0].train_config["note"] == "mine"


def test_one_upload_per_client_at_a_time_and_slow_bodies_are_cut_off() -> None:
    fed = _fed(body_timeout_s=0.3)
    a, _b = _join(fed, "a"), _join(fed, "b")
    fed.start_autorun(1)
    fed.tick()
    payload = _payload(1.0)
    with pytest.raises(UploadTimeoutError):
        with fed.accept_update(a, 1, len(payload), 10) as first:
            first.write(payload[:10])
            with pytest.raises(TransportError, match="already has an upload"):
                with fed.accept_update(a, 1, len(payload), 10):
                    pass
            time.sleep(0.35)
            first.write(payload[10:])
    fed.submit_update(a, 1, payload, 10)  # the slot is free again: a whole upload goes through
    assert fed.status().submitted == 1
