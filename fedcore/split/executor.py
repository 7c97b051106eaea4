"""Where the edge's compute runs: its own worker thread, and on a GPU its own CUDA streams.

Every task has two phases. ``launch`` does the work (on a GPU it only *enqueues* it: the upload
on a copy stream, the compute on a compute stream, the download back on the copy stream, each
ordered by events) and ``finish`` waits for that work and builds the result. The worker launches
up to ``depth`` tasks ahead of the oldest unfinished one, so on a GPU the next micro-batch's
upload and compute are queued while the previous one's download drains; on CPU the very same
loop runs with :class:`HostStaging`, whose launch computes at once and whose fences are no-ops.
"""
from __future__ import annotations

import contextlib
import queue
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import torch

from fedcore.errors import ConfigError

P = TypeVar("P")
R = TypeVar("R")


class Staging(Protocol):
    """Moves tensors between host and the compute device for one task."""

    device: torch.device

    def stream(self) -> contextlib.AbstractContextManager[Any]:
        """Context in which the task's compute is issued."""

    def upload(self, t: torch.Tensor) -> torch.Tensor:
        """A compute-device copy of host tensor ``t``, safe to use inside :meth:`stream`."""

    def download(self, t: torch.Tensor) -> torch.Tensor:
        """A host tensor that holds ``t`` once the fence returned by :meth:`fence` is waited."""

    def fence(self) -> Callable[[], None]:
        """A wait that returns when everything issued so far (downloads included) is done."""


class HostStaging:
    """CPU: compute happens in place, so uploads and downloads are plain and fences no-ops."""

    def __init__(self) -> None:
        self.device = torch.device("cpu")

    def stream(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def upload(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def download(self, t: torch.Tensor) -> torch.Tensor:
        return t.detach()

    def fence(self) -> Callable[[], None]:
        return lambda: None


class CudaStaging:
    """One compute stream and one copy stream; host tensors go through pinned buffers (torch's
    caching host allocator keeps a pinned block alive until the copies using it complete)."""

    def __init__(self, device: torch.device) -> None:
        if not torch.cuda.is_available():
            raise ConfigError("the edge was configured for CUDA, but no GPU is available here")
        self.device = device
        self.compute = torch.cuda.Stream(device=device)  # type: ignore[no-untyped-call]
        self.copy = torch.cuda.Stream(device=device)  # type: ignore[no-untyped-call]

    def stream(self) -> contextlib.AbstractContextManager[Any]:
        return torch.cuda.stream(self.compute)

    def upload(self, t: torch.Tensor) -> torch.Tensor:
        pinned = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        pinned.copy_(t)
        with torch.cuda.stream(self.copy):
            dev = pinned.to(self.device, non_blocking=True)
            done = torch.cuda.Event()  # type: ignore[no-untyped-call]
            done.record(self.copy)
        self.compute.wait_event(done)
        dev.record_stream(self.compute)  # allocated on the copy stream, used on compute
        return dev

    def download(self, t: torch.Tensor) -> torch.Tensor:
        computed = torch.cuda.Event()  # type: ignore[no-untyped-call]
        computed.record(self.compute)
        self.copy.wait_event(computed)
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        with torch.cuda.stream(self.copy):
            host.copy_(t.detach(), non_blocking=True)
        t.record_stream(self.copy)  # keep t's memory until the copy stream has read it
        return host

    def fence(self) -> Callable[[], None]:
        copied, computed = torch.cuda.Event(), torch.cuda.Event()  # type: ignore[no-untyped-call]
        copied.record(self.copy)
        computed.record(self.compute)  # work issued after the last download (an optimizer step)

        def wait() -> None:
            copied.synchronize()
            computed.synchronize()

        return wait


def make_staging(device: torch.device | str) -> Staging:
    dev = torch.device(device)
    return CudaStaging(dev) if dev.type == "cuda" else HostStaging()


@dataclass
class _Task(Generic[P, R]):
    launch: Callable[[Staging], P]
    finish: Callable[[P], R]
    future: Future[R]


_STOP = object()


class StagedExecutor:
    """One worker thread running tasks in submission order (so the edge's state needs no lock);
    a bounded queue gives back-pressure to the transports feeding it."""

    def __init__(self, staging: Staging, *, queue_size: int = 64, depth: int = 2, name: str = "fedcore-edge") -> None:
        if queue_size < 1 or depth < 1:
            raise ConfigError("executor queue_size and depth must be >= 1")
        self.staging = staging
        self.depth = depth
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, launch: Callable[[Staging], P], finish: Callable[[P], R]) -> Future[R]:
        """Queue a task; blocks while the queue is full. The future carries its result or error."""
        fut: Future[R] = Future()
        with self._lock:  # held across put so no task can slip in behind the stop marker
            if self._closed:
                raise RuntimeError("the edge executor is closed")
            self._queue.put(_Task(launch, finish, fut))
        return fut

    def call(self, fn: Callable[[], R]) -> R:
        """Run ``fn`` on the worker after everything queued before it; wait for its result."""
        return self.submit(lambda _s: fn(), lambda r: r).result()

    def close(self, timeout: float = 10.0) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        inflight: deque[tuple[_Task[Any, Any], Any]] = deque()
        stopping = False
        while not (stopping and not inflight):
            if not stopping and len(inflight) < self.depth:
                try:  # block only when nothing is waiting to be finished
                    item = self._queue.get(block=not inflight)
                except queue.Empty:
                    item = None
                if item is _STOP:
                    stopping = True
                    continue
                if item is not None:
                    self._launch(item, inflight)
                    continue
            task, pending = inflight.popleft()
            try:
                task.future.set_result(task.finish(pending))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
                task.future.set_exception(exc)
        while True:  # closed: nothing queued may be left waiting forever
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Task) and item.future.set_running_or_notify_cancel():
                item.future.set_exception(RuntimeError("the edge executor closed before this task ran"))

    def _launch(self, task: _Task[Any, Any], inflight: deque[tuple[_Task[Any, Any], Any]]) -> None:
        if not task.future.set_running_or_notify_cancel():
            return
        try:
            with self.staging.stream():
                pending = task.launch(self.staging)
        except BaseException as exc:  # noqa: BLE001
            task.future.set_exception(exc)
            return
        inflight.append((task, pending))

