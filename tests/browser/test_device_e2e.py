"""Browser devices in real federations: the /device page in headless Chromium (tfjs on the wasm
backend, fedcore's wire format in JavaScript) next to a Python client, on one in-process server.
"""
from __future__ import annotations

import time

from collections.abc import Callable
from typing import Any

import httpx
import pytest

pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install '.[test]')")

from playwright.sync_api import expect  # noqa: E402

from browser.conftest import new_page  # noqa: E402
from browser.dashboard_page import Dashboard  # noqa: E402
from browser.device_page import DevicePage  # noqa: E402
from conftest import Harness, make_settings, wait_until  # noqa: E402
from transports.rest.routes_device import is_built  # noqa: E402

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not is_built(), reason="the device page is not built (make browser)")]
ROUNDS_S = 240.0
ADMIN = "device-admin-token"


def _plain(value):  # a core dataclass as the JSON the REST views serve (tuples as lists)
    import dataclasses
    import json

    return json.loads(json.dumps(dataclasses.asdict(value)))


def _hist(fed):
    return [_plain(h) for h in fed.history()]


def _clients(fed):
    return [_plain(c) for c in fed.clients()]


def _url(srv: Any) -> str:
    return str(srv.transports["rest"].url)


def _autorun(url: str, rounds: int, admin: str | None = None) -> None:
    headers = {"Authorization": f"Bearer {admin}"} if admin else {}
    httpx.post(f"{url}/client/autorun/{rounds}", headers=headers, timeout=10).raise_for_status()


def _names(history: list[dict[str, Any]], rnd: int) -> list[str]:
    return next(h["participants"] for h in history if h["round"] == rnd)


def test_two_browsers_and_a_python_client_reach_90_percent(browser: Any, harness: Harness,
                                                            shot: Callable[[Any, str], Any]) -> None:
    srv = harness.server(make_settings("rest", min_clients=3, num_partitions=3, client_timeout_s=10.0,
                                       heartbeat_s=0.5, round_deadline_s=60.0, local_epochs=1))
    url, fed = _url(srv), srv.federation
    devices = [DevicePage(browser, url, f"web_{i + 1}", i) for i in range(2)]
    py = harness.client(srv, "py_3", 2, transport="rest")
    try:
        for d in devices:
            d.wait_for("s.state === 'ready'")
        wait_until(lambda: sum(c["state"] == "ready" for c in _clients(fed)) == 3, 120, "three ready clients")
        _autorun(url, 5)
        wait_until(lambda: fed.round >= 5, ROUNDS_S, "five rounds")
        history = _hist(fed)
        assert [h["participants"] for h in history] == [["py_3", "web_1", "web_2"]] * 5
        assert history[-1]["accuracy"] >= 0.90, [h["accuracy"] for h in history]
        for d in devices:
            d.wait_for("s.rounds.length === 5", 10_000)
            s = d.status()
            assert s is not None and s["rounds"] == [1, 2, 3, 4, 5] and s["error"] is None, s
            assert s["model"] == "digits_mlp" and s["metrics"]["train_accuracy"] > 0.8, s
            d.watch.assert_clean()
        rows = {c["name"]: c for c in _clients(fed)}
        for name in ("web_1", "web_2"):
            assert rows[name]["transport"] == "rest"
            if "tags" in rows[name]:  # the server keeps tags once registration accepts them
                assert "browser" in rows[name]["tags"]
        assert py.error is None
        expect(devices[0].page.get_by_test_id("global")).to_contain_text("round 5 · accuracy")
        shot(devices[0].page, "device-after-5-rounds")

        page, watch = new_page(browser)  # the dashboard lists the browser devices beside the Python client
        dash = Dashboard(page, url).open()
        for name in ("web_1", "web_2", "py_3"):
            dash.expect_state(name, "ready", "finish")
            expect(dash.row(name).get_by_test_id("client-transport")).to_have_text("rest")
        dash.expect_rounds_done(5)
        shot(page, "dashboard-with-browser-devices")
        watch.assert_clean()
        page.context.close()
    finally:
        for d in devices:
            d.close()


