"""Unit tests of the round state machine, driven by hand with a fake clock (no threads, no sockets)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import FakeClock

from fedcore import wire
from fedcore.errors import AuthError, ForbiddenError, PayloadError, PayloadTooLargeError, RoundStateError, UnknownClientError
from fedcore.federation import Federation, FederationConfig
from fedcore.operations import Caller, WireOptions
from fedcore.states import Action, ClientState
from fedcore.strategy import FedAdam, FedAvg, FedProx, make_strategy


def _model() -> dict[str, torch.Tensor]:
    return {"w": torch.zeros(3, 2), "b": torch.zeros(2), "bn.num_batches_tracked": torch.tensor(0)}


def _fed(clock: FakeClock, **kw) -> Federation:
    kw.setdefault("min_clients", 2)
    kw.setdefault("round_deadline_s", 60.0)
    kw.setdefault("client_timeout_s", 30.0)
    strategy = kw.pop("strategy", None)
    cfg = FederationConfig(wire=WireOptions("fp32", "zstd", None, "auto"), **kw)
    return Federation(_model(), cfg, clock=clock, strategy=strategy)


def _join(fed: Federation, name: str, n: int = 10) -> Caller:
    reg = fed.register(Caller(peer="test"), name, n, "test")
    me = Caller(reg.token, reg.client_id)
    fed.fetch_global(me)
    fed.signal(me, ClientState.READY, 0)
    return me


def _update(fed: Federation, reg: Caller, rnd: int, value: float, n: int) -> None:
    state = {"w": torch.full((3, 2), value), "b": torch.full((2,), value), "bn.num_batches_tracked": torch.tensor(n)}
    fed.submit_update(reg, rnd, wire.encode_state(state, dtype="fp32"), n)


def test_states_and_weighted_fedavg() -> None:
    clock = FakeClock()
    fed = _fed(clock)
    a, b = _join(fed, "a", 10), _join(fed, "b", 30)
    assert fed.status().ready == 2
    fed.start_autorun(1)
    fed.tick()
    instr = fed.signal(a, ClientState.READY, 0)
    assert instr.action is Action.TRAIN and instr.round == 1
    assert {c.name: c.state for c in fed.clients()}["a"] == "training"
    _update(fed, a, 1, 1.0, 10)
    assert {c.name: c.state for c in fed.clients()}["a"] == "update"
    _update(fed, b, 1, 3.0, 30)
    fed.tick()
    assert fed.round == 1
    # formula (1): (10*1 + 30*3) / 40 = 2.5
    assert torch.allclose(fed.global_state["w"], torch.full((3, 2), 2.5))
    assert fed.global_state["bn.num_batches_tracked"].dtype == torch.int64
    h = fed.history()[0]
    assert h.participants == ("a", "b") and h.bytes_in > 0
    assert {c.state for c in fed.clients()} == {"finish"}
    assert fed.status().autorun is False  # target reached


class _Reporting(FedAvg):
    """FedAvg that reports how many updates it folded (what a DP accountant's epsilon rides on)."""

    def round_metrics(self) -> dict[str, float]:
        return {"folded": float(self.count), "eps": 1.5}


def test_strategy_round_metrics_land_in_the_history() -> None:
    clock = FakeClock()
    fed = _fed(clock, strategy=_Reporting())
    a, b = _join(fed, "a", 10), _join(fed, "b", 30)
    fed.start_autorun(2)
    fed.tick()
    _update(fed, a, 1, 1.0, 10)
    _update(fed, b, 1, 3.0, 30)
    fed.tick()
    assert fed.history()[0].strategy_metrics == {"folded": 2.0, "eps": 1.5}
    fed.tick()  # round 2: nobody answers before the deadline, so the strategy reports nothing
    clock.t += 61
    fed.tick()
    assert fed.round == 2 and fed.history()[1].strategy_metrics == {}


def test_dropout_mid_round_completes_with_the_others() -> None:
    clock = FakeClock()
    fed = _fed(clock, min_clients=3)
    regs = [_join(fed, n) for n in "abc"]
    fed.start_autorun(1)
    fed.tick()
    _update(fed, regs[0], 1, 1.0, 10)
    fed.disconnect(regs[1].client_id, caller=regs[1])  # b leaves mid-round
    assert fed.status().num_clients == 2
    fed.tick()
    assert fed.round == 0  # c still training
    # c goes silent: after the client time-out it is dropped and the round closes with a alone
    clock.t += 31
    fed.tick()
    fed.tick()
    assert fed.round == 1
    h = fed.history()[0]
    assert h.participants == ("a",) and h.dropped == ("b", "c")


def test_deadline_leaves_stragglers_out() -> None:
    clock = FakeClock()
    fed = _fed(clock, round_deadline_s=5.0, client_timeout_s=100.0)
    a, b = _join(fed, "a"), _join(fed, "b")
    fed.start_autorun(2)
    fed.tick()
    _update(fed, a, 1, 2.0, 10)
    clock.t += 6
    fed.tick()
    assert fed.round == 1
    assert fed.history()[0].stragglers == ("b",)
    with pytest.raises(RoundStateError):
        _update(fed, b, 1, 2.0, 10)  # too late for round 1


def test_late_joiner_waits_for_next_round() -> None:
    clock = FakeClock()
    fed = _fed(clock)
    a, b = _join(fed, "a"), _join(fed, "b")
    fed.start_autorun(2)
    fed.tick()
    c = _join(fed, "c")
    assert fed.signal(c, ClientState.READY, 0).action is Action.WAIT
    with pytest.raises(RoundStateError):
        _update(fed, c, 1, 1.0, 10)
    _update(fed, a, 1, 1.0, 10)
    _update(fed, b, 1, 1.0, 10)
    fed.tick()  # closes round 1
    fed.tick()  # starts round 2 with everyone ready
    assert fed.signal(c, ClientState.READY, 0).action is Action.TRAIN
    for r in (a, b, c):
        _update(fed, r, 2, 1.0, 10)
    fed.tick()
    assert fed.history()[0].participants == ("a", "b")
    assert fed.history()[1].participants == ("a", "b", "c")


def test_autorun_stop_and_manual_step() -> None:
    clock = FakeClock()
    fed = _fed(clock)
    a, b = _join(fed, "a"), _join(fed, "b")
    fed.tick()
    assert fed.status().current_round is None  # no autorun: nothing starts
    assert fed.step().round == 1
    with pytest.raises(RoundStateError):
        fed.step()
    _update(fed, a, 1, 1.0, 10)
    _update(fed, b, 1, 1.0, 10)
    fed.tick()
    fed.start_autorun(5)
    fed.stop_autorun()
    fed.tick()
    assert fed.status().current_round is None and fed.round == 1


def test_min_clients_gate() -> None:
    clock = FakeClock()
    fed = _fed(clock, min_clients=3)
    _join(fed, "a")
    _join(fed, "b")
    fed.start_autorun(1)
    fed.tick()
    assert fed.status().current_round is None
    with pytest.raises(RoundStateError, match="needs 3"):
        fed.step()


def _refuses_nan_and_wrong_shapes(fed: Federation, who: Caller, dtype: str) -> None:
    """Round 1's upload gate refuses a NaN update and one of the wrong shape (PayloadError)."""
    nan = {"w": torch.full((3, 2), float("nan")), "b": torch.zeros(2), "bn.num_batches_tracked": torch.tensor(1)}
    with pytest.raises(PayloadError, match="NaN"):
        fed.submit_update(who, 1, wire.encode_state(nan, dtype=dtype), 10)
    wrong = {"w": torch.zeros(2, 2), "b": torch.zeros(2), "bn.num_batches_tracked": torch.tensor(1)}
    with pytest.raises(PayloadError):
        fed.submit_update(who, 1, wire.encode_state(wrong, dtype=dtype), 10)


def test_bad_input_never_corrupts_the_global_model() -> None:
    clock = FakeClock()
    fed = _fed(clock, max_payload_bytes=10_000)
    a, b = _join(fed, "a"), _join(fed, "b")
    fed.start_autorun(1)
    fed.tick()
    before = {k: v.clone() for k, v in fed.global_state.items()}
    _refuses_nan_and_wrong_shapes(fed, a, "fp32")
    with pytest.raises(PayloadError):
        fed.submit_update(a, 1, b"garbage", 10)
    with pytest.raises(PayloadTooLargeError):
        fed.submit_update(a, 1, bytes(20_000), 10)
    with pytest.raises(AuthError):
        fed.submit_update(Caller("wrong-token", a.client_id), 1, b"x", 10)
    with pytest.raises(UnknownClientError):
        fed.fetch_global(Caller(a.token, "nobody"))
    assert all(torch.equal(before[k], v) for k, v in fed.global_state.items())
    _update(fed, a, 1, 1.0, 10)  # a can still send a good update
    _update(fed, b, 1, 1.0, 10)
    fed.tick()
    assert fed.round == 1


def test_admin_token_guards_control() -> None:
    fed = _fed(FakeClock(), admin_token="s3cret")
    with pytest.raises(AuthError):
        fed.start_autorun(1, caller=Caller(None))
    a = _join(fed, "a")
    with pytest.raises(ForbiddenError):
        fed.start_autorun(1, caller=a)  # a client token never passes
    with pytest.raises(AuthError):
        fed.disconnect(a.client_id, caller=Caller("s3cre"))  # neither the admin's nor a's
    assert fed.start_autorun(1, caller=Caller("s3cret")).autorun_target == 1


def test_checkpoint_resume(tmp_path: Path) -> None:
    clock = FakeClock()
    fed = _fed(clock, checkpoint_dir=tmp_path)
    a, b = _join(fed, "a"), _join(fed, "b")
    fed.start_autorun(3)
    for rnd in (1, 2):
        fed.tick()
        _update(fed, a, rnd, float(rnd), 10)
        _update(fed, b, rnd, float(rnd), 10)
        fed.tick()
    assert fed.round == 2
    saved = fed.global_state
    again = _fed(FakeClock(), checkpoint_dir=tmp_path)
    assert again.round == 2 and len(again.history()) == 2
    assert all(torch.equal(saved[k], v) for k, v in again.global_state.items())
    assert again.status().autorun_target == 3
    # known clients resume with their old token
    reg = again.register(a, "a", 0, "test")
    assert reg.client_id == a.client_id
    with pytest.raises(AuthError):
        again.register(Caller("forged", a.client_id), "a", 0, "test")


def test_streaming_strategies() -> None:
    g = {"w": torch.zeros(4)}
    avg = FedAvg()
    avg.begin_round(g)
    avg.accumulate({"w": torch.ones(4)}, 1)
    avg.accumulate({"w": torch.full((4,), 4.0)}, 3)
    assert torch.allclose(avg.finish(g)["w"], torch.full((4,), 3.25))
    assert FedProx(mu=0.1).client_config() == {"proximal_mu": 0.1}
    adam = FedAdam(lr=0.1)
    adam.begin_round(g)
    adam.accumulate({"w": torch.ones(4)}, 1)
    out = adam.finish(g)["w"]
    assert bool((out > 0).all())  # moved toward the clients' mean
    with pytest.raises(ValueError, match="unknown strategy"):
        make_strategy("nope")


def test_admin_kick_stops_the_client_for_good() -> None:
    fed = _fed(FakeClock())
    a = _join(fed, "a")
    fed.disconnect(a.client_id)
    assert fed.signal(a, ClientState.READY, 0).action is Action.STOP
    assert {c.name: c.state for c in fed.clients()}["a"] == "left"  # its heartbeat does not revive it
    status = fed.status()
    assert status.num_clients == 0 and status.selected_clients == ()


# ---------------------------------------------------------------- a numpy model (fedcore.arrays)
def _numpy_fed(clock: FakeClock, **kw) -> Federation:
    import numpy as np

    model = {"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32),
             "bn.num_batches_tracked": np.zeros((), np.int64)}
    cfg = FederationConfig(min_clients=2, round_deadline_s=60.0, client_timeout_s=30.0,
                           wire=WireOptions("bf16", "zstd", None, "auto"), **kw)
    return Federation(model, cfg, clock=clock, strategy=FedProx(mu=0.1))


def test_numpy_model_takes_torch_clients_uploads_and_refuses_bad_ones(tmp_path: Path) -> None:
    """A numpy Federation serves the bytes torch clients decode, decodes their uploads into numpy
    (a bf16 wire widened to float32), refuses NaN and wrong shapes, and resumes from its checkpoint."""
    import numpy as np

    clock = FakeClock()
    fed = _numpy_fed(clock, checkpoint_dir=tmp_path)
    a, b = _join(fed, "a", 10), _join(fed, "b", 30)
    got = wire.decode_state(fed.fetch_global(a).payload)  # a torch client's view
    assert got["w"].dtype == torch.float32 and torch.equal(got["w"], torch.zeros(3, 2))
    fed.start_autorun(1)
    fed.tick()
    _refuses_nan_and_wrong_shapes(fed, a, "bf16")
    for who, value, n in ((a, 1.0, 10), (b, 3.0, 30)):
        state = {"w": torch.full((3, 2), value), "b": torch.full((2,), value), "bn.num_batches_tracked": torch.tensor(n)}
        fed.submit_update(who, 1, wire.encode_state(state, dtype="bf16"), n)
    fed.tick()
    assert fed.round == 1
    g = fed.global_state
    assert isinstance(g["w"], np.ndarray) and g["w"].dtype == np.float32
    assert np.array_equal(g["w"], np.full((3, 2), 2.5, np.float32))  # (10·1 + 30·3) / 40
    assert g["bn.num_batches_tracked"].dtype == np.int64 and int(g["bn.num_batches_tracked"]) == 25  # (10·10 + 30·30) / 40
    again = _numpy_fed(FakeClock(), checkpoint_dir=tmp_path)
    assert again.round == 1
    assert all(isinstance(v, np.ndarray) and np.array_equal(v, g[k]) for k, v in again.global_state.items())


def test_numpy_model_with_a_torch_strategy_is_refused_in_one_line() -> None:
    import numpy as np

    with pytest.raises(ValueError, match="fedadam.*aggregates torch tensors"):
        Federation({"w": np.zeros(3, np.float32)}, strategy=FedAdam())


def test_tick_says_when_it_closed_a_round() -> None:
    """The monitor loops again at once after a close (the next round starts now, not a tick
    later): tick() tells it. The last update also wakes the monitor (notify), tested here by
    what tick() returns once every selected client has submitted."""
    clock = FakeClock()
    fed = _fed(clock)
    a, b = _join(fed, "a"), _join(fed, "b")
    fed.start_autorun(2)
    assert fed.tick() is False  # starts round 1, closes nothing
    _update(fed, a, 1, 1.0, 10)
    assert fed.tick() is False  # b still trains
    _update(fed, b, 1, 3.0, 10)
    assert fed.tick() is True and fed.round == 1
    assert fed.tick() is False  # round 2 started
