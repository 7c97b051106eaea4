"""The upload gate's bookkeeping: size, time and concurrency bounds for update bodies.

One body per client at a time, at most ``max_concurrent`` bodies buffered and decoded at once
across all transports (server memory stays bounded whatever the number of clients), and each
body must arrive within ``body_timeout_s`` (a slow-loris sender is cut off, not held).
"""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from fedcore.wire import StreamDecoder

from fedcore.errors import PayloadError, PayloadTooLargeError, TransportError, UploadTimeoutError


class UploadSlots:
    """Global and per-client concurrency of uploads."""

    def __init__(self, max_concurrent: int) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be >= 1")
        self._global = threading.BoundedSemaphore(max_concurrent)
        self._lock = threading.Lock()
        self._clients: set[str] = set()

    def acquire(self, client_id: str, wait_s: float) -> None:
        with self._lock:
            if client_id in self._clients:
                raise RoundStateBusy("this client already has an upload in progress")
            self._clients.add(client_id)
        if not self._global.acquire(timeout=max(0.0, wait_s)):
            with self._lock:
                self._clients.discard(client_id)
            raise TransportError("server busy receiving other updates; retry")

    def release(self, client_id: str) -> None:
        self._global.release()
        with self._lock:
            self._clients.discard(client_id)


class RoundStateBusy(TransportError):
    """A second concurrent upload from one client: refused, the first one goes on."""


class BoundedBuffer:
    """A payload's bytes as they arrive, under a size limit: the declared size is checked
    before any byte is taken and the running total on every write; a declared size fills one
    pre-allocated buffer (one copy of the payload, not a list of chunks plus their join).
    With ``keep=False`` the bytes are only counted and checked, never stored."""

    def __init__(self, limit: int, declared: int | None = None, *, keep: bool = True) -> None:
        if declared is not None and declared < 0:
            raise PayloadError(f"declared size {declared} is negative")
        if declared is not None and declared > limit:
            raise PayloadTooLargeError(f"payload of {declared} bytes is over the {limit}-byte limit")
        self.limit = limit
        self.declared = declared
        self.keep = keep
        self.received = 0
        self._buf = bytearray(declared) if keep and declared is not None else bytearray()

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        n = len(chunk)
        end = self.received + n
        if end > self.limit:
            raise PayloadTooLargeError(f"payload passed the {self.limit}-byte limit while streaming")
        if self.declared is not None and end > self.declared:
            raise PayloadError(f"payload is longer than its declared {self.declared} bytes")
        if self.keep:
            if self.declared is not None:
                self._buf[self.received : end] = chunk
            else:
                self._buf += chunk
        self.received = end

    def check_complete(self) -> None:
        """A body shorter than its declared size is a :class:`PayloadError`."""
        if self.declared is not None and self.received != self.declared:
            raise PayloadError(f"payload truncated: {self.received} of {self.declared} bytes arrived")

    def result(self) -> bytearray:
        """The whole payload; a truncated one is a :class:`PayloadError`."""
        self.check_complete()
        return self._buf


class UpdateBuffer(BoundedBuffer):
    """An upload's bytes, also checked against the body deadline on every write (the core's
    UpdateSink).

    Given a ``decoder`` (a :class:`fedcore.wire.StreamDecoder`), the bytes are not kept: each
    write is fed to it, so a block-framed payload is decoded while the rest of it is still on
    the wire and :meth:`decoded` returns the tensors."""

    def __init__(self, limit: int, declared: int | None, timeout_s: float,
                 decoder: StreamDecoder | None = None) -> None:
        super().__init__(limit, declared, keep=decoder is None)  # a decoder gets the bytes instead
        self.deadline = time.monotonic() + timeout_s
        self.timeout_s = timeout_s
        self.decoder = decoder
        self.decode_failed = False

    def remaining_s(self) -> float:
        return self.deadline - time.monotonic()

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        if time.monotonic() > self.deadline:
            raise UploadTimeoutError(f"update body took longer than {self.timeout_s:.0f}s to arrive")
        super().write(chunk)
        if self.decoder is None:
            return
        try:
            self.decoder.feed(chunk)
        except PayloadError:
            self.decode_failed = True
            raise

    def decoded(self) -> dict[str, torch.Tensor]:
        """The tensors the decoder made of the whole body (a truncated body is a PayloadError)."""
        if self.decoder is None:
            raise RuntimeError("this buffer has no decoder")
        self.check_complete()
        try:
            return self.decoder.finish()
        except PayloadError:
            self.decode_failed = True
            raise

    def close(self) -> None:
        """Release what a decoder holds when the body did not end in :meth:`decoded`."""
        if self.decoder is not None:
            self.decoder.abort()
