"""The upload gate's bookkeeping: size, time and concurrency bounds for update bodies.

One body per client at a time; at most ``max_concurrent`` bodies *decoded* at once across all
transports (each decoder builds a model-sized state, so server memory stays bounded whatever
the number of clients); and each body must arrive within ``body_timeout_s`` (a slow-loris
sender is cut off, not held).

A body that arrives while every decode slot is taken is not held back: its bytes go to a spool
(memory up to ``SPOOL_MEMORY_BYTES``, then an unlinked temporary file) and are decoded once a
slot frees. Holding it back would serialise the transfers: on links slower than the decoder
(a WAN, a phone) N clients' uploads would take ceil(N / max_concurrent) times one upload.
"""
from __future__ import annotations

import tempfile
import threading
import time
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from fedcore.wire import StreamDecoder

from fedcore.arrays import Array
from fedcore.errors import PayloadError, PayloadTooLargeError, TransportError, UploadTimeoutError


SPOOL_MEMORY_BYTES = 1 << 16  # a waiting body's bytes past this go to a temporary file (10 waiting: 640 KiB)
_REPLAY_BYTES = 1 << 20


class UploadSlots:
    """One upload per client at a time, and at most ``max_concurrent`` decode slots."""

    def __init__(self, max_concurrent: int) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be >= 1")
        self._global = threading.BoundedSemaphore(max_concurrent)
        self._lock = threading.Lock()
        self._clients: set[str] = set()

    def enter(self, client_id: str) -> None:
        with self._lock:
            if client_id in self._clients:
                raise RoundStateBusy("this client already has an upload in progress")
            self._clients.add(client_id)

    def leave(self, client_id: str) -> None:
        with self._lock:
            self._clients.discard(client_id)

    def try_take(self) -> bool:
        """A decode slot if one is free now."""
        return self._global.acquire(blocking=False)

    def take(self, wait_s: float) -> None:
        if not self._global.acquire(timeout=max(0.0, wait_s)):
            raise TransportError("server busy decoding other updates; retry")

    def give(self) -> None:
        self._global.release()


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
    the wire and :meth:`decoded` returns the tensors. Given ``slots`` too, the decoder runs only
    while this buffer holds a decode slot: until one is free the bytes are spooled, then
    replayed into the decoder (see the module docstring)."""

    def __init__(self, limit: int, declared: int | None, timeout_s: float,
                 decoder: StreamDecoder | None = None, slots: UploadSlots | None = None) -> None:
        super().__init__(limit, declared, keep=decoder is None)  # a decoder gets the bytes instead
        self.deadline = time.monotonic() + timeout_s
        self.timeout_s = timeout_s
        self.decoder = decoder
        self.decode_failed = False
        self._slots = slots
        self._holding = slots is None or decoder is None  # no decoder: nothing model-sized to bound
        self._spool: IO[bytes] | None = None

    def remaining_s(self) -> float:
        return self.deadline - time.monotonic()

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        if time.monotonic() > self.deadline:
            raise UploadTimeoutError(f"update body took longer than {self.timeout_s:.0f}s to arrive")
        super().write(chunk)
        if self.decoder is None:
            return
        if not self._holding and not self._take(wait_s=None):
            self._spool_write(chunk)
            return
        self._feed(chunk)

    def _take(self, wait_s: float | None) -> bool:
        """Take a decode slot (now, or waiting up to ``wait_s``) and replay what was spooled."""
        assert self._slots is not None
        if wait_s is None:
            if not self._slots.try_take():
                return False
        else:
            self._slots.take(wait_s)
        self._holding = True
        spool, self._spool = self._spool, None
        if spool is not None:
            with spool:
                spool.seek(0)
                while piece := spool.read(_REPLAY_BYTES):
                    self._feed(piece)
        return True

    def _spool_write(self, chunk: bytes | bytearray | memoryview) -> None:
        if self._spool is None:
            try:
                self._spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)
            except OSError:  # nowhere to spool: wait for a slot instead (transfers serialise)
                self._take(wait_s=self.remaining_s())
                self._feed(chunk)
                return
        self._spool.write(chunk)

    def _feed(self, chunk: bytes | bytearray | memoryview) -> None:
        assert self.decoder is not None
        try:
            self.decoder.feed(chunk)
        except PayloadError:
            self.decode_failed = True
            raise

    def decoded(self) -> dict[str, Array]:
        """The tensors the decoder made of the whole body (a truncated body is a PayloadError).
        A spooled body waits here for a decode slot (up to ``timeout_s``)."""
        if self.decoder is None:
            raise RuntimeError("this buffer has no decoder")
        self.check_complete()
        if not self._holding:
            self._take(wait_s=self.timeout_s)
        try:
            return self.decoder.finish()
        except PayloadError:
            self.decode_failed = True
            raise

    def close(self) -> None:
        """Release what a decoder holds when the body did not end in :meth:`decoded`, the
        spool, and the decode slot."""
        if self.decoder is not None:
            self.decoder.abort()
        if self._spool is not None:
            self._spool.close()
            self._spool = None
        if self._holding and self._slots is not None and self.decoder is not None:
            self._holding = False
            self._slots.give()
