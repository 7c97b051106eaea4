"""Page object of the browser device (/device): open one as a federation client and read its state."""
from __future__ import annotations

from typing import Any

from browser.conftest import PageWatch, new_page

START_MS = 90_000  # the first page of a session compiles tfjs' wasm: slow on a busy 2-core machine


class DevicePage:
    def __init__(self, browser: Any, url: str, name: str, shard: int, *, epochs: int = 1, autostart: bool = True,
                 extra: str = "") -> None:
        self.name = name
        self.page, self.watch = new_page(browser)
        query = f"name={name}&shard={shard}&epochs={epochs}&autostart={int(autostart)}" + (f"&{extra}" if extra else "")
        self.page.goto(f"{url.rstrip('/')}/device?{query}")

    def status(self) -> dict[str, Any] | None:
        return self.page.evaluate("() => window.fedcoreDevice && window.fedcoreDevice.device"
                                  " ? window.fedcoreDevice.device.status : null")

    def wait_for(self, js_condition: str, timeout_ms: int = START_MS) -> None:
        """Wait until ``js_condition`` holds for the device status ``s`` (e.g. "s.state === 'ready'")."""
        self.page.wait_for_function(
            f"() => {{ const d = window.fedcoreDevice && window.fedcoreDevice.device; const s = d && d.status;"
            f" return !!s && ({js_condition}); }}", timeout=timeout_ms)

    def error_text(self) -> str:
        return str(self.page.evaluate("() => document.getElementById('error').textContent"))

    def close(self) -> None:
        self.page.context.close()


__all__ = ["DevicePage", "PageWatch", "START_MS"]
