"""Where a simulation's clients run. A backend keeps K long-lived workers, each holding the
user's ``client_fn``; per round it broadcasts the plan once and runs one task per chunk.

``InlineBackend`` (this process, no dependencies) is the reference every other backend must
match; ``ProcessBackend`` uses ``concurrent.futures`` worker processes; ``RayBackend`` (in
``fedcore.sim.ray_backend``, the optional ``fedcore[sim]`` extra) uses Ray actors.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Protocol, runtime_checkable

from fedcore.config import Settings
from fedcore.sim.plan import ChunkResult, RoundPlan, Task
from fedcore.sim.worker import ClientFn, SimWorker, tune_malloc


@runtime_checkable
class Backend(Protocol):
    """Runs a round's chunks. ``start`` once, ``run_round`` per round, ``close`` at the end."""

    name: str

    @property
    def num_workers(self) -> int: ...

    def start(self, client_fn: ClientFn, settings: Settings) -> None: ...

    def run_round(self, plan: RoundPlan, tasks: Sequence[Task]) -> Iterator[ChunkResult]:
        """Results in task order, at most a few tasks ahead (bounded memory for every-update mode)."""
        ...

    def close(self) -> None: ...


class InlineBackend:
    """Every chunk in this process, one after another: the reference result."""

    name = "inline"

    def __init__(self, num_workers: int = 1, threads: int | None = 1) -> None:
        if num_workers < 1:
            raise ValueError("num_workers must be >= 1")
        self._k = num_workers  # only how many chunks a round is cut into (to test merging)
        self._threads = threads  # torch threads while simulating (None: leave as is); one
        self._saved_threads: int | None = None  # worker = one core, like the other backends
        self._worker: SimWorker | None = None

    @property
    def num_workers(self) -> int:
        return self._k

    def start(self, client_fn: ClientFn, settings: Settings) -> None:
        tune_malloc()
        if self._threads is not None and "torch" in sys.modules:  # numpy-only runs never load it
            self._saved_threads = sys.modules["torch"].get_num_threads()
        self._worker = SimWorker(client_fn, settings, self._threads)

    def run_round(self, plan: RoundPlan, tasks: Sequence[Task]) -> Iterator[ChunkResult]:
        if self._worker is None:
            raise RuntimeError("InlineBackend.start() was not called")
        for task in tasks:
            yield self._worker.run_chunk(plan, task)

    def close(self) -> None:
        self._worker = None
        if self._saved_threads is not None:
            sys.modules["torch"].set_num_threads(self._saved_threads)
            self._saved_threads = None


_PROCESS_WORKER: SimWorker | None = None


def _init_process(client_fn: ClientFn, settings: Settings, threads: int) -> None:
    global _PROCESS_WORKER
    tune_malloc()
    _PROCESS_WORKER = SimWorker(client_fn, settings, threads)


def _run_in_process(plan: RoundPlan, task: Task) -> ChunkResult:
    if _PROCESS_WORKER is None:
        raise RuntimeError("simulation worker process was not initialised")
    return _PROCESS_WORKER.run_chunk(plan, task)


def default_workers() -> int:
    """One worker per usable core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class ProcessBackend:
    """K worker processes (``spawn``: no inherited torch thread pools) that live for the whole
    simulation; ``client_fn`` must pickle (a module-level function or class instance)."""

    name = "process"

    def __init__(self, num_workers: int | None = None, threads_per_worker: int = 1) -> None:
        self._k = num_workers or default_workers()
        if self._k < 1 or threads_per_worker < 1:
            raise ValueError("num_workers and threads_per_worker must be >= 1")
        self._threads = threads_per_worker
        self._pool: ProcessPoolExecutor | None = None

    @property
    def num_workers(self) -> int:
        return self._k

    def start(self, client_fn: ClientFn, settings: Settings) -> None:
        self._pool = ProcessPoolExecutor(
            max_workers=self._k, mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_process, initargs=(client_fn, settings, self._threads),
        )
        # Start every worker now (start-up cost is paid here, not in round 1).
        list(self._pool.map(_noop, range(self._k)))

    def run_round(self, plan: RoundPlan, tasks: Sequence[Task]) -> Iterator[ChunkResult]:
        if self._pool is None:
            raise RuntimeError("ProcessBackend.start() was not called")
        yield from _windowed(lambda t: self._pool.submit(_run_in_process, plan, t), tasks,  # type: ignore[union-attr]
                             2 * self._k)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _noop(_: int) -> None:
    return None


def _windowed(submit: Callable[[Task], Future[ChunkResult]], tasks: Sequence[Task],
              window: int) -> Iterator[ChunkResult]:
    """Submit at most ``window`` tasks ahead of the one being yielded (results in task order)."""
    pending: list[Future[ChunkResult]] = []
    it = iter(tasks)
    for task in it:
        pending.append(submit(task))
        if len(pending) >= window:
            break
    while pending:
        head = pending.pop(0)
        yield head.result()
        nxt = next(it, None)
        if nxt is not None:
            pending.append(submit(nxt))

