"""The OpenAPI schema describes the live REST server: schemathesis (every check, bounded and
deterministic examples, all its phases) finds no response, status, header or auth behaviour the
schema does not state, and no schema-valid request the server refuses.

/events is left out: it is a server-sent event stream that never ends by design, so a client
that reads the whole response would only stop at its request timeout.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedcore.app.models import build_model
from fedcore.config import Settings
from fedcore.federation import Federation
from fedcore.server import FederationServer

ROOT = Path(__file__).resolve().parents[1]
ADMIN_TOKEN = "openapi-admin"
EXAMPLES = 10  # per operation and phase; enough to cover every documented branch on 2 cores in ~30 s
RUN_TIMEOUT_S = 240


def _st() -> str:
    pytest.importorskip("schemathesis", reason="schemathesis is not installed (the test extra)")
    exe = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    if exe is None:
        pytest.skip("schemathesis's `st` command is not on PATH")
    return exe


@pytest.fixture
def rest_server() -> Iterator[FederationServer]:
    settings = Settings(transport="rest", rest_port=0, admin_token=ADMIN_TOKEN)
    server = FederationServer(Federation.from_settings(settings, build_model("digits_mlp").state_dict()), settings)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_schemathesis_finds_no_failure(rest_server: FederationServer, tmp_path: Path) -> None:
    st = _st()
    url = f"http://127.0.0.1:{rest_server.ports['rest']}/openapi.json"
    junit = tmp_path / "junit.xml"
    env = os.environ | {"SCHEMATHESIS_HOOKS": "tests.openapi_hooks",
                        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [st, "run", url, "--checks", "all", "-n", str(EXAMPLES), "--generation-deterministic",
           "--exclude-path", "/events", "--request-timeout", "40",
           # One worker: hypothesis describes filters by parsing source, which is not thread-safe
           # on CPython 3.11 (a SystemError in ast.parse with two workers).
           "-w", "1",
           # The admin token, so round control answers 2xx and its auth enforcement is checked too.
           "-H", f"Authorization: Bearer {ADMIN_TOKEN}",
           "--report", "junit", "--report-junit-path", str(junit), "--no-color"]
    start = time.monotonic()
    # cwd tmp_path: schemathesis keeps a crash cache in ./.schemathesis; never in the repository.
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    took = time.monotonic() - start
    lines = [line.strip() for line in proc.stdout.splitlines()]
    summary = [line.strip("= ") for line in lines if line.startswith("=") and " in " in line]
    counts = [line for line in lines if " generated" in line]
    print(f"schemathesis took {took:.1f}s: {summary[-1] if summary else '(no summary)'}; "
          f"{counts[-1] if counts else ''}")
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-2000:]
    suite = ET.parse(junit).getroot()
    cases = suite.findall(".//testcase")
    assert len(cases) >= 16, f"schemathesis tested only {len(cases)} operations"
    bad = [c.get("name") for c in cases if c.find("failure") is not None or c.find("error") is not None]
    assert not bad, bad
