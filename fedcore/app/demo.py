"""``fedcore demo``: a real federation on loopback: one server, N client *processes*."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedcore.config import Settings
from fedcore.app.plots import plot_accuracy
from fedcore.server import FederationServer, build_federation

READY_TIMEOUT_S = 120.0
ROUND_TIMEOUT_S = 300.0


def client_env(settings: Settings) -> dict[str, str]:
    """The child's environment: every setting as FEDCORE_* so client processes agree with the server."""
    env = dict(os.environ)
    for key, value in settings.model_dump(exclude_none=True).items():
        env[f"FEDCORE_{key.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    env.setdefault("FEDCORE_LOG_LEVEL", "WARNING")
    env.setdefault("OMP_NUM_THREADS", "1")  # N client processes share the cores: no oversubscription
    return env


def spawn_client(settings: Settings, name: str, index: int, transport: str, log_dir: Path) -> subprocess.Popen[bytes]:
    """A client process; its output goes to ``log_dir/<name>.log`` (a pipe could fill and block it)."""
    cmd = [sys.executable, "-m", "fedcore", "client", "--name", name, "--index", str(index), "--transport", transport]
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"{name}.log", "wb") as log:
        return subprocess.Popen(cmd, env=client_env(settings), stdout=log, stderr=subprocess.STDOUT)


def run_demo(settings: Settings, *, clients: int, out: Path, console: Console | None = None) -> list[dict[str, Any]]:
    console = console or Console()
    fed = build_federation(settings, stop_when_done=True)
    procs: list[subprocess.Popen[bytes]] = []
    started = time.monotonic()
    with FederationServer(fed, settings) as srv:
        child = srv.client_settings()
        ports = ", ".join(f"{n} :{p}" for n, p in srv.ports.items())
        console.print(f"[bold]fedcore demo[/bold]: {clients} clients × {settings.rounds} rounds on "
                      f"{settings.dataset}, wire {settings.dtype}+{settings.codec}, server {ports}")
        transports = settings.transports
        for i in range(clients):
            procs.append(spawn_client(child, f"client_{i + 1}", i, transports[i % len(transports)], out / "logs"))
        try:
            _wait_ready(fed, clients, procs, out / "logs")
            fed.start_autorun(settings.rounds)
            _follow_rounds(fed, settings.rounds, console)
        finally:
            for p in procs:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
    history = fed.get_history()
    _report(history, out, console, time.monotonic() - started)
    return history


def _wait_ready(fed: Any, n: int, procs: list[subprocess.Popen[bytes]], log_dir: Path) -> None:
    end = time.monotonic() + READY_TIMEOUT_S
    while fed.status()["ready"] < n:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"a client process exited early (code {p.returncode}); see {log_dir}/*.log")
        if time.monotonic() > end:
            raise TimeoutError(f"only {fed.status()['ready']} of {n} clients became ready")
        time.sleep(0.1)


def _follow_rounds(fed: Any, rounds: int, console: Console) -> None:
    with Progress(TextColumn("[bold]round {task.completed}/{task.total}"), BarColumn(),
                  TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("waiting for clients", total=rounds)
        seen = 0
        end = time.monotonic() + ROUND_TIMEOUT_S * rounds
        while seen < rounds and time.monotonic() < end:
            fed.wait_for_round(seen + 1, timeout_s=1.0)
            for h in fed.get_history()[seen:]:
                seen = h["round"]
                progress.update(task, completed=seen, description=(
                    f"acc {h['accuracy']:.4f}  in {h['bytes_in'] / 1024:.1f} KiB  "
                    f"out {h['bytes_out'] / 1024:.1f} KiB  {h['duration_s']:.2f}s"))
                progress.console.print(
                    f"round {seen}: accuracy {h['accuracy']:.4f}, {h['num_participants']} clients, "
                    f"bytes in {h['bytes_in']:,} / out {h['bytes_out']:,}, {h['duration_s']:.2f}s")


def _report(history: list[dict[str, Any]], out: Path, console: Console, wall: float) -> None:
    table = Table(title="fedcore demo: per-round results")
    for col in ("round", "clients", "accuracy", "loss", "bytes in", "bytes out", "time (s)"):
        table.add_column(col, justify="right")
    for h in history:
        table.add_row(str(h["round"]), str(h["num_participants"]), f"{h['accuracy']:.4f}", f"{h['loss']:.4f}",
                      f"{h['bytes_in']:,}", f"{h['bytes_out']:,}", f"{h['duration_s']:.2f}")
    console.print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "history.json").write_text(json.dumps(history, indent=1))
    plot_accuracy({"federated": history}, out / "accuracy.png")
    final = history[-1]["accuracy"] if history else None
    console.print(f"final global accuracy: [bold]{final:.4f}[/bold]  ({wall:.1f}s wall); "
                  f"history: {out / 'history.json'}, plot: {out / 'accuracy.png'}" if final is not None
                  else "[red]no round completed[/red]")
