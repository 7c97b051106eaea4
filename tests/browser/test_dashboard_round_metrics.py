"""The dashboard shows a round's aggregated fit metrics, federated evaluation and strategy metrics
(issue 18): extra series on the accuracy/loss chart and a Round metrics cell, for any keys.

Two in-process clients answer the Federation's operations directly (no model training), so the
values on the page are known exactly."""
from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import torch

pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install '.[test]')")

from playwright.sync_api import expect  # noqa: E402

from browser.conftest import new_page  # noqa: E402
from browser.dashboard_page import Dashboard  # noqa: E402
from conftest import make_settings  # noqa: E402
from fedcore import wire  # noqa: E402
from fedcore.federation import Federation  # noqa: E402
from fedcore.operations import Caller, EvaluationReport  # noqa: E402
from fedcore.server import FederationServer  # noqa: E402
from fedcore.states import Action, ClientState  # noqa: E402
from fedcore.strategy import FedAvg  # noqa: E402


class _Epsilon(FedAvg):
    def round_metrics(self) -> Mapping[str, float]:
        return {"epsilon": 1.25}


@pytest.fixture
def server() -> Iterator[FederationServer]:
    settings = make_settings("rest", min_clients=2, fraction_evaluate=1.0, dtype="fp32", evaluate_deadline_s=30.0)
    fed = Federation.from_settings(settings, {"w": torch.zeros(4)}, strategy=_Epsilon(),
                                   evaluate_fn=lambda s: {"accuracy": 0.5, "loss": 1.0})
    srv = FederationServer(fed, settings).start()
    try:
        yield srv
    finally:
        srv.stop()


def _wait_for(fed: Federation, me: Caller, action: Action) -> int:
    end = time.monotonic() + 30
    while time.monotonic() < end:
        instr = fed.signal(me, ClientState.READY, 1.0)
        if instr.action is action:
            return instr.round
    raise AssertionError(f"no {action.value} instruction within 30 s")


def test_round_metrics_on_the_page(browser: Any, server: FederationServer) -> None:
    fed = server.federation
    callers = []
    for name in ("a", "b"):
        reg = fed.register(Caller(peer="t"), name, 10, "test")
        callers.append(Caller(reg.token, reg.client_id))
        fed.signal(callers[-1], ClientState.READY, 0)
    fed.start_autorun(1)
    for me, n, acc in zip(callers, (10, 30), (0.6, 0.8)):
        rnd = _wait_for(fed, me, Action.TRAIN)
        fed.submit_update(me, rnd, wire.encode_state({"w": torch.ones(4)}, dtype="fp32"), n,
                          {"train_accuracy": acc, "train_loss": 1.0 - acc})
    for me, n, loss in zip(callers, (20, 60), (0.4, 0.2)):
        rnd = _wait_for(fed, me, Action.EVALUATE)
        fed.submit_evaluation(me, rnd, EvaluationReport(n, loss, {"accuracy": 1.0 - loss}))
    end = time.monotonic() + 30
    while not (fed.history() and fed.history()[-1].evaluated) and time.monotonic() < end:
        time.sleep(0.1)
    rec = fed.history()[-1]
    assert rec.federated_loss == pytest.approx((20 * 0.4 + 60 * 0.2) / 80)

    page, watch = new_page(browser)
    try:
        Dashboard(page, f"http://127.0.0.1:{server.ports['rest']}/").open()
        points = page.locator('[data-testid="accuracy-chart"] [data-testid="extra-point"]')
        # federated accuracy, federated loss, fit train_accuracy, fit train_loss: one round each
        expect(points).to_have_count(4)
        series = dict(points.evaluate_all("els => els.map(e => [e.dataset.series, Number(e.dataset.value)])"))
        assert series["federated loss"] == pytest.approx(rec.federated_loss)
        assert series["federated accuracy"] == pytest.approx((20 * 0.6 + 60 * 0.8) / 80)
        assert series["fit train_accuracy"] == pytest.approx((10 * 0.6 + 30 * 0.8) / 40)
        cell = page.get_by_test_id("history-round-metrics").first
        expect(cell).to_contain_text("strategy")
        expect(cell).to_contain_text("epsilon 1.2500")
        expect(cell).to_contain_text("federated (2 client(s))")
        expect(page.get_by_test_id("accuracy-extra-legend")).to_contain_text("federated loss")
        watch.assert_clean()
    finally:
        page.context.close()