def test_closed_tab_is_dropped_a_late_tab_joins_the_next_round_and_the_admin_can_remove_one(
        browser: Any, harness: Harness) -> None:
    srv = harness.server(make_settings("rest", min_clients=2, num_partitions=3, client_timeout_s=3.0,
                                       heartbeat_s=0.5, round_deadline_s=90.0, local_epochs=1, admin_token=ADMIN))
    url, fed = _url(srv), srv.federation
    steady = DevicePage(browser, url, "web_steady", 0)
    doomed = DevicePage(browser, url, "web_doomed", 1)
    late: DevicePage | None = None
    # The doomed tab's upload is held in the browser (the round's training config comes from the
    # server, one fast epoch, so closing "while it trains" alone would race its upload): the tab
    # closes with its update unsent, mid-round, and its heartbeats stop.
    held: list[Any] = []
    doomed.page.route(lambda u: "/transmitter/" in u,
                      lambda route: held.append(route) if route.request.method == "POST" else route.continue_())
    try:
        steady.wait_for("s.state === 'ready'")
        doomed.wait_for("s.state === 'ready'")
        _autorun(url, 3, ADMIN)
        deadline = time.monotonic() + 60
        while not held and time.monotonic() < deadline:
            doomed.page.wait_for_timeout(100)  # a Playwright call: route handlers run during it
        assert held, "the doomed tab never tried to upload its update"
        doomed.close()  # mid-round: no update, no heartbeats
        wait_until(lambda: fed.round >= 1, 60, "round 1 to finish without the closed tab")
        first = _hist(fed)[0]
        assert first["participants"] == ["web_steady"] and first["dropped"] == ["web_doomed"], first
        assert {c["name"]: c["state"] for c in _clients(fed)}["web_doomed"] == "left"

        late = DevicePage(browser, url, "web_late", 2)  # round 2 waits for a second ready client
        wait_until(lambda: fed.round >= 3, ROUNDS_S, "rounds 2 and 3 with the late tab")
        history = _hist(fed)
        assert _names(history, 2) == ["web_late", "web_steady"] and _names(history, 3) == ["web_late", "web_steady"]
        late.wait_for("s.rounds.length === 2", 10_000)
        assert late.status()["rounds"] == [2, 3]  # type: ignore[index]
        for d in (steady, late):
            d.watch.assert_clean()

        # the dashboard's "disconnect" (DELETE /client/{id} with the admin token) stops a page
        late_id = late.status()["clientId"]  # type: ignore[index]
        httpx.delete(f"{url}/client/{late_id}", headers={"Authorization": f"Bearer {ADMIN}"},
                     timeout=10).raise_for_status()
        late.wait_for("s.state === 'finish'", 30_000)
        assert {c["name"]: c["state"] for c in _clients(fed)}["web_late"] == "left"
    finally:
        for page in (steady, doomed, late):
            if page is not None:
                page.close()


def test_a_corrupt_global_is_refused_and_nothing_is_sent(browser: Any, harness: Harness) -> None:
    srv = harness.server(make_settings("rest", min_clients=1, num_partitions=3))
    url, fed = _url(srv), srv.federation
    page, watch = new_page(browser)

    def corrupt(route: Any) -> None:
        resp = route.fetch()
        body = bytearray(resp.body())
        body[-3] ^= 0x40  # one flipped bit inside the last segment
        route.fulfill(response=resp, body=bytes(body))

    page.route("**/transmitter", corrupt)
    posts: list[str] = []

    def note_post(req: Any) -> None:
        if req.method == "POST" and "/transmitter/" in req.url:
            posts.append(req.url)

    page.on("request", note_post)
    page.goto(f"{url}/device?name=web_x&shard=0&autostart=1")
    expect(page.get_by_test_id("error")).to_contain_text("checksum mismatch", timeout=90_000)
    expect(page.get_by_test_id("state")).to_have_text("error")
    assert not posts
    assert all(not c["rounds"] for c in _clients(fed))
    page.context.close()
    watch.assert_clean()


def test_page_trains_the_cnn_when_the_server_serves_it(browser: Any, harness: Harness) -> None:
    srv = harness.server(make_settings("rest", min_clients=1, num_partitions=3, model="digits_cnn"))
    url, fed = _url(srv), srv.federation
    device = DevicePage(browser, url, "web_cnn", 0)
    try:
        device.wait_for("s.state === 'ready'")
        _autorun(url, 1)
        wait_until(lambda: fed.round >= 1, 120, "one CNN round")
        assert _hist(fed)[0]["participants"] == ["web_cnn"]
        s = device.status()
        assert s is not None and s["model"] == "digits_cnn" and s["error"] is None, s
        device.watch.assert_clean()
    finally:
        device.close()
