"""Lossless byte codecs behind one interface.

Each codec wraps a well-kept library (the stdlib for gzip/zlib/bz2/lzma,
``zstandard``, ``lz4``, ``brotli`` and ``cramjam`` for snappy). Decompression
is always *bounded*: it streams, or checks a trusted length prefix before it
allocates, and raises :class:`DecompressionLimitError` before output grows past
``max_size``, so a decompression bomb cannot exhaust memory.
"""

from __future__ import annotations

import bz2
import lzma
import threading
import zlib
from abc import ABC, abstractmethod
from typing import Any, Callable, cast

from .errors import CompressionError, CorruptDataError, DecompressionLimitError

__all__ = [
    "Codec",
    "NoneCodec",
    "GzipCodec",
    "ZlibCodec",
    "Bz2Codec",
    "LzmaCodec",
    "Lz4Codec",
    "BrotliCodec",
    "ZstdCodec",
    "SnappyCodec",
    "builtin_codecs",
]

Buffer = bytes | bytearray | memoryview


class Codec(ABC):
    """A lossless byte codec.

    ``level`` is the library's own level scale; ``None`` means
    ``default_level``. ``decompress`` never returns (or allocates for) more
    than ``max_size`` bytes.
    """

    name: str = ""
    default_level: int | None = None
    #: Levels the benchmark sweeps by default (cheap to expensive).
    bench_levels: tuple[int | None, ...] = (None,)

    @abstractmethod
    def compress(self, data: Buffer, level: int | None = None) -> bytes:
        """Compress ``data`` at ``level`` (``None`` = ``default_level``)."""

    @abstractmethod
    def decompress(self, data: Buffer, max_size: int) -> bytes:
        """Decompress ``data``; raise if it is corrupt or inflates past ``max_size``."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} default_level={self.default_level}>"

    def _level(self, level: int | None) -> int | None:
        return self.default_level if level is None else level

    def _int_level(self, level: int | None) -> int:
        """The level for libraries that take an integer only."""
        value = self._level(level)
        if value is None:
            raise ValueError(f"{self.name} needs an integer level")
        return value


def _check_max(max_size: int) -> int:
    if not isinstance(max_size, int) or max_size < 0:
        raise ValueError(f"max_size must be a non-negative int, got {max_size!r}")
    return max_size


def _too_big(name: str, max_size: int) -> DecompressionLimitError:
    return DecompressionLimitError(f"{name}: decompressed data exceeds max_size={max_size} bytes")


class NoneCodec(Codec):
    """Identity; useful as a baseline and for already-compressed payloads."""

    name = "none"

    def compress(self, data: Buffer, level: int | None = None) -> bytes:
        return bytes(data)

    def decompress(self, data: Buffer, max_size: int) -> bytes:
        if len(data) > _check_max(max_size):
            raise _too_big(self.name, max_size)
        return bytes(data)


def _stream_decompress(
    name: str,
    data: Buffer,
    max_size: int,
    new: Callable[[], Any],
    errors: tuple[type[BaseException], ...],
    multi_member: bool,
) -> bytes:
    """Drive a stdlib-style decompressobj with ``max_length`` so output stays bounded.

    ``new()`` returns an object with ``decompress(data, max_length)``, ``eof``,
    ``unused_data`` (and ``unconsumed_tail`` for zlib, or ``needs_input`` for
    bz2/lzma). Concatenated members are accepted when ``multi_member``.
    """
    _check_max(max_size)
    out = bytearray()
    pending: Buffer = memoryview(data)
    if len(pending) == 0:
        raise CorruptDataError(f"{name}: empty input is not a valid stream")
    try:
        while True:
            d = new()
            chunk = pending
            while True:
                room = max_size - len(out) + 1  # +1 byte tells us the limit was crossed
                piece = d.decompress(chunk, room)
                out += piece
                if len(out) > max_size:
                    raise _too_big(name, max_size)
                if d.eof:
                    break
                tail = getattr(d, "unconsumed_tail", None)
                if tail is not None:  # zlib
                    if not tail and not piece:
                        raise CorruptDataError(f"{name}: truncated stream")
                    chunk = tail
                else:  # bz2 / lzma keep their own input buffer
                    if d.needs_input:
                        raise CorruptDataError(f"{name}: truncated stream")
                    chunk = b""
            rest = d.unused_data
            if not rest:
                return bytes(out)
            if not multi_member:
                raise CorruptDataError(f"{name}: {len(rest)} trailing bytes after the stream")
            pending = rest
    except CompressionError:
        raise
    except errors as exc:
        raise CorruptDataError(f"{name}: {exc}") from exc


class ZlibCodec(Codec):
    """zlib (RFC 1950) from the stdlib."""

    name = "zlib"
    default_level = 6
    bench_levels = (1, 6, 9)
    _wbits = zlib.MAX_WBITS

    def compress(self, data: Buffer, level: int | None = None) -> bytes:
        c = zlib.compressobj(self._int_level(level), zlib.DEFLATED, self._wbits)
        return c.compress(data) + c.flush()

    def decompress(self, data: Buffer, max_size: int) -> bytes:
        return _stream_decompress(
            self.name, data, max_size, lambda: zlib.decompressobj(self._wbits), (zlib.error,),
            multi_member=self._wbits > 16,
        )


class GzipCodec(ZlibCodec):
    """gzip (RFC 1952) container over the stdlib's zlib; multi-member streams accepted."""

    name = "gzip"
    default_level = 9  # gzip.compress's default
    _wbits = 16 + zlib.MAX_WBITS


