"""``fedcore new``: the generated project runs as its README says (server + 2 client processes, 2 rounds)."""
from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import ROOT
from fedcore.app.cli import app

START_TIMEOUT_S = 120.0
RUN_TIMEOUT_S = 240.0


def test_new_writes_the_project(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["new", "myfl", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    root = tmp_path / "myfl"
    names = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert names == {"pyproject.toml", "README.md", "server.toml", "myfl/__init__.py", "myfl/client_app.py"}
    assert "fedcore server --config server.toml --app myfl.client_app:make_app" in (root / "README.md").read_text()
    again = CliRunner().invoke(app, ["new", "myfl", "--dir", str(tmp_path)])
    assert again.exit_code == 2 and "already exists" in again.stderr
    bad = CliRunner().invoke(app, ["new", "my-fl", "--dir", str(tmp_path)])
    assert bad.exit_code == 2 and "not a valid package name" in bad.stderr


class Lines:
    """A process's merged output, drained by a thread (a full pipe would block the process)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._q: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._drain, args=(proc,), daemon=True)
        self._thread.start()

    def _drain(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line)
            self._q.put(line)

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match[str]:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            try:
                line = self._q.get(timeout=0.5)
            except queue.Empty:
                continue
            if m := re.search(pattern, line):
                return m
        raise AssertionError(f"no line matching {pattern!r}; got:\n{''.join(self.lines)}")

    def text(self) -> str:
        self._thread.join(timeout=10)
        return "".join(self.lines)


@pytest.mark.timeout(420)
def test_new_project_runs_two_rounds(tmp_path: Path) -> None:
    assert CliRunner().invoke(app, ["new", "myfl", "--dir", str(tmp_path)]).exit_code == 0
    root = tmp_path / "myfl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDCORE_")}
    env |= {"PYTHONPATH": os.pathsep.join([str(root), str(ROOT)]), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    fed = [sys.executable, "-m", "fedcore"]
    server = subprocess.Popen(
        [*fed, "server", "--config", "server.toml", "--app", "myfl.client_app:make_app", "--rest-port", "0",
         "--rounds", "2", "--autorun", "--exit-when-done", "--no-auth", "--set", "local_epochs=1"],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    clients: list[subprocess.Popen[str]] = []
    try:
        out = Lines(server)
        port = out.wait_for(r"rest listening on http://127\.0\.0\.1:(\d+)", START_TIMEOUT_S).group(1)
        for i in range(2):
            clients.append(subprocess.Popen(
                [*fed, "client", "--app", "myfl.client_app:make_app", "--name", f"c{i}", "--index", str(i),
                 "--rest-port", port], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        client_out = [Lines(c) for c in clients]
        assert server.wait(timeout=RUN_TIMEOUT_S) == 0, out.text()
        for c, lines in zip(clients, client_out):
            assert c.wait(timeout=60) == 0, lines.text()
    finally:
        for p in [server, *clients]:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    text = out.text()
    # Each address once (the transports' own log lines are lowered by the CLI), the dashboard once.
    assert text.count("listening on") == 1 and text.count(f"rest listening on http://127.0.0.1:{port}") == 1, text
    assert text.count("dashboard: ") == 1
    assert text.count("autorun finished 2/2") == 1
    assert re.search(r"server stopped at round 2, accuracy 0\.\d+", text), text
    for i, lines in enumerate(client_out):
        ctext = lines.text()
        assert f"c{i}: connected to http://127.0.0.1:{port}" in ctext
        assert re.search(rf"c{i}: round 2 over rest: train_loss [\d.]+  val_loss [\d.]+  val_accuracy", ctext), ctext
        assert f"c{i}: took part in rounds [1, 2]" in ctext
