"""Chunked parameter streams: payloads go out in CHUNK_BYTES pieces and come back together in
the core's :class:`~fedcore.uploads.BoundedBuffer` (declared size checked before any byte, the
running total on every write) — the client bounds what it accepts from a server the same way
the server bounds uploads."""
from __future__ import annotations

from fedcore.operations import iter_chunks
from fedcore.uploads import BoundedBuffer

__all__ = ["BoundedBuffer", "iter_chunks"]
