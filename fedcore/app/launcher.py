"""Start `fedcore client` processes and wait for them: the one launcher the demo, the
experiments and the tests share."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from fedcore.config import Settings
from fedcore.federation import Federation

READY_TIMEOUT_S = 120.0
# Per-round training config comes from the server with each instruction: not pinned on clients.
SERVER_DECIDES = {"local_epochs", "batch_size", "lr"}


def client_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The child's environment: every setting as FEDCORE_* so client processes agree with the server."""
    env = dict(os.environ)
    for key, value in settings.model_dump(exclude_none=True, exclude=SERVER_DECIDES).items():
        if isinstance(value, (dict, list)):
            text = json.dumps(value)  # FEDCORE_STRATEGY_OPTIONS is read as JSON
        else:
            text = str(value).lower() if isinstance(value, bool) else str(value)
        env[f"FEDCORE_{key.upper()}"] = text
    env.setdefault("FEDCORE_LOG_LEVEL", "WARNING")
    env.setdefault("OMP_NUM_THREADS", "1")  # N client processes share the cores: no oversubscription
    env.update(extra)
    return env


def spawn_client(settings: Settings, name: str, index: int, transport: str, log_dir: Path | None = None, *,
                 app: str | None = None, args: Sequence[str] = (), env: dict[str, str] | None = None
                 ) -> subprocess.Popen[bytes]:
    """A ``fedcore client`` process; its output goes to ``log_dir/<name>.log`` (a pipe could fill
    and block it), or nowhere without ``log_dir``."""
    cmd = [sys.executable, "-m", "fedcore", "client", "--name", name, "--index", str(index), "--transport", transport]
    if app:
        cmd += ["--app", app]
    cmd += list(args)
    full_env = client_env(settings, **(env or {}))
    if log_dir is None:
        return subprocess.Popen(cmd, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"{name}.log", "wb") as log:
        return subprocess.Popen(cmd, env=full_env, stdout=log, stderr=subprocess.STDOUT)


def wait_ready(fed: Federation, n: int, procs: Sequence[subprocess.Popen[bytes]], *,
               timeout_s: float = READY_TIMEOUT_S, where: str = "the client logs") -> None:
    """Until ``n`` clients are ready (or a round has started); a client that exits early fails fast."""
    end = time.monotonic() + timeout_s
    while True:
        status = fed.status()
        if status.ready >= n or status.round_open or status.round > 0:
            return
        for p in procs:
            if p.poll() is not None and p.returncode != 0:
                raise RuntimeError(f"a client process exited early (code {p.returncode}); see {where}")
        if time.monotonic() > end:
            raise TimeoutError(f"only {status.ready} of {n} clients became ready")
        time.sleep(0.1)


def stop_all(procs: Sequence[subprocess.Popen[bytes]], timeout_s: float = 30.0) -> None:
    """Wait for client processes to exit on their own, then kill what is left."""
    end = time.monotonic() + timeout_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)
