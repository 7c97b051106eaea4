"""`fedcore` commands (server, client) in real child processes that skip the interpreter start.

Each command runs in its own OS process, forked from one ``multiprocessing`` forkserver that
imported torch, fedcore and both transports once. It is the same code path as ``python -m
fedcore ...`` (``fedcore.app.cli.app`` with that argv and environment), and it can crash
(``os._exit``), be signalled and exit with a code like one; but it does not pay the ~3 s of CPU
that importing torch costs per process, which on a 2-core shared VM is most of an end-to-end
test's time when it starts five or ten processes.
"""
from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRELOAD = ["torch", "fedcore.app.cli", "fedcore.federation", "fedcore.client", "fedcore.secagg",
           "transports.rest.client", "transports.rest.server", "transports.grpc.client", "transports.grpc.server"]


def _run(argv: list[str], env: dict[str, str], log: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.clear()
    os.environ.update(env)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(1)  # several processes share the cores
    from fedcore.app.cli import app

    app(args=argv, prog_name="fedcore")


class CliProcess:
    """The parts of ``subprocess.Popen`` the tests use, over a forked child."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], log: Path) -> None:
        ctx = multiprocessing.get_context("forkserver")
        self._proc = ctx.Process(target=_run, args=(list(argv), dict(env), str(log)), daemon=False)
        self._proc.start()

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.exitcode

    def poll(self) -> int | None:
        return self._proc.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._proc.join(timeout)
        if self._proc.exitcode is None:
            raise subprocess.TimeoutExpired(["fedcore"], timeout or 0.0)
        return self._proc.exitcode

    def terminate(self) -> None:
        self._proc.terminate()

    def kill(self) -> None:
        self._proc.kill()


def start(argv: Sequence[str], env: Mapping[str, str], log: Path) -> CliProcess:
    """``fedcore <argv>`` in a new process with exactly ``env``, its output appended to ``log``."""
    multiprocessing.set_forkserver_preload(PRELOAD)  # read when the forkserver first starts
    return CliProcess(argv, env, log)
