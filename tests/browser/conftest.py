"""Browser fixtures: Debian's Chromium driven by Playwright (never `playwright install`).

The first browser test of a session runs ``install_chromium.sh`` (idempotent: apt-get install
chromium when it is missing and we are root) and skips the browser tests, with the reason, only
when no Chromium can be found afterwards.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
INSTALL_SCRIPT = HERE / "install_chromium.sh"
# Chromium as root needs --no-sandbox; the rest keep it off a closed network (no update checks,
# no QUIC probes, no background fetches) and away from /dev/shm limits of containers.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--disable-extensions",
    "--disable-default-apps", "--no-default-browser-check", "--mute-audio",
]
VIEWPORT = {"width": 1440, "height": 1100}
EXPECT_TIMEOUT_MS = 30_000


def find_chromium() -> str | None:
    for cand in (os.environ.get("CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
                 "/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    path = find_chromium()
    if path is None:
        try:
            subprocess.run(["sh", str(INSTALL_SCRIPT)], check=False, timeout=900,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except (OSError, subprocess.TimeoutExpired) as exc:
            print(f"install_chromium.sh did not finish: {exc}")
        path = find_chromium()
    if path is None:
        pytest.skip("Chromium is not installed and could not be installed here (tests/browser/install_chromium.sh "
                    "needs root and apt-get; or set CHROMIUM=/path/to/chromium)")
    return path


@pytest.fixture(scope="session")
def browser(chromium_executable: str) -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install '.[test]')")
    sync_api.expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    pw = sync_api.sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=chromium_executable, headless=True, args=CHROMIUM_ARGS)
    except Exception as exc:  # a Chromium that cannot start here is the same as none
        pw.stop()
        pytest.skip(f"Chromium at {chromium_executable} does not start headless: {exc}")
    yield b
    b.close()
    pw.stop()


class PageWatch:
    """A page plus the JavaScript errors it raised (the dashboard must run without any)."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        self.urls: list[str] = []
        page.on("request", lambda req: self.urls.append(req.url))
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("console", lambda msg: msg.type == "error" and self.errors.append(f"console: {msg.text}"))

    def assert_clean(self) -> None:
        # A server that refuses a control call logs "Failed to load resource: 401/403" on the console:
        # that is the expected answer, not a page bug.
        real = [e for e in self.errors if "status of 401" not in e and "status of 403" not in e]
        assert not real, "JavaScript errors on the dashboard:\n" + "\n".join(real)
        # Offline: every asset and call goes to the fedcore server itself (no CDN, no third party).
        hosts = {u.split("/")[2] for u in self.urls if u.startswith(("http://", "https://"))}
        assert len(hosts) <= 1 and all(h.startswith(("127.0.0.1:", "localhost:")) for h in hosts), hosts


def new_page(browser: Any) -> tuple[Any, PageWatch]:
    ctx = browser.new_context(viewport=VIEWPORT, device_scale_factor=1, service_workers="block")
    page = ctx.new_page()
    page.set_default_timeout(EXPECT_TIMEOUT_MS)
    return page, PageWatch(page)


@pytest.fixture
def shot(tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[Any, str], Path]:
    """``shot(page, "name")`` saves a full-page screenshot under this test's tmp dir."""

    def take(page: Any, name: str) -> Path:
        path = tmp_path / f"{request.node.name}-{name}.png"
        page.screenshot(path=str(path), full_page=True, animations="disabled")
        print(f"screenshot: {path}")
        return path

    return take
