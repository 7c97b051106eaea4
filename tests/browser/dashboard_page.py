"""Page object of the dashboard: the locators and actions the browser tests share."""
from __future__ import annotations

import re
from typing import Any

from playwright.sync_api import expect


class Dashboard:
    def __init__(self, page: Any, url: str) -> None:
        self.page = page
        self.url = url.rstrip("/") + "/"

    def open(self) -> Dashboard:
        self.page.goto(self.url)
        expect(self.page).to_have_title(re.compile("fedcore"))
        expect(self.page.get_by_test_id("connection")).to_have_attribute("data-conn", "live")
        return self

    # ------------------------------------------------------------------ locators
    def tid(self, test_id: str) -> Any:
        return self.page.get_by_test_id(test_id)

    @property
    def rows(self) -> Any:
        return self.page.locator('tr[data-testid="client-row"]')

    def row(self, name: str) -> Any:
        return self.page.locator(f'tr[data-testid="client-row"][data-name="{name}"]')

    @property
    def acc_points(self) -> Any:
        return self.page.locator('[data-testid="accuracy-chart"] [data-testid="acc-point"]')

    @property
    def history_rows(self) -> Any:
        return self.page.locator('tr[data-testid="history-row"]')

    def history_row(self, rnd: int) -> Any:
        return self.page.locator(f'tr[data-testid="history-row"][data-round="{rnd}"]')

    # ------------------------------------------------------------------ expectations
    def expect_state(self, name: str, *states: str, timeout_ms: int | None = None) -> None:
        pattern = re.compile("^(" + "|".join(map(re.escape, states)) + ")$")
        kw = {"timeout": timeout_ms} if timeout_ms else {}
        expect(self.row(name)).to_have_attribute("data-state", pattern, **kw)

    def expect_num_clients(self, n: int, timeout_ms: int | None = None) -> None:
        kw = {"timeout": timeout_ms} if timeout_ms else {}
        expect(self.tid("status-num-clients")).to_have_text(str(n), **kw)

    def expect_rounds_done(self, n: int, timeout_ms: int | None = None) -> None:
        kw = {"timeout": timeout_ms} if timeout_ms else {}
        expect(self.tid("status-round")).to_have_text(str(n), **kw)

    # ------------------------------------------------------------------ actions
    def give_token_if_asked(self, token: str) -> None:
        dialog = self.tid("token-dialog")
        expect(dialog).to_be_visible()
        self.tid("token-input").fill(token)
        self.tid("token-ok").click()
        expect(dialog).to_be_hidden()

    def start_autorun(self, rounds: int, token: str | None = None) -> None:
        self.tid("autorun-rounds").fill(str(rounds))
        self.tid("btn-autorun").click()
        if token is not None:
            self.give_token_if_asked(token)

    def step(self, token: str | None = None) -> None:
        self.tid("btn-step").click()
        if token is not None:
            self.give_token_if_asked(token)

    def forget_token(self) -> None:
        forget = self.tid("btn-forget")
        if forget.is_visible():
            forget.click()
        expect(self.tid("token-state")).to_contain_text("not set")
