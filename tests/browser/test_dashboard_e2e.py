"""The dashboard against a real run: one server (REST + gRPC, admin token set) started in-process,
real client processes (`python -m fedcore client ...`) over both transports, headless Chromium.

The tests are the steps of one run and share it (module-scoped server, clients and page); pytest
runs them in file order, and a step whose predecessor failed is skipped rather than failed twice.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install '.[test]')")

from playwright.sync_api import expect  # noqa: E402

from browser.conftest import new_page  # noqa: E402
from browser.dashboard_page import Dashboard  # noqa: E402
from conftest import ROOT, Harness, make_settings  # noqa: E402

pytestmark = pytest.mark.browser
ADMIN = "e2e-admin-token"
# A client that misses heartbeats this long is dropped. 2 s is enough on an idle machine, but a
# client's first round (cold torch) on a busy 2-core runner can starve its heartbeat thread longer.
CLIENT_TIMEOUT_S = 5.0
START_MS = 120_000  # client processes import torch: slow on a busy 2-core machine
ROUNDS_MS = 120_000
CLIENT_ARGS = ["--set", "local_epochs=1"]
# client_3 (the one killed) speaks gRPC, whose server side notices a dead peer's long-poll at once;
# the late joiner speaks REST: both transports stay in the run the whole time.
TRANSPORTS = {"client_1": "rest", "client_2": "grpc", "client_3": "grpc", "client_4": "rest"}


class Run:
    def __init__(self, harness: Harness, srv: Any, page: Any, watch: Any) -> None:
        self.harness, self.srv, self.fed = harness, srv, srv.federation
        self.page, self.watch = page, watch
        self.dash = Dashboard(page, srv.transports["rest"].url)
        self.procs: dict[str, Any] = {}
        self.done: set[str] = set()

    def start_client(self, name: str) -> None:
        index = int(name.rsplit("_", 1)[1]) - 1
        self.procs[name] = self.harness.client_process(self.srv, name, index, transport=TRANSPORTS[name],
                                                       extra=CLIENT_ARGS)

    def warm_client(self, name: str) -> None:
        """The late joiner: its process starts (and imports torch) now; it joins at ``join()``."""
        index = int(name.rsplit("_", 1)[1]) - 1
        s = self.srv.client_settings()
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", FEDCORE_LOG_LEVEL="WARNING")
        cmd = [sys.executable, str(Path(__file__).with_name("warm_client.py")), "--name", name, "--index", str(index),
               "--transport", TRANSPORTS[name], "--rest-port", str(s.rest_port), "--grpc-port", str(s.grpc_port),
               "--set", f"num_partitions={s.num_partitions}", "--set", f"heartbeat_s={s.heartbeat_s}",
               "--timeout", "120", *CLIENT_ARGS]
        p = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.harness.procs.append(p)  # killed by the harness at the end
        self.procs[name] = p

    def join(self, name: str) -> None:
        p = self.procs[name]
        assert p.poll() is None, f"{name}'s process exited early ({p.returncode})"
        assert p.stdin is not None
        p.stdin.write(b"go\n")
        p.stdin.close()

    def needs(self, *steps: str) -> None:
        missing = [s for s in steps if s not in self.done]
        if missing:
            pytest.skip(f"an earlier step did not pass: {', '.join(missing)}")

    def fetch(self, method: str, path: str, token: str | None = None, body: Any = None) -> dict[str, Any]:
        """A fetch() from inside the page (same origin as the dashboard's own calls)."""
        return self.page.evaluate(
            """async ([method, path, token, body]) => {
                const headers = {};
                if (token) headers.Authorization = `Bearer ${token}`;
                if (body) headers["Content-Type"] = "application/json";
                const r = await fetch(path, { method, headers, body: body ? JSON.stringify(body) : undefined });
                let json = null; try { json = await r.json(); } catch {}
                return { status: r.status, json };
            }""",
            [method, path, token, body],
        )


@pytest.fixture(scope="module")
def run(browser: Any, digits: Any) -> Iterator[Run]:
    harness = Harness(digits)
    settings = make_settings("rest,grpc", min_clients=2, num_partitions=4, client_timeout_s=CLIENT_TIMEOUT_S, heartbeat_s=0.5,
                             round_deadline_s=30.0, local_epochs=1, admin_token=ADMIN)
    srv = harness.server(settings)
    page, watch = new_page(browser)
    r = Run(harness, srv, page, watch)
    try:
        for name in ("client_1", "client_2", "client_3"):
            r.start_client(name)
        r.warm_client("client_4")
        yield r
    finally:
        page.context.close()  # close the event stream before the server stops
        harness.close()


def test_page_shows_three_live_clients(run: Run, shot: Any) -> None:
    dash = run.dash.open()
    for name in ("client_1", "client_2", "client_3"):
        dash.expect_state(name, "ready", timeout_ms=START_MS)
        expect(dash.row(name).get_by_test_id("client-transport")).to_have_text(TRANSPORTS[name])
    expect(dash.rows).to_have_count(3)
    dash.expect_num_clients(3)
    expect(dash.tid("status-autorun")).to_have_text("off")
    expect(dash.tid("status-round")).to_have_text("0")
    shot(run.page, "three-clients-ready")
    run.watch.assert_clean()
    run.done.add("open")


def test_autorun_three_rounds_from_the_page(run: Run, shot: Any) -> None:
    run.needs("open")
    dash = run.dash
    dash.start_autorun(3, token=ADMIN)  # the page asks for the admin token once
    expect(dash.tid("control-message")).to_contain_text("done")
    expect(dash.tid("status-autorun")).to_have_text("on")
    expect(dash.tid("status-rounds-left")).to_contain_text("left")
    dash.expect_rounds_done(3, timeout_ms=ROUNDS_MS)
    expect(dash.tid("status-current-round")).to_have_text("3")
    expect(dash.acc_points).to_have_count(3)
    expect(dash.history_rows).to_have_count(3)
    expect(dash.page.locator('[data-testid="bytes-chart"] [data-testid="bytes-in"]')).to_have_count(3)
    expect(dash.tid("status-autorun")).to_have_text("off")
    expect(dash.tid("status-rounds-left")).to_have_text("finished 3/3")
    expect(dash.tid("status-accuracy")).to_contain_text("%")
    for name in ("client_1", "client_2", "client_3"):
        dash.expect_state(name, "ready", "finish")
        expect(dash.row(name).get_by_test_id("client-rounds")).to_have_attribute("data-count", "3")
    acc = [float(a) for a in dash.acc_points.evaluate_all("els => els.map(e => e.dataset.value)")]
    assert acc == pytest.approx([h.accuracy for h in run.fed.history()])
    assert all(0.0 < a <= 1.0 for a in acc)
    shot(run.page, "three-rounds-done")
    run.watch.assert_clean()
    run.done.add("autorun")


def test_killed_client_turns_left_and_count_drops(run: Run, shot: Any) -> None:
    run.needs("autorun")
    dash = run.dash
    run.procs["client_3"].kill()  # SIGKILL: no goodbye, the server notices the silence
    run.procs["client_3"].wait(timeout=10)
    dash.expect_state("client_3", "left", timeout_ms=30_000)
    dash.expect_num_clients(2)
    expect(dash.tid("activity")).to_contain_text("→ left")
    expect(dash.row("client_3").get_by_test_id("btn-disconnect")).to_be_disabled()
    for name in ("client_1", "client_2"):
        dash.expect_state(name, "ready", "finish")
    shot(run.page, "client-3-left")
    run.watch.assert_clean()
    run.done.add("dropout")


def test_late_joiner_appears_and_takes_part_in_the_next_round(run: Run, shot: Any) -> None:
    run.needs("dropout")
    dash = run.dash
    run.join("client_4")  # its process was started (warm, not registered) with the others
    expect(dash.row("client_4")).to_have_count(1, timeout=START_MS)
    dash.expect_num_clients(3)
    expect(dash.row("client_4").get_by_test_id("client-transport")).to_have_text("rest")
    dash.expect_state("client_4", "ready", timeout_ms=START_MS)
    expect(dash.row("client_4").get_by_test_id("client-rounds")).to_have_attribute("data-count", "0")
    dash.step()  # "Run one round": the token given in the autorun step is remembered
    expect(dash.tid("control-message")).to_contain_text("run one round: done")
    dash.expect_rounds_done(4, timeout_ms=ROUNDS_MS)
    expect(dash.history_row(4)).to_contain_text("client_4")
    expect(dash.row("client_4").get_by_test_id("client-rounds")).to_have_attribute("data-count", "1")
    expect(dash.acc_points).to_have_count(4)
    assert "client_4" in run.fed.history()[-1].participants
    shot(run.page, "late-joiner-took-part")
    run.watch.assert_clean()
    run.done.add("late-join")


def test_control_without_admin_token_is_refused(run: Run, shot: Any) -> None:
    run.needs("open")
    dash = run.dash
    before = run.fed.status()
    # No token at all: 401 on every control route.
    for method, path in (("POST", "client/autorun/2"), ("DELETE", "client/autorun"), ("POST", "round/step")):
        assert run.fetch(method, path)["status"] == 401, (method, path)
    # A client's own token is not an admin token: 403 for round control, and it cannot kick others.
    reg = run.fetch("POST", "client", body={"name": "intruder", "transport": "rest"})
    assert reg["status"] == 200
    client_token = reg["json"]["token"]
    assert run.fetch("POST", "round/step", client_token)["status"] == 403
    assert run.fetch("POST", "client/autorun/5", client_token)["status"] == 403
    victim = next(c for c in run.fed.clients() if c.name == "client_1")
    assert run.fetch("DELETE", f"client/{victim.client_id}", client_token)["status"] in (401, 403)
    # From the page: the control is refused, the page says so and asks for a token again next time.
    dash.forget_token()
    dash.start_autorun(5, token=client_token)
    expect(dash.tid("control-message")).to_contain_text("refused")
    expect(dash.tid("control-message")).to_contain_text("HTTP 403")
    expect(dash.tid("token-state")).to_contain_text("not set")
    expect(dash.tid("status-autorun")).to_have_text("off")
    dash.step()
    dash.tid("token-cancel").click()
    expect(dash.tid("control-message")).to_contain_text("cancelled")
    time.sleep(0.5)  # would a round start? (it must not)
    after = run.fed.status()
    assert after.autorun is False and after.round == before.round and not after.round_open
    assert next(c for c in run.fed.clients() if c.name == "client_1").state != "left"
    shot(run.page, "control-refused")
    run.watch.assert_clean()