class Bz2Codec(Codec):
    """bzip2 from the stdlib."""

    name = "bz2"
    default_level = 9
    bench_levels = (1, 9)

    def compress(self, data: Buffer, level: int | None = None) -> bytes:
        return bz2.compress(data, self._int_level(level))

    def decompress(self, data: Buffer, max_size: int) -> bytes:
        return _stream_decompress(
            self.name, data, max_size, bz2.BZ2Decompressor, (OSError, ValueError, EOFError),
            multi_member=True,
        )


class LzmaCodec(Codec):
    """LZMA2 in the .xz container (stdlib); ``level`` is the xz preset 0-9."""

    name = "lzma"
    default_level = 6
    bench_levels = (0, 6)

    def compress(self, data: Buffer, level: int | None = None) -> bytes:
        return lzma.compress(data, format=lzma.FORMAT_XZ, preset=self._level(level))

    def decompress(self, data: Buffer, max_size: int) -> bytes:
        return _stream_decompress(
            self.name, data, max_size,
            lambda: lzma.LZMADecompressor(format=lzma.FORMAT_XZ),
            (lzma.LZMAError, EOFError), multi_member=True,
        )


class Lz4Codec(Codec):
    """LZ4 frame format (``lz4.frame``); level 0 = fast, 3-16 = HC."""

    name = "lz4"
    default_level = 0
    bench_levels = (0, 9)

    def compress(self, data: Buffer, level: int | None = None) -> bytes:
        import lz4.frame

        return cast(bytes, lz4.frame.compress(data, compression_level=self._level(level), store_size=True))

    def decompress(self, data: Buffer, max_size: int) -> bytes:
        import lz4.frame

        _check_max(max_size)
        if len(data) == 0:
            raise CorruptDataError("lz4: empty input is not a valid frame")
        out = bytearray()
        pending: Buffer = data
        try:
            while True:
                d = lz4.frame.LZ4FrameDecompressor()
                chunk: Buffer = pending
                while True:
                    out += d.decompress(chunk, max_length=max_size - len(out) + 1)
                    if len(out) > max_size:
                        raise _too_big(self.name, max_size)
                    if d.eof:
                        break
                    if d.needs_input:
                        raise CorruptDataError("lz4: truncated frame")
                    chunk = b""
                if not d.unused_data:
                    return bytes(out)
                pending = d.unused_data
        except RuntimeError as exc:  # lz4 reports every frame error as RuntimeError
            raise CorruptDataError(f"lz4: {exc}") from exc


class BrotliCodec(Codec):
    """Brotli (``brotli`` >= 1.2 for bounded output); ``level`` is quality 0-11."""

    name = "brotli"
    default_level = 11  # brotli.compress's default, as the paper used it
    bench_levels = (1, 5, 9)

    def compress(self, data: Buffer, level: int | None = None) -> bytes:
        import brotli

        return cast(bytes, brotli.compress(bytes(data), quality=self._level(level)))

    def decompress(self, data: Buffer, max_size: int) -> bytes:
        import brotli

        _check_max(max_size)
        d = brotli.Decompressor()
        out = bytearray()
        limit = max(1, min(max_size + 1, 1 << 24))
        try:
            out += d.process(bytes(data), output_buffer_limit=limit)
            while len(out) <= max_size and not d.is_finished() and not d.can_accept_more_data():
                out += d.process(b"", output_buffer_limit=limit)
        except brotli.error as exc:
            raise CorruptDataError(f"brotli: {exc}") from exc
        if len(out) > max_size:
            raise _too_big(self.name, max_size)
        if not d.is_finished():
            raise CorruptDataError("brotli: truncated stream")
        return bytes(out)


