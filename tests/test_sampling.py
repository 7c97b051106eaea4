"""Issue 18: client sampling per round, federated evaluation and metric aggregation.

The state machine is driven by hand with a fake clock; federated evaluation also runs end to end
over every transport (rest, grpc, memory) with real FLClients, checked against a hand
computation of the weighted mean on the clients' validation splits."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pytest
import torch

from conftest import TRANSPORTS, FakeClock, Harness, make_settings, wait_until
from fedcore import wire
from fedcore.app.models import build_model
from fedcore.config import Settings
from fedcore.errors import AuthError, PayloadError, RoundStateError
from fedcore.federation import _RECORDS, Federation, FederationConfig
from fedcore.loops import evaluate
from fedcore.operations import Caller, EvaluationReport, WireOptions
from fedcore.selection import Candidate, ClientSelector, Sampling, Stage, make_selector, register_selector, sample_size
from fedcore.sim import VectorClients, sim_federation, simulate
from fedcore.states import Action, ClientState

NAMES = [f"c{i}" for i in range(6)]


def _model() -> dict[str, torch.Tensor]:
    return {"w": torch.zeros(3, 2), "b": torch.zeros(2)}


def _fed(clock: FakeClock, sampling: Sampling = Sampling(), **kw: object) -> Federation:
    cfg = FederationConfig(min_clients=2, round_deadline_s=60.0, client_timeout_s=30.0,
                           wire=WireOptions("fp32", "zstd", None, "auto"), sampling=sampling)
    return Federation(_model(), cfg, clock=clock, **kw)  # type: ignore[arg-type]


def _join(fed: Federation, name: str, n: int = 10) -> Caller:
    reg = fed.register(Caller(peer="test"), name, n, "test")
    me = Caller(reg.token, reg.client_id)
    fed.signal(me, ClientState.READY, 0)
    return me


def _update(fed: Federation, me: Caller, rnd: int, n: int, metrics: Mapping[str, float] | None = None) -> None:
    state = {"w": torch.full((3, 2), 1.0), "b": torch.full((2,), 1.0)}
    fed.submit_update(me, rnd, wire.encode_state(state, dtype="fp32"), n, metrics)


def _run_round(fed: Federation, callers: dict[str, Caller], metrics: Mapping[str, Mapping[str, float]] = {}) -> list[str]:
    """Start a round, let every selected client send its update, close it; the selected names."""
    fed.tick()
    number = fed.status().current_round
    assert number is not None
    chosen = list(fed.status().selected_clients)
    for name in chosen:
        assert fed.signal(callers[name], ClientState.READY, 0).action is Action.TRAIN
        _update(fed, callers[name], number, 10, metrics.get(name))
        fed.signal(callers[name], ClientState.READY, 0)
    fed.tick()
    assert fed.round == number
    return chosen


# ---------------------------------------------------------------------- sample size and selection
@pytest.mark.parametrize("available,fraction,low,high,expected", [
    (6, 0.5, 1, None, 3), (6, 1.0, 1, None, 6), (7, 0.5, 1, None, 4), (6, 0.1, 2, None, 2),
    (6, 1.0, 1, 4, 4), (3, 0.5, 5, None, 3), (10, 0.3, 1, None, 3), (0, 0.5, 1, None, 0),
])
def test_sample_size_clamps(available: int, fraction: float, low: int, high: int | None, expected: int) -> None:
    assert sample_size(available, fraction, low, high) == expected


def test_sampling_refuses_nonsense() -> None:
    for bad in (dict(fraction_fit=0.0), dict(fraction_fit=1.5), dict(fraction_evaluate=-0.1),
                dict(min_fit_clients=3, max_fit_clients=2)):
        with pytest.raises(ValueError):
            Sampling(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="register_selector"):
        make_selector("nope")


def test_half_of_six_is_three_reproducible_and_varies_by_round() -> None:
    runs = []
    for _ in range(2):
        clock = FakeClock()
        fed = _fed(clock, Sampling(fraction_fit=0.5, seed=7))
        callers = {n: _join(fed, n) for n in NAMES}
        fed.start_autorun(4)
        runs.append([_run_round(fed, callers) for _ in range(4)])
        assert [len(r) for r in runs[-1]] == [3, 3, 3, 3]
        hist = fed.history()
        assert [list(h.selected_clients) for h in hist] == runs[-1] and all(h.selected == 3 for h in hist)
    assert runs[0] == runs[1]  # same seed, same names: the same clients
    assert len({tuple(r) for r in runs[0]}) > 1  # rounds draw different sets
    assert set().union(*runs[0]) == set(NAMES)  # every client trained in some round
    # the reference draw: uniform without replacement from (seed, round) over the names in order
    expected = [[NAMES[i] for i in sorted(np.random.default_rng([7, r]).choice(6, 3, replace=False))]
                for r in range(1, 5)]
    assert runs[0] == expected


def test_unselected_clients_stay_ready_and_are_no_stragglers() -> None:
    clock = FakeClock()
    fed = _fed(clock, Sampling(fraction_fit=0.5, seed=1))
    callers = {n: _join(fed, n) for n in NAMES}
    fed.start_autorun(2)
    fed.tick()
    chosen = set(fed.status().selected_clients)
    idle = [n for n in NAMES if n not in chosen]
    for step in range(3):  # 45 s > client_timeout_s: their long-polls keep them alive
        clock.t += 15
        for n in NAMES:
            instr = fed.signal(callers[n], ClientState.READY, 0)
            assert (instr.action is Action.TRAIN) == (n in chosen)
        fed.tick()
    states = {c.name: c.state for c in fed.clients()}
    assert all(states[n] == "ready" for n in idle)
    for n in chosen:
        _update(fed, callers[n], 1, 10)
    fed.tick()
    rec = fed.history()[0]
    assert rec.stragglers == () and rec.dropped == () and set(rec.participants) == chosen


def test_min_and_max_fit_clients() -> None:
    clock = FakeClock()
    fed = _fed(clock, Sampling(fraction_fit=0.1, min_fit_clients=2))
    callers = {n: _join(fed, n) for n in NAMES}
    fed.start_autorun(1)
    assert len(_run_round(fed, callers)) == 2
    clock2 = FakeClock()
    fed2 = _fed(clock2, Sampling(max_fit_clients=4))
    callers2 = {n: _join(fed2, n) for n in NAMES}
    fed2.start_autorun(1)
    assert len(_run_round(fed2, callers2)) == 4


class _MostSamples(ClientSelector):
    """Picks the clients with the most samples (a user selector)."""

    name = "most_samples"

    def __init__(self, seed: int = 0) -> None:
        self.calls: list[tuple[int, Stage]] = []

    def select(self, candidates: Sequence[Candidate], k: int, round_number: int, stage: Stage) -> list[str]:
        self.calls.append((round_number, stage))
        return [c.client_id for c in sorted(candidates, key=lambda c: -c.num_samples)[:k]]


def test_user_selector_is_used() -> None:
    clock = FakeClock()
    sel = _MostSamples()
    fed = _fed(clock, Sampling(fraction_fit=0.5), selector=sel)
    callers = {n: _join(fed, n, 10 + i) for i, n in enumerate(NAMES)}
    fed.start_autorun(1)
    assert sorted(_run_round(fed, callers)) == ["c3", "c4", "c5"]
    assert sel.calls == [(1, "fit")]


def test_selector_registered_by_name_from_settings() -> None:
    register_selector("most_samples", _MostSamples)
    s = Settings(selector="most_samples", fraction_fit=0.5, min_clients=2)
    fed = Federation.from_settings(s, _model())
    assert isinstance(fed.selector, _MostSamples)
    assert fed.sampling.fraction_fit == 0.5


# ---------------------------------------------------------------------- metric aggregation
FIT = {"c0": {"acc": 0.5, "loss": 2.0}, "c1": {"acc": 0.9}, "c2": {"acc": 0.6, "loss": 1.0}}


def test_fit_metrics_default_weighted_mean() -> None:
    clock = FakeClock()
    fed = _fed(clock)
    callers = {n: _join(fed, n) for n in FIT}
    fed.start_autorun(1)
    fed.tick()
    for n, samples in zip(FIT, (10, 30, 60)):
        fed.signal(callers[n], ClientState.READY, 0)
        _update(fed, callers[n], 1, samples, FIT[n])
    fed.tick()
    rec = fed.history()[0]
    assert rec.fit_metrics["acc"] == pytest.approx((10 * 0.5 + 30 * 0.9 + 60 * 0.6) / 100)
    assert rec.fit_metrics["loss"] == pytest.approx((10 * 2.0 + 60 * 1.0) / 70)  # only those that reported it
    assert rec.client_metrics == FIT


def test_fit_metrics_custom_callable() -> None:
    seen: list[list[int]] = []

    def best(results: Sequence[tuple[int, Mapping[str, float]]]) -> dict[str, float]:
        seen.append(sorted(n for n, _ in results))
        return {"best_acc": max(m["acc"] for _, m in results)}

    clock = FakeClock()
    fed = _fed(clock, fit_metrics_aggregation=best)
    callers = {n: _join(fed, n) for n in FIT}
    fed.start_autorun(1)
    _run_round(fed, callers, FIT)
    assert fed.history()[0].fit_metrics == {"best_acc": 0.9} and seen == [[10, 10, 10]]


# ---------------------------------------------------------------------- federated evaluation (state machine)
EVALS = {"c0": EvaluationReport(20, 1.5, {"accuracy": 0.4}), "c1": EvaluationReport(60, 0.5, {"accuracy": 0.8}),
         "c2": EvaluationReport(20, 1.0, {"accuracy": 0.6, "f1": 0.3})}


def _eval_fed(clock: FakeClock, **kw: object) -> tuple[Federation, dict[str, Caller]]:
    fed = _fed(clock, Sampling(fraction_evaluate=1.0, evaluate_deadline_s=20.0), **kw)
    callers = {n: _join(fed, n) for n in EVALS}
    fed.start_autorun(2)
    _run_round(fed, callers)
    return fed, callers


def test_federated_evaluation_weighted_by_examples() -> None:
    clock = FakeClock()
    fed, callers = _eval_fed(clock)
    assert fed.status().current_round is None  # round 2 waits for the evaluation
    for n, report in EVALS.items():
        instr = fed.signal(callers[n], ClientState.READY, 0)
        assert instr.action is Action.EVALUATE and instr.round == 1
        assert fed.submit_evaluation(callers[n], 1, report).accepted
        assert fed.signal(callers[n], ClientState.READY, 0).action is Action.WAIT
    fed.tick()
    rec = fed.history()[0]
    assert rec.evaluated == ("c0", "c1", "c2")
    assert rec.federated_loss == pytest.approx((20 * 1.5 + 60 * 0.5 + 20 * 1.0) / 100)
    assert rec.federated_metrics["accuracy"] == pytest.approx((20 * 0.4 + 60 * 0.8 + 20 * 0.6) / 100)
    assert rec.federated_metrics["f1"] == pytest.approx(0.3)
    assert fed.status().current_round == 2  # the next round started in the same tick


def test_silent_evaluator_does_not_block_the_next_round() -> None:
    clock = FakeClock()
    fed, callers = _eval_fed(clock, evaluate_metrics_aggregation=lambda rs: {"n": float(len(rs))})
    for n in ("c0", "c1"):
        fed.submit_evaluation(callers[n], 1, EVALS[n])
    fed.tick()
    assert fed.status().current_round is None  # c2 still has time
    clock.t += 21
    for n in EVALS:  # alive (their long-polls), but c2 never answers
        fed.signal(callers[n], ClientState.READY, 0)
    fed.tick()
    rec = fed.history()[0]
    assert rec.evaluated == ("c0", "c1") and rec.federated_metrics == {"n": 2.0}
    assert rec.federated_loss == pytest.approx((20 * 1.5 + 60 * 0.5) / 80)
    assert fed.status().current_round == 2
    with pytest.raises(RoundStateError):  # too late
        fed.submit_evaluation(callers["c2"], 1, EVALS["c2"])


def test_evaluation_policy() -> None:
    clock = FakeClock()
    fed, callers = _eval_fed(clock)
    me = callers["c0"]
    for bad in (EvaluationReport(10, math.nan), EvaluationReport(-1, 1.0), EvaluationReport(10, -math.inf),
                EvaluationReport(10, 1.0, {"acc": math.inf}), EvaluationReport(True, 1.0)):  # type: ignore[arg-type]
        with pytest.raises(PayloadError):
            fed.submit_evaluation(me, 1, bad)
    with pytest.raises(RoundStateError):
        fed.submit_evaluation(me, 2, EVALS["c0"])
    with pytest.raises(AuthError):
        fed.submit_evaluation(Caller("wrong", me.client_id), 1, EVALS["c0"])
    fed.submit_evaluation(me, 1, EvaluationReport(10**12, 1.0))  # counts are clipped, as sample counts are
    with pytest.raises(RoundStateError, match="already"):
        fed.submit_evaluation(me, 1, EVALS["c0"])
    fed.submit_evaluation(callers["c1"], 1, EvaluationReport(10, 3.0))
    fed.submit_evaluation(callers["c2"], 1, EvaluationReport(0, 0.0))  # nothing to score: answered, not counted
    fed.tick()
    rec = fed.history()[0]
    cap = fed.config.max_num_samples
    assert rec.evaluated == ("c0", "c1") and rec.federated_loss == pytest.approx((cap * 1.0 + 30.0) / (cap + 10))


def test_evaluation_is_off_by_default() -> None:
    clock = FakeClock()
    fed = _fed(clock)
    callers = {n: _join(fed, n) for n in EVALS}
    fed.start_autorun(2)
    _run_round(fed, callers)
    fed.tick()
    assert fed.status().current_round == 2  # no evaluation phase in between
    rec = fed.history()[0]
    assert rec.federated_loss is None and rec.evaluated == () and rec.federated_metrics == {}


def test_old_history_records_load_with_defaults() -> None:
    clock = FakeClock()
    fed = _fed(clock)
    callers = {n: _join(fed, n) for n in EVALS}
    fed.start_autorun(1)
    _run_round(fed, callers)
    from dataclasses import asdict

    old = asdict(fed.history()[0])
    for k in ("selected_clients", "fit_metrics", "federated_loss", "federated_metrics", "evaluated",
              "strategy_metrics"):
        del old[k]
    (rec,) = _RECORDS.validate_python([old])
    assert rec.federated_loss is None and rec.selected_clients == () and rec.fit_metrics == {}


# ---------------------------------------------------------------------- the simulation draws through the Federation
def test_sim_cohort_is_the_federation_selection() -> None:
    vc = VectorClients(dim=20)
    fed = sim_federation(vc.initial_state(), 3)
    result = simulate(fed, vc, 8, 3, 3, seed=11)
    for rec in result.history:
        # the simulation's cohort before selection moved into the core: (seed, round) over indices
        ref = sorted(np.random.default_rng([11, rec.round]).choice(8, 3, replace=False))
        assert list(rec.selected_clients) == sorted(f"client_{i}" for i in ref)
        assert set(rec.participants) == set(rec.selected_clients)


# ---------------------------------------------------------------------- end to end over every transport
@pytest.mark.timeout(180)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_federated_evaluation_over_transport(harness: Harness, transport: str) -> None:
    settings = make_settings(transport, min_clients=3, fraction_evaluate=1.0, dtype="fp32", evaluate_deadline_s=60.0)
    srv = harness.server(settings, stop_when_done=True)
    cs = [harness.client(srv, f"c{i}", i, transport=transport) for i in range(3)]
    wait_until(lambda: srv.federation.status().ready == 3, what="3 ready clients")
    srv.federation.start_autorun(1)
    wait_until(lambda: bool(srv.federation.history() and srv.federation.history()[-1].evaluated), 90,
               what="round 1 evaluated")
    with cs[0].client._open(transport) as view:  # /history over the transport itself
        (rec,) = view.history()
    assert rec == srv.federation.history()[-1]
    assert rec.evaluated == ("c0", "c1", "c2")
    # hand computation: the published global on each client's validation split, weighted by size
    model = build_model("digits_mlp")
    model.load_state_dict(srv.federation.global_state)
    scores = [(len(harness.data.clients[i].val), evaluate(model, harness.data.clients[i].val)) for i in range(3)]
    total = sum(n for n, _ in scores)
    assert rec.federated_loss == pytest.approx(sum(n * s["loss"] for n, s in scores) / total, rel=1e-5)
    assert rec.federated_metrics["accuracy"] == pytest.approx(sum(n * s["accuracy"] for n, s in scores) / total,
                                                              rel=1e-5)
    samples = {c.name: c.num_samples for c in srv.federation.clients()}
    fit = [(samples[f"c{i}"], rec.client_metrics[f"c{i}"]) for i in range(3)]
    key = "train_loss"
    assert rec.fit_metrics[key] == pytest.approx(sum(n * m[key] for n, m in fit) / sum(n for n, _ in fit), rel=1e-9)
    for c in cs:
        c.thread.join(30)
        assert c.error is None and c.client.summary.evaluated_rounds == [1]


def test_failing_metrics_hook_costs_its_metrics_not_the_round() -> None:
    def broken(results: Sequence[tuple[int, Mapping[str, float]]]) -> dict[str, float]:
        raise RuntimeError("user bug")

    clock = FakeClock()
    fed = _fed(clock, fit_metrics_aggregation=broken)
    callers = {n: _join(fed, n) for n in FIT}
    fed.start_autorun(1)
    _run_round(fed, callers, FIT)
    rec = fed.history()[0]
    assert rec.fit_metrics == {} and rec.client_metrics == FIT and fed.round == 1


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_fedcore_client_process_evaluates(harness: Harness) -> None:
    """A `fedcore client` process (the CLI's app-built client) answers evaluate instructions."""
    srv = harness.server(make_settings("grpc", min_clients=2, fraction_evaluate=1.0), stop_when_done=True)
    harness.client(srv, "thread", 0, transport="grpc")
    harness.client_process(srv, "proc", 1, transport="grpc")
    wait_until(lambda: srv.federation.status().ready == 2, 150, "2 ready clients (one is a process)")
    srv.federation.start_autorun(1)
    wait_until(lambda: bool(srv.federation.history() and srv.federation.history()[-1].evaluated), 90,
               what="round 1 evaluated")
    rec = srv.federation.history()[-1]
    assert rec.evaluated == ("proc", "thread") and rec.federated_loss is not None
    assert 0.0 <= rec.federated_metrics["accuracy"] <= 1.0
