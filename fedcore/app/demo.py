"""``fedcore demo``: a real federation on loopback: one server, N client *processes*."""
from __future__ import annotations

import json
import subprocess
from dataclasses import asdict
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedcore.config import Settings
from fedcore.app.plots import plot_accuracy
from fedcore.app.build import build_federation
from fedcore.app.launcher import spawn_client, stop_all, wait_ready
from fedcore.operations import RoundRecord
from fedcore.server import FederationServer

READY_TIMEOUT_S = 120.0
ROUND_TIMEOUT_S = 300.0


def run_demo(settings: Settings, *, clients: int, out: Path, console: Console | None = None) -> list[RoundRecord]:
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
            wait_ready(fed, clients, procs, where=f"{out / 'logs'}/*.log")
            fed.start_autorun(settings.rounds)
            _follow_rounds(fed, settings.rounds, console)
        finally:
            stop_all(procs)
    history = fed.history()
    _report(history, out, console, time.monotonic() - started)
    return history


def _follow_rounds(fed: Any, rounds: int, console: Console) -> None:
    with Progress(TextColumn("[bold]round {task.completed}/{task.total}"), BarColumn(),
                  TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("waiting for clients", total=rounds)
        seen = 0
        end = time.monotonic() + ROUND_TIMEOUT_S * rounds
        while seen < rounds and time.monotonic() < end:
            fed.wait_for_round(seen + 1, timeout_s=1.0)
            for h in fed.history()[seen:]:
                seen = h.round
                acc = f"{h.accuracy:.4f}" if h.accuracy is not None else "n/a"
                progress.update(task, completed=seen, description=(
                    f"acc {acc}  in {h.bytes_in / 1024:.1f} KiB  out {h.bytes_out / 1024:.1f} KiB  {h.duration_s:.2f}s"))
                progress.console.print(
                    f"round {seen}: accuracy {acc}, {h.num_participants} clients, "
                    f"bytes in {h.bytes_in:,} / out {h.bytes_out:,}, {h.duration_s:.2f}s")


def _report(history: list[RoundRecord], out: Path, console: Console, wall: float) -> None:
    table = Table(title="fedcore demo: per-round results")
    for col in ("round", "clients", "accuracy", "loss", "bytes in", "bytes out", "time (s)"):
        table.add_column(col, justify="right")
    for h in history:
        table.add_row(str(h.round), str(h.num_participants), f"{h.accuracy or 0:.4f}", f"{h.loss or 0:.4f}",
                      f"{h.bytes_in:,}", f"{h.bytes_out:,}", f"{h.duration_s:.2f}")
    console.print(table)
    out.mkdir(parents=True, exist_ok=True)
    rows = [asdict(h) for h in history]
    (out / "history.json").write_text(json.dumps(rows, indent=1))
    plot_accuracy({"federated": rows}, out / "accuracy.png")
    final = history[-1].accuracy if history else None
    console.print(f"final global accuracy: [bold]{final:.4f}[/bold]  ({wall:.1f}s wall); "
                  f"history: {out / 'history.json'}, plot: {out / 'accuracy.png'}" if final is not None
                  else "[red]no round completed[/red]")