class ZstdCodec(Codec):
    """Zstandard (``zstandard``).

    Levels are zstd's (negative = faster, 1-22). ``level=None`` selects the
    *float preset*: zstd's fast strategy with a tiny hash table (2^6 entries),
    min-match 7 and a 128 KiB window. Filtered float planes (bf16 exponents,
    mantissa bytes) have almost no long repeats, so hunting for LZ matches
    costs time and, worse, replaces Huffman-coded literals by short matches
    that cost more bits. The preset leaves nearly everything to the
    Huffman literal coder: on ResNet-18 bf16 + ``split`` it gives 14.16 MiB
    in ~25 ms against zstd-1's 14.52 MiB in ~60 ms (see ``experiments.compression_bench``).
    The output is an ordinary zstd frame any zstd decoder reads.
    """

    name = "zstd"
    default_level = None
    bench_levels = (None, -1, 1, 3, 9)

    FLOAT_PRESET = dict(window_log=17, chain_log=16, hash_log=6, search_log=1,
                        min_match=7, target_length=0)

    def __init__(self) -> None:
        # ZstdCompressor objects are not thread-safe: one per thread and level.
        self._local = threading.local()

    def _compressor(self, level: int | None) -> Any:
        import zstandard as zstd

        cache: dict[int | None, Any] = self._local.__dict__.setdefault("c", {})
        c = cache.get(level)
        if c is None:
            if level is None:
                params = zstd.ZstdCompressionParameters(
                    strategy=zstd.STRATEGY_FAST, write_content_size=True, **self.FLOAT_PRESET
                )
                c = zstd.ZstdCompressor(compression_params=params)
            else:
                c = zstd.ZstdCompressor(level=level, write_content_size=True)
            cache[level] = c
        return c

    def _decompressor(self) -> Any:
        """One per thread, kept: its context (~100 KiB) is allocated once, not for every payload
        (a bomb's decode then allocates nothing but its bounded output)."""
        import zstandard as zstd

        d = self._local.__dict__.get("d")
        if d is None:
            d = self._local.d = zstd.ZstdDecompressor()
        return d

    def compress(self, data: Buffer, level: int | None = None) -> bytes:
        return cast(bytes, self._compressor(self._level(level)).compress(data))

    def decompress(self, data: Buffer, max_size: int) -> bytes:
        """Exactly one frame. Decoded in one shot into an output buffer of at most ``max_size``
        bytes, so no window buffer is allocated beside it, whether or not the frame declares its
        content size (a declared size over ``max_size`` is refused before anything is allocated)."""
        import zstandard as zstd

        _check_max(max_size)
        try:
            size = zstd.frame_content_size(data)
        except zstd.ZstdError as exc:
            raise CorruptDataError(f"zstd: {exc}") from exc
        if size > max_size:
            raise _too_big(self.name, max_size)
        d = self._decompressor()
        try:
            # allow_extra_data=False: one frame, nothing after it (needs zstandard >= 0.23).
            out = d.decompress(data, max_output_size=max_size + 1 if size < 0 else max_size,
                               allow_extra_data=False)
        except zstd.ZstdError as exc:
            if size < 0 and "did not decompress full frame" in str(exc):
                raise CorruptDataError(
                    f"zstd: frame without a content size does not end within max_size={max_size} "
                    "bytes (truncated, or it inflates past the limit)"
                ) from exc
            raise CorruptDataError(f"zstd: {exc}") from exc
        if len(out) > max_size:
            raise _too_big(self.name, max_size)
        if size >= 0 and len(out) != size:
            raise CorruptDataError("zstd: frame size mismatch")
        return cast(bytes, out)


class SnappyCodec(Codec):
    """Snappy raw block format (what ``python-snappy``'s ``snappy.compress`` writes), via ``cramjam``.

    The raw format starts with the decoded length as a varint, so the bound is
    checked before anything is allocated. Snappy has no levels.
    """

    name = "snappy"
    default_level = None

    def compress(self, data: Buffer, level: int | None = None) -> bytes:
        import cramjam

        return bytes(cramjam.snappy.compress_raw(data))

    @staticmethod
    def _declared_length(data: Buffer) -> int:
        value = shift = 0
        for i in range(min(len(data), 5)):
            byte = data[i]
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7
        raise CorruptDataError("snappy: bad length preamble")

    def decompress(self, data: Buffer, max_size: int) -> bytes:
        import cramjam

        _check_max(max_size)
        mv = memoryview(data).cast("B")
        declared = self._declared_length(mv)
        if declared > max_size:
            raise _too_big(self.name, max_size)
        try:
            out = bytes(cramjam.snappy.decompress_raw(mv))
        except Exception as exc:  # cramjam.DecompressionError and friends
            raise CorruptDataError(f"snappy: {exc}") from exc
        if len(out) != declared:
            raise CorruptDataError("snappy: length mismatch")
        return out


def builtin_codecs() -> list[Codec]:
    """One instance of every codec shipped here, in the paper's order."""
    return [GzipCodec(), ZlibCodec(), Bz2Codec(), LzmaCodec(), Lz4Codec(), BrotliCodec(),
            ZstdCodec(), SnappyCodec(), NoneCodec()]
