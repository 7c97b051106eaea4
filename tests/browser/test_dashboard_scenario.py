"""The REST paper's Figs 4–6 on the dashboard, step by step and deterministic.

A real server (Federation + REST transport on 127.0.0.1) and a real browser; the clients are
scripted in this thread through the Federation API (register, signal, train on their digits share,
submit), so the test decides exactly when each one trains, leaves or joins, and the page must show
each step live. Their ``rest``/``grpc`` labels are display-only here; real client processes on both
transports are in test_dashboard_e2e.py.

`FEDCORE_DASHBOARD_PNG=docs/dashboard.png pytest tests/browser/test_dashboard_scenario.py` also
writes the README's screenshot (mid-run: round 2 in progress, one client left).
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install '.[test]')")

from playwright.sync_api import expect  # noqa: E402

from browser.conftest import new_page  # noqa: E402
from browser.dashboard_page import Dashboard  # noqa: E402
from conftest import make_settings  # noqa: E402
from fedcore import wire  # noqa: E402
from fedcore.app.data import DataSplits, load_federated  # noqa: E402
from fedcore.federation import Federation, FederationConfig  # noqa: E402
from fedcore.operations import Caller  # noqa: E402
from fedcore.app.models import build_model  # noqa: E402
from fedcore.server import FederationServer  # noqa: E402
from fedcore.states import Action, ClientState  # noqa: E402
from fedcore.loops import make_evaluate_fn, train  # noqa: E402

pytestmark = pytest.mark.browser
ADMIN = "scenario-admin-token"


@dataclass
class ScriptedClient:
    fed: Federation
    name: str
    transport: str
    share: DataSplits
    tags: tuple[str, ...] = ()
    client_id: str = ""
    token: str = ""
    model: Any = field(default=None, repr=False)

    @property
    def me(self) -> Caller:
        return Caller(self.token, self.client_id)

    def join(self) -> ScriptedClient:
        reg = self.fed.register(Caller(peer="scenario"), self.name, len(self.share.train), self.transport, self.tags)
        self.client_id, self.token = reg.client_id, reg.token
        self.fed.fetch_global(self.me)
        self.fed.signal(self.me, ClientState.READY, wait_s=0)
        return self

    def poll(self) -> Any:
        """Report ready; a client selected for the open round is told to train (state → training)."""
        return self.fed.signal(self.me, ClientState.READY, wait_s=0)

    def train_and_submit(self, rnd: int) -> None:
        payload = self.fed.fetch_global(self.me).payload
        if self.model is None:
            self.model = build_model("digits_mlp", seed=0)
        self.model.load_state_dict(wire.decode_state(payload))
        metrics = train(self.model, self.share.train, epochs=5, seed=rnd)
        w = self.fed.config.wire
        update = wire.encode_state(self.model.state_dict(), dtype=w.dtype, codec=w.codec, level=w.level,
                                   filter=w.filter)
        self.fed.submit_update(self.me, rnd, update, len(self.share.train), metrics)

    def leave(self) -> None:
        self.fed.disconnect(self.client_id, self.me)


@pytest.fixture
def scenario() -> Iterator[tuple[FederationServer, list[DataSplits]]]:
    data = load_federated("digits", 6, seed=0)
    settings = make_settings("rest,grpc", min_clients=2, client_timeout_s=300.0, round_deadline_s=300.0,
                             admin_token=ADMIN)
    fed = Federation(
        build_model("digits_mlp", seed=0).state_dict(), FederationConfig.from_settings(settings),
        evaluate_fn=make_evaluate_fn(build_model("digits_mlp", seed=0), data.server_test),
    )
    srv = FederationServer(fed, settings).start()
    yield srv, data.clients
    srv.stop()


@pytest.fixture
def page_watch(browser: Any, scenario: Any) -> Iterator[tuple[Any, Any]]:
    """A fresh page; closed (with its event stream) before the server stops, pass or fail."""
    page, watch = new_page(browser)
    yield page, watch
    page.context.close()


def _round(dash: Dashboard, clients: list[ScriptedClient], rnd: int) -> None:
    """Every client polls; those selected for ``rnd`` must be told to train it."""
    for c in clients:
        instr = c.poll()
        assert instr.action is Action.TRAIN and instr.round == rnd, (c.name, instr)
        dash.expect_state(c.name, "training")


def test_paper_figures_4_to_6(page_watch: Any, scenario: Any, shot: Any) -> None:
    srv, shares = scenario
    fed: Federation = srv.federation
    page, watch = page_watch
    dash = Dashboard(page, srv.transports["rest"].url).open()
    expect(dash.tid("clients-empty")).to_be_visible()

    # Fig. 4: five clients join and are ready; the page shows each one as it arrives.
    clients = [ScriptedClient(fed, f"client_{i + 1}", "rest" if i % 2 == 0 else "grpc", shares[i],
                              tags=("browser",) if i == 3 else ()) for i in range(5)]
    for c in clients:
        c.join()
        dash.expect_state(c.name, "ready")
    expect(dash.rows).to_have_count(5)
    dash.expect_num_clients(5)
    expect(dash.tid("status-autorun")).to_have_text("off")
    expect(dash.row("client_2").get_by_test_id("client-transport")).to_have_text("grpc")
    expect(dash.row("client_1").get_by_test_id("client-id")).to_have_text(clients[0].client_id[:8])
    expect(dash.row("client_4").get_by_test_id("client-tag")).to_have_text("browser")  # ClientInfo.tags
    expect(dash.row("client_1").get_by_test_id("client-tag")).to_have_count(0)

    # Manual control: "Run one round" asks for the admin token once, then round 1 runs.
    dash.step(token=ADMIN)
    expect(dash.tid("status-current-round")).to_have_text("1")
    expect(dash.tid("status-round-phase")).to_contain_text("in progress")
    _round(dash, clients, 1)
    shot(page, "fig4-round1-training")
    for c in clients:
        c.train_and_submit(1)
    dash.expect_rounds_done(1)
    expect(dash.acc_points).to_have_count(1)
    # Each client's local metrics of the round: on its row and, per client, in the round's row.
    local = fed.history()[0].client_metrics["client_1"]
    first_key = sorted(local)[0]
    expect(dash.row("client_1").get_by_test_id("client-metrics")).to_contain_text(first_key)
    for c in clients:
        expect(dash.history_row(1).get_by_test_id("history-client-metrics")).to_contain_text(c.name)
    for c in clients:
        dash.expect_state(c.name, "finish", "ready")
        expect(dash.row(c.name).get_by_test_id("client-rounds")).to_have_attribute("data-count", "1")

    # Fig. 5: client_3 leaves in the middle of round 2; the others finish it; 5 → 4.
    dash.step()  # the token is remembered for this tab: no second prompt
    expect(dash.tid("token-dialog")).to_be_hidden()
    expect(dash.tid("status-current-round")).to_have_text("2")
    _round(dash, clients, 2)
    clients[0].train_and_submit(2)
    clients[1].train_and_submit(2)
    dash.expect_state("client_1", "update")
    clients[2].leave()
    dash.expect_state("client_3", "left")
    dash.expect_num_clients(4)
    expect(dash.tid("activity")).to_contain_text("client_3: training → left")
    shot(page, "fig5-dropout-mid-round")
    if os.environ.get("FEDCORE_DASHBOARD_PNG"):  # the README's picture: round 2 running, client_3 gone
        page.screenshot(path=os.environ["FEDCORE_DASHBOARD_PNG"], full_page=True, animations="disabled")
    for c in (clients[3], clients[4]):
        c.train_and_submit(2)
    dash.expect_rounds_done(2)
    expect(dash.acc_points).to_have_count(2)
    expect(dash.history_row(2)).to_contain_text("client_3")  # the "left out" column
    remaining = [c for c in clients if c.name != "client_3"]

    # Fig. 6: client_6 joins while round 3 runs: it waits, then takes part from round 4; 4 → 5.
    dash.step()
    expect(dash.tid("status-current-round")).to_have_text("3")
    _round(dash, remaining, 3)
    late = ScriptedClient(fed, "client_6", "rest", shares[5]).join()
    dash.expect_num_clients(5)
    late_row = dash.row("client_6")
    expect(late_row).to_have_attribute("data-waiting", "true")
    expect(late_row.get_by_test_id("client-waiting")).to_be_visible()
    expect(late_row.get_by_test_id("client-waiting")).to_have_text("waiting (next round)")
    assert late.poll().action is Action.WAIT  # not part of the open round
    shot(page, "fig6-late-join-waiting")
    for c in remaining:
        c.train_and_submit(3)
    dash.expect_rounds_done(3)
    expect(late_row).to_have_attribute("data-waiting", "false")
    expect(dash.history_row(3)).not_to_contain_text("client_6")

    # Round 4 from "Start autorun" for 1 round: the late joiner takes part like the others.
    dash.start_autorun(1)
    expect(dash.tid("status-current-round")).to_have_text("4")
    _round(dash, [*remaining, late], 4)
    for c in [*remaining, late]:
        c.train_and_submit(4)
    dash.expect_rounds_done(4)
    expect(dash.acc_points).to_have_count(4)
    expect(dash.history_row(4)).to_contain_text("client_6")
    expect(late_row.get_by_test_id("client-rounds")).to_have_attribute("data-count", "1")
    expect(dash.tid("status-autorun")).to_have_text("off")  # target reached
    expect(dash.tid("status-rounds-left")).to_have_text("finished 4/4")
    expect(dash.tid("activity")).to_contain_text("autorun finished 4/4")
    expect(dash.page.locator('[data-testid="bytes-chart"] [data-testid="bytes-in"]')).to_have_count(4)
    acc = [float(a) for a in dash.acc_points.evaluate_all("els => els.map(e => e.dataset.value)")]
    assert acc == pytest.approx([h.accuracy for h in fed.history()])
    # The accuracy axis spans the data (padded), not 0..100 %, once the points are well above 0.
    chart = dash.page.locator('[data-testid="accuracy-chart"] svg')
    lo, hi = float(chart.get_attribute("data-acc-min") or "nan"), float(chart.get_attribute("data-acc-max") or "nan")
    assert lo <= min(acc) and max(acc) <= hi, (lo, hi, acc)
    assert hi - lo < 1.0 and lo > 0.0, (lo, hi, acc)

    # Disconnect from the page (admin): the row turns left and the count drops.
    late_row.get_by_test_id("btn-disconnect").click()
    dash.expect_state("client_6", "left")
    dash.expect_num_clients(4)
    expect(late_row.get_by_test_id("btn-disconnect")).to_be_disabled()
    shot(page, "after-disconnect")

    # An admin-requested transport switch shows on the row until the client moves (next round).
    c1 = clients[0]
    fed.request_transport(c1.client_id, "grpc")
    pending = dash.row("client_1").get_by_test_id("client-switch-pending")
    expect(pending).to_have_text("→ grpc (next round)")
    shot(page, "switch-pending")
    fed.register(c1.me, c1.name, len(c1.share.train), "grpc")  # what FLClient does when it switches
    expect(pending).to_have_count(0)
    expect(dash.row("client_1").get_by_test_id("client-transport")).to_have_text("grpc")
    watch.assert_clean()


def test_polling_fallback_and_names_shown_as_text(page_watch: Any, scenario: Any, shot: Any) -> None:
    """With /events blocked the page polls and stays current; a client's name is never markup."""
    srv, shares = scenario
    fed: Federation = srv.federation
    page, watch = page_watch
    page.route("**/events*", lambda route: route.abort())
    dash = Dashboard(page, srv.transports["rest"].url)
    page.goto(dash.url)
    expect(dash.tid("connection")).to_have_attribute("data-conn", "polling")
    evil = '<img id="xss" src="x" onerror="window.pwned=1">'
    ScriptedClient(fed, evil, "rest", shares[0]).join()
    ScriptedClient(fed, "client_2", "grpc", shares[1]).join()
    dash.expect_num_clients(2)
    expect(dash.rows.filter(has_text="onerror").get_by_test_id("client-name")).to_have_text(evil)
    expect(page.locator("#xss")).to_have_count(0)
    fed.start_autorun(1)  # started on the server side: the page learns it by polling
    expect(dash.tid("status-current-round")).to_have_text("1")
    expect(dash.row("client_2")).to_have_attribute("data-waiting", "false")  # selected, not waiting
    shot(page, "polling")
    assert page.evaluate("window.pwned") is None
    # the network errors of the blocked stream are expected here; nothing else may fail
    watch.errors = [e for e in watch.errors if "ERR_FAILED" not in e and "events" not in e]
    watch.assert_clean()
