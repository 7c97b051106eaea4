"""How a device reaches its edge: the :class:`SplitChannel` protocol, and an in-process channel.

A transport only moves opaque bytes: ``submit(message) -> Future[reply]``. The gRPC and REST
channels (later) implement the same two methods; :class:`LocalChannel` calls an
:class:`~fedcore.split.edge.EdgeTrainer` in the same process, optionally through an emulated
link (latency + bandwidth) so overlap can be studied without sockets.
"""
from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

from fedcore.errors import ConfigError, TransportError
from fedcore.split.edge import EdgeTrainer


class SplitChannel(Protocol):
    """One device's pipe to the edge. ``submit`` must not block on the reply."""

    def submit(self, message: bytes) -> Future[bytes]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Link:
    """An emulated network link: one-way ``latency_s`` plus ``bytes / bandwidth`` of
    transmission, messages in one direction sent one after another (they share the bandwidth)."""

    latency_s: float = 0.01
    bandwidth_bytes_s: float = 12.5e6  # 100 Mbit/s

    def __post_init__(self) -> None:
        if self.latency_s < 0 or self.bandwidth_bytes_s <= 0:
            raise ConfigError("link latency must be >= 0 and bandwidth > 0")


class _Pipe:
    """One direction of a :class:`Link`: a virtual transmit clock and one delivery thread."""

    def __init__(self, link: Link, name: str) -> None:
        self.link = link
        self._cv = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._tx_free = 0.0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def send(self, nbytes: int, deliver: Callable[[], None]) -> None:
        with self._cv:
            if self._closed:
                raise TransportError("the emulated link is closed")
            now = time.monotonic()
            self._tx_free = max(now, self._tx_free) + nbytes / self.link.bandwidth_bytes_s
            heapq.heappush(self._heap, (self._tx_free + self.link.latency_s, next(self._seq), deliver))
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(5.0)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._closed and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cv.wait(None if not self._heap else max(self._heap[0][0] - time.monotonic(), 0.0))
                if self._closed:
                    pending, self._heap = self._heap, []
                    break
                _, _, deliver = heapq.heappop(self._heap)
            _safely(deliver)
        for _, _, deliver in pending:  # closed: deliver what is left at once, nothing hangs
            _safely(deliver)


def _safely(deliver: Callable[[], None]) -> None:
    """A delivery that fails (a future already cancelled) must not stop the link thread."""
    try:
        deliver()
    except Exception:  # noqa: BLE001
        pass


class LocalChannel:
    """A channel to an in-process :class:`EdgeTrainer`, as client ``client_id``; with ``link``
    every message and reply crosses an emulated link."""

    def __init__(self, edge: EdgeTrainer, link: Link | None = None, *, client_id: str = "device-0") -> None:
        self.edge = edge
        self.client_id = client_id
        self._up = _Pipe(link, f"{client_id}-up") if link else None
        self._down = _Pipe(link, f"{client_id}-down") if link else None

    def submit(self, message: bytes) -> Future[bytes]:
        out: Future[bytes] = Future()
        if self._up is None:
            try:
                return self.edge.submit(self.client_id, message)
            except Exception as exc:  # noqa: BLE001 - errors travel in the future, as over a network
                out.set_exception(exc)
                return out
        self._up.send(len(message), lambda: self._arrive(message, out))
        return out

    def _arrive(self, message: bytes, out: Future[bytes]) -> None:
        try:
            reply = self.edge.submit(self.client_id, message)
        except Exception as exc:  # noqa: BLE001 - a refused message fails its future
            out.set_exception(exc)
            return
        reply.add_done_callback(lambda f: self._back(f, out))

    def _back(self, reply: Future[bytes], out: Future[bytes]) -> None:
        exc = reply.exception()
        if exc is not None:
            out.set_exception(exc)
            return
        data = reply.result()
        assert self._down is not None
        try:
            self._down.send(len(data), lambda: out.set_result(data))
        except TransportError as err:
            out.set_exception(err)

    def close(self) -> None:
        for pipe in (self._up, self._down):
            if pipe is not None:
                pipe.close()
