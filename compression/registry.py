"""Name → codec registry. Users add their own codecs with :func:`register_codec`."""

from __future__ import annotations

import threading

from .codecs import Codec, builtin_codecs
from .errors import UnknownCodecError

__all__ = ["get_codec", "available_codecs", "register_codec"]

_lock = threading.Lock()
_codecs: dict[str, Codec] = {c.name: c for c in builtin_codecs()}


def get_codec(name: str) -> Codec:
    """Return the registered codec called ``name``; raise :class:`UnknownCodecError` otherwise."""
    try:
        return _codecs[name]
    except (KeyError, TypeError):
        raise UnknownCodecError(
            f"unknown codec {name!r}; available: {', '.join(available_codecs())}"
        ) from None


def available_codecs() -> list[str]:
    """Names of all registered codecs, registration order."""
    return list(_codecs)


def register_codec(codec: Codec, *, replace: bool = False) -> None:
    """Register ``codec`` under ``codec.name``.

    Refuses to shadow an existing name unless ``replace=True``, so a plug-in
    cannot silently change what ``"zstd"`` means on the wire.
    """
    if not isinstance(codec, Codec):
        raise TypeError(f"expected a compression.Codec, got {type(codec).__name__}")
    if not codec.name or not isinstance(codec.name, str):
        raise ValueError("codec.name must be a non-empty string")
    with _lock:
        if codec.name in _codecs and not replace:
            raise ValueError(f"codec {codec.name!r} is already registered (pass replace=True)")
        _codecs[codec.name] = codec
