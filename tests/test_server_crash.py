"""kill -9 of `fedcore server` mid-round, then the same command again: every round completes to
the saved target with the same client processes, none lost and none extra (issue 11, item 1)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import NETWORK_TRANSPORTS, ROOT, wait_until
from fedcore.app.launcher import spawn_client
from fedcore.config import Settings
from fedcore.transport import get_transport

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
ROUNDS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


@pytest.mark.parametrize("transport", NETWORK_TRANSPORTS)
def test_server_kill9_mid_round_and_restart_with_the_same_command(transport: str, tmp_path: Path) -> None:
    settings = Settings(transport=transport, rest_port=_free_port(), grpc_port=_free_port(), num_partitions=3,
                        heartbeat_s=0.5)
    cmd = [sys.executable, "-m", "fedcore", "server", "--transport", transport,
           "--rest-port", str(settings.rest_port), "--grpc-port", str(settings.grpc_port),
           "--checkpoint-dir", str(tmp_path / "ckpt"), "--autorun", "--rounds", str(ROUNDS), "--min-clients", "3",
           "--exit-when-done", "--no-auth", "--set", "local_epochs=15", "--set", "num_partitions=3"]
    log = tmp_path / "server.log"
    server = _server(cmd, log)
    clients = [spawn_client(settings, f"c{i}", i, transport, tmp_path / "logs", args=["--timeout", "240"],
                            env={"PYTHONPATH": str(ROOT)}) for i in range(3)]
    view = get_transport(transport).client(settings.address_for(transport), settings)
    try:
        def round_two_open() -> bool:
            try:
                return view.status().current_round == 2
            except Exception:
                return False

        wait_until(round_two_open, 150, "round 2 to be open")
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        restarted_at = time.monotonic()
        server = _server(cmd, log)

        def round_three_done() -> bool:
            try:
                return view.status().round >= 3
            except Exception:
                return False

        wait_until(round_three_done, 150, "the restarted server to complete round 3")
        recovery_s = time.monotonic() - restarted_at
        codes = [c.wait(120) for c in clients]
        assert server.wait(60) == 0
    finally:
        view.close()
        for p in [server, *clients]:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    assert codes == [0, 0, 0], (tmp_path / "logs").read_text() if (tmp_path / "logs").is_file() else codes
    import json

    state = json.loads((tmp_path / "ckpt" / "state.json").read_text())
    rounds = [h["round"] for h in state["history"]]
    assert rounds == list(range(1, ROUNDS + 1)), f"lost or extra rounds: {rounds}"
    assert sorted(state["history"][-1]["participants"]) == ["c0", "c1", "c2"]
    print(f"\n[{transport}] restart to round 3 complete: {recovery_s:.1f}s; rounds {rounds}")
