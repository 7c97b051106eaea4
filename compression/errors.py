"""Typed errors of the compression package.

All derive from :class:`CompressionError` (a ``ValueError``) so callers that
decode untrusted bytes can catch one type and answer "bad payload".
"""

from __future__ import annotations

__all__ = [
    "CompressionError",
    "UnknownCodecError",
    "CorruptDataError",
    "DecompressionLimitError",
]


class CompressionError(ValueError):
    """Base class of every error raised by :mod:`compression`."""


class UnknownCodecError(CompressionError, KeyError):
    """A codec or filter name that is not registered.

    Also a ``KeyError`` so registry look-ups behave like mapping look-ups.
    """

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class CorruptDataError(CompressionError):
    """Input that does not decode (truncated, garbage, wrong codec)."""


class DecompressionLimitError(CompressionError):
    """Decoded output would exceed the caller's ``max_size`` (a bomb guard)."""
