"""The work of one simulation worker: run a chunk of a round's clients one after another and
fold each checked update into the strategy's partial sum (or encode it, for strategies that
need every update). Every backend runs this same code; only where it runs differs.

Torch-free at import: ``NumpyClient`` s run on ``fedcore.sim.numpy_worker`` and never load torch;
the first ``FLClient`` or ``ClientApp`` a worker meets loads ``fedcore.sim.torch_worker``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from fedcore.config import Settings
from fedcore.errors import PayloadError
from fedcore.sim.numpy_client import NumpyClient
from fedcore.sim.numpy_worker import NumpyRunner, Trained
from fedcore.sim.plan import ChunkResult, ClientOutcome, RoundPlan, Task

if TYPE_CHECKING:
    from fedcore.strategy import WeightedSum

#: ``client_fn(cid)`` returns an ``FLClient``, a ``ClientApp`` or a ``NumpyClient``.
ClientFn = Callable[[int], Any]

# glibc: model-sized numpy/torch temporaries stay on the heap instead of a fresh mmap each time
# (measured 8x slower per client without), and freed memory is not trimmed back at once.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "16777216", "MALLOC_TRIM_THRESHOLD_": "268435456"}
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def tune_malloc() -> bool:
    """Apply MALLOC_ENV to this running process (env vars only act at start-up); False off glibc."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, int(MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"]))
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, int(MALLOC_ENV["MALLOC_TRIM_THRESHOLD_"]))
        return bool(ok)
    except (OSError, AttributeError):
        return False


class ClientRunner(Protocol):
    """One kind of client (numpy or torch) as a worker runs it."""

    def receive(self, plan: RoundPlan) -> None: ...

    def train(self, made: Any, name: str, plan: RoundPlan) -> Trained: ...

    def check(self, trained: Trained, plan: RoundPlan) -> Mapping[str, Any]: ...

    def new_partial(self) -> WeightedSum: ...

    def encode(self, trained: Trained, plan: RoundPlan, name: str) -> bytes: ...


class SimWorker:
    """Holds the user's ``client_fn`` for the worker's life; runs chunks of rounds. ``threads``:
    torch's intra-op threads once a torch client runs here (None: leave as is)."""

    def __init__(self, client_fn: ClientFn, settings: Settings | None = None, threads: int | None = None) -> None:
        self.client_fn = client_fn
        self.settings = settings or Settings()
        self._threads = threads
        self._numpy: NumpyRunner | None = None
        self._torch: ClientRunner | None = None

    def _runner(self, made: object, cid: int) -> ClientRunner:
        if isinstance(made, NumpyClient):
            if self._numpy is None:
                self._numpy = NumpyRunner(self.settings)
            return self._numpy
        if self._torch is None:
            from fedcore.app.apps import ClientApp
            from fedcore.client import FLClient
            from fedcore.sim.torch_worker import TorchRunner

            if not isinstance(made, (FLClient, ClientApp)):
                raise TypeError(f"client_fn({cid}) returned {type(made).__name__}; expected an FLClient, a ClientApp "
                                "or a NumpyClient")
            self._torch = TorchRunner(self.settings, self._threads)
        return self._torch

    def run_chunk(self, plan: RoundPlan, task: Task) -> ChunkResult:
        """Each client of the chunk in turn: train from the round's model, check the update as
        the server's upload gate would, fold it (or encode it). A client that raises is a failed
        result; one whose update the checks refuse is a refused result. One chunk holds one kind
        of client (numpy or torch): its partial sum is of that kind."""
        started = time.perf_counter()
        partial: WeightedSum | None = None
        kind: ClientRunner | None = None
        outcomes: list[ClientOutcome] = []
        payloads: list[bytes] = []
        for cid, name in zip(task.cids, task.names):
            made = None
            try:
                made = self.client_fn(cid)
            except Exception as exc:  # the user's code failed: the server sees the client drop
                outcomes.append(ClientOutcome(cid, "failed", reason=f"{type(exc).__name__}: {exc}"))
                continue
            runner = self._runner(made, cid)
            if kind is not None and runner is not kind:
                raise TypeError("client_fn returned numpy and torch clients in one simulation; use one kind")
            if kind is None:
                kind = runner
                runner.receive(plan)  # a misconfiguration (e.g. a codec numpy clients lack) raises here
            try:
                trained = runner.train(made, name, plan)
            except Exception as exc:
                outcomes.append(ClientOutcome(cid, "failed", reason=f"{type(exc).__name__}: {exc}"))
                continue
            if plan.every_update:
                payloads.append(runner.encode(trained, plan, name))
                outcomes.append(ClientOutcome(cid, "ok", trained.num_samples, trained.metrics))
                continue
            try:
                received = runner.check(trained, plan)
            except PayloadError as exc:
                outcomes.append(ClientOutcome(cid, "refused", reason=str(exc)))
                continue
            if partial is None:
                partial = runner.new_partial()
            partial.add(received, trained.num_samples)
            outcomes.append(ClientOutcome(cid, "ok", trained.num_samples, trained.metrics))
        if partial is None and kind is not None and not plan.every_update:
            partial = kind.new_partial()
        return ChunkResult(tuple(outcomes), partial, tuple(payloads), time.perf_counter() - started)
