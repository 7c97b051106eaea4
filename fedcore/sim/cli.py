"""``fedcore simulate``: a federation of many simulated clients on a few workers, with the
demo's progress, per-round table, history.json and accuracy plot.

The lead's CLI registers it with one line: ``app.command("simulate")(simulate_command)``.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from fedcore.operations import RoundRecord
from fedcore.sim.backends import Backend, InlineBackend, ProcessBackend

BACKENDS = ("inline", "process", "ray")


def make_backend(name: str, workers: int | None, address: str | None, worker_logs: bool = False) -> Backend:
    """A backend by name; one clear error for an unknown name or a missing Ray."""
    if name == "inline":
        return InlineBackend()
    if name == "process":
        return ProcessBackend(num_workers=workers)
    if name == "ray":
        from fedcore.sim.ray_backend import RayBackend

        return RayBackend(num_workers=workers, address=address, worker_logs=worker_logs)
    raise typer.BadParameter(f"--backend must be one of {', '.join(BACKENDS)}, not {name!r}")


def simulate_command(
    clients: Annotated[int, typer.Option(help="Simulated clients (the data set is split among them).")] = 200,
    per_round: Annotated[Optional[int], typer.Option(
        help="Clients drawn per round (default: from fraction_fit / min_fit_clients / max_fit_clients, i.e. all).")] = None,
    rounds: Annotated[int, typer.Option(help="Rounds to run.")] = 5,
    # "\\[": rich markup would take "[sim]" for a style tag and print nothing.
    backend: Annotated[str, typer.Option(help="inline | process | ray (pip install 'fedcore\\[sim]').")] = "inline",
    workers: Annotated[Optional[int], typer.Option(help="Worker processes / Ray actors (default: one per core).")] = None,
    address: Annotated[Optional[str], typer.Option(help="Existing Ray cluster to join (ray backend).")] = None,
    worker_logs: Annotated[bool, typer.Option(
        help="Copy the Ray actors' prints to this terminal (a local Ray then runs its log monitor too).")] = False,
    dataset: Annotated[str, typer.Option(help="digits (bundled) | cifar10.")] = "digits",
    data_dir: Annotated[Optional[Path], typer.Option(help="CIFAR-10 folder (npz files or torchvision layout).")] = None,
    drop: Annotated[float, typer.Option(help="Share of selected clients that drop out mid-round.")] = 0.0,
    late: Annotated[float, typer.Option(help="Share of selected clients that miss the round's deadline.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the client draws and faults.")] = 0,
    out: Annotated[Path, typer.Option(help="Folder for history.json and accuracy.png.")] = Path("runs/simulate"),
    config: Annotated[Optional[Path], typer.Option(help="Settings file (TOML).")] = None,
    set: Annotated[Optional[list[str]], typer.Option("--set", help="Any other setting, KEY=VALUE (repeatable).")] = None,
) -> None:
    """Simulate N clients on a few workers against the real Federation; print accuracy per round."""
    from fedcore.app.cli import _settings, console
    from fedcore.app.demo import _report
    from fedcore.sim.driver import simulate
    from fedcore.sim.faults import Faults
    from fedcore.sim.workloads import PartitionClients

    if "FEDCORE_LOG_LEVEL" not in os.environ:  # the progress display says what the logs would
        logging.getLogger("fedcore").setLevel(logging.WARNING)
    s = _settings(config, set, dataset=dataset, data_dir=data_dir, rounds=rounds, num_partitions=clients, seed=seed)
    from fedcore.selection import sample_size

    # One mechanism: the settings' sampling (fraction_fit, min/max_fit_clients) sizes the cohort
    # unless --per-round says otherwise; the Federation's selector draws it either way.
    cohort = per_round or sample_size(clients, s.fraction_fit, s.min_fit_clients, s.max_fit_clients)
    if not 1 <= cohort <= clients:
        raise typer.BadParameter("--per-round must be in 1..--clients")
    chosen = make_backend(backend, workers, address, worker_logs)
    console.print(f"[bold]fedcore simulate[/bold]: {clients} clients ({cohort} a round) × {rounds} rounds on "
                  f"{s.dataset}, backend {backend}, strategy {s.strategy}")
    started = time.monotonic()
    with Progress(TextColumn("[bold]round {task.completed}/{task.total}"), BarColumn(),
                  TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("starting workers", total=rounds)

        def on_round(h: RoundRecord, wall: float) -> None:
            acc = f"{h.accuracy:.4f}" if h.accuracy is not None else "n/a"
            progress.update(task, completed=h.round, description=f"acc {acc}  {wall:.2f}s")
            progress.console.print(f"round {h.round}: accuracy {acc}, {h.num_participants}/{h.selected} clients, "
                                   f"{len(h.dropped)} dropped, {len(h.stragglers)} late, {wall:.2f}s")

        result = simulate(s, PartitionClients(s, clients), clients, cohort, rounds, chosen,
                          faults=Faults(drop=drop, late=late, seed=seed), seed=seed, on_round=on_round)
    console.print(f"{result.backend} backend, {result.num_workers} worker(s), start-up {result.startup_s:.1f}s")
    _report(list(result.history), out, console, time.monotonic() - started)
    if not result.history:
        raise typer.Exit(1)
