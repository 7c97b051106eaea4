"""Run the core's blocking operations from async routes without blocking the event loop.

``while_connected`` runs a long-polling operation in the thread pool while a watcher notices
the peer going away, and ``receive_update`` streams a request body into the core's upload gate
with the gate's own deadline on every read. Plumbing only: the policy is the core's.
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TypeVar

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from fedcore.errors import UploadTimeoutError
from fedcore.operations import StillConnected, UpdateSink

T = TypeVar("T")
_WATCH_S = 0.5


async def while_connected(request: Request, fn: Callable[[StillConnected], T]) -> T:
    """``fn(still_connected)`` in a worker thread; ``still_connected`` turns False when the HTTP
    peer disconnects, so an abandoned long-poll neither holds a thread nor keeps its client alive."""
    gone = threading.Event()

    async def watch() -> None:
        while not gone.is_set():
            if await request.is_disconnected():
                gone.set()
                return
            await asyncio.sleep(_WATCH_S)

    watcher = asyncio.create_task(watch())
    try:
        return await run_in_threadpool(fn, lambda: not gone.is_set())
    finally:
        gone.set()
        watcher.cancel()


async def receive_update(request: Request, gate: AbstractContextManager[UpdateSink]) -> int:
    """Stream the body into the gate; returns the bytes received. Entering and leaving the gate
    (auth, slots, decoding) run in the thread pool."""
    sink = await run_in_threadpool(gate.__enter__)
    received = 0
    try:
        stream = request.stream().__aiter__()
        while True:
            remaining = sink.remaining_s()
            if remaining <= 0:
                raise UploadTimeoutError("update body did not arrive in time")
            try:
                chunk = await asyncio.wait_for(stream.__anext__(), timeout=remaining)
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:
                raise UploadTimeoutError("update body did not arrive in time") from None
            if chunk:
                sink.write(chunk)
                received += len(chunk)
    except BaseException as exc:
        if not await run_in_threadpool(gate.__exit__, type(exc), exc, exc.__traceback__):
            raise
        return received
    await run_in_threadpool(gate.__exit__, None, None, None)
    return received
