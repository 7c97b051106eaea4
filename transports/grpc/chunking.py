"""Client side of the chunked global-model stream: put the pieces back together under a limit.

The server's upload path needs none of this (the core's ``accept_update`` sink checks size and
time); the client still bounds what it accepts from a server: it checks the declared size before
taking any byte and the running total while taking them. A declared size lets it fill one
pre-allocated buffer (one copy of the payload, not a list of chunks plus their join).
"""
from __future__ import annotations

from fedcore.errors import PayloadError, PayloadTooLargeError
from fedcore.operations import iter_chunks

__all__ = ["ChunkAssembler", "iter_chunks"]


class ChunkAssembler:
    """Collects chunks of one payload; ``result()`` checks it is complete."""

    def __init__(self, limit: int, declared: int | None = None) -> None:
        if declared is not None and declared < 0:
            raise PayloadError(f"declared size {declared} is negative")
        if declared is not None and declared > limit:
            raise PayloadTooLargeError(f"payload of {declared} bytes is over the {limit}-byte limit")
        self.limit = limit
        self.declared = declared
        self.received = 0
        self._buf = bytearray(declared) if declared is not None else bytearray()

    def add(self, chunk: bytes) -> None:
        n = len(chunk)
        end = self.received + n
        if end > self.limit:
            raise PayloadTooLargeError(f"payload passed the {self.limit}-byte limit while streaming")
        if self.declared is not None:
            if end > self.declared:
                raise PayloadError(f"payload is longer than its declared {self.declared} bytes")
            self._buf[self.received : end] = chunk
        else:
            self._buf += chunk
        self.received = end

    def result(self) -> bytearray:
        """The whole payload; a truncated stream is a :class:`PayloadError`."""
        if self.declared is not None and self.received != self.declared:
            raise PayloadError(f"payload truncated: {self.received} of {self.declared} bytes arrived")
        return self._buf
