"""A second decoder of fedcore's wire format, written from the README's "Wire format" section alone.

It imports neither fedcore nor compression: numpy, the standard library and the codec libraries
only. tests/test_wire_conformance.py checks that it decodes every payload fedcore produces to
exactly fedcore's values. Arrays come back as numpy arrays of their header ``dtype``, except
``bfloat16``, which numpy lacks: those are uint16 arrays of the bf16 bit patterns.
"""
from __future__ import annotations

import bz2
import json
import lzma
import struct
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

MAGIC = b"FCW1"
VERSION = 2
MAX_HEADER = 4 * 1024 * 1024

# name: (item size, numpy dtype of the stored little-endian values, is float)
DTYPES: dict[str, tuple[int, str, bool]] = {
    "float32": (4, "<f4", True),
    "float16": (2, "<f2", True),
    "bfloat16": (2, "<u2", True),
    "float64": (8, "<f8", True),
    "int64": (8, "<i8", False),
    "int32": (4, "<i4", False),
    "int16": (2, "<i2", False),
    "int8": (1, "i1", False),
    "uint8": (1, "u1", False),
    "bool": (1, "u1", False),
}
UINT = {1: "u1", 2: "<u2", 4: "<u4", 8: "<u8"}


class DecodeError(ValueError):
    """The payload breaks a rule of the spec."""


# ------------------------------------------------------------------ codecs (section 4.2)
def _decompress(codec: str, body: bytes, raw: int) -> bytes:
    if codec == "none":
        return body
    if codec == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompress(body, max_output_size=raw, allow_extra_data=False)
    if codec == "lz4":
        import lz4.frame

        return lz4.frame.decompress(body)
    if codec == "snappy":
        import cramjam

        return bytes(cramjam.snappy.decompress_raw(body))
    if codec == "zlib":
        d = zlib.decompressobj()
        out = d.decompress(body, raw + 1)
        if not d.eof or d.unused_data:
            raise DecodeError("zlib: not exactly one stream")
        return out
    if codec == "gzip":
        return zlib.decompress(body, 16 + zlib.MAX_WBITS) if body else b""
    if codec == "bz2":
        return bz2.decompress(body)
    if codec == "lzma":
        return lzma.decompress(body, format=lzma.FORMAT_XZ)
    if codec == "brotli":
        import brotli

        return bytes(brotli.decompress(body))
    raise DecodeError(f"unknown codec {codec!r}")


# ------------------------------------------------------------------ filters (section 4.1)
def _unfilter(name: str, data: bytes, dtype: str) -> bytes:
    k, _, is_float = DTYPES[dtype]
    if name == "none" or k == 1:
        if name not in ("none", "shuffle", "split"):
            raise DecodeError(f"unknown filter {name!r}")
        return data
    if name not in ("shuffle", "split"):
        raise DecodeError(f"unknown filter {name!r}")
    n = len(data) // k
    planes = np.frombuffer(data, np.uint8).reshape(k, n)  # plane j = byte j of every value
    values = np.ascontiguousarray(planes.T).view(UINT[k]).reshape(n)  # value i = bytes i of planes
    if name == "split" and is_float:
        bits = 8 * k
        values = (values >> np.array(1, values.dtype)) | ((values & np.array(1, values.dtype)) << np.array(bits - 1, values.dtype))
    return values.astype(UINT[k]).tobytes()


# ------------------------------------------------------------------ conversions (section 5)
def _to_float32(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return (values.astype(np.uint32) << 16).view(np.float32)
    return values.astype(np.float32)


def _from_float32(x: np.ndarray, dtype: str) -> np.ndarray:
    """Round float32 values to ``dtype`` (nearest, ties to even)."""
    if dtype == "bfloat16":
        u = x.astype(np.float32).view(np.uint32)
        rounded = ((u + (((u >> 16) & 1) + np.uint32(0x7FFF))) >> 16).astype(np.uint16)
        return np.where(np.isnan(x), np.uint16(0x7FC0), rounded)
    return x.astype(DTYPES[dtype][1])


def _convert(values: np.ndarray, wire: str, dtype: str) -> np.ndarray:
    if wire == dtype:
        return values
    if DTYPES[wire][2] and DTYPES[dtype][2]:  # the wire only ever carries float32/bf16/fp16 casts
        return _from_float32(_to_float32(values, wire), dtype)
    raise DecodeError(f"no conversion from {wire} to {dtype}")


# ------------------------------------------------------------------ the decoder
def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _segment(body: bytes, codec: str, filt: str, dtype: str, raw_len: int, crc: int, raw_crc: int) -> bytes:
    """Section 4's four steps for one body (a segment, or a block of a framed payload)."""
    if zlib.crc32(body) != crc:
        raise DecodeError("body crc32")
    filtered = _decompress(codec, body, raw_len)
    if len(filtered) != raw_len:
        raise DecodeError("raw size")
    raw = _unfilter(filt, filtered, dtype)
    if zlib.crc32(raw) != raw_crc:
        raise DecodeError("raw_crc32")
    return raw


def _framed_segments(data: bytes, pos: int, segments: list[dict[str, Any]]) -> tuple[list[bytes], int]:
    """Section 9: every segment's frames, in order; returns the segments' raw bytes and the end."""
    raws: list[bytes] = []
    for s in segments:
        block, raw_len = s["block"], s["raw"]
        if block < 65536 or block > 67108864 or block & (block - 1):
            raise DecodeError("block size")
        parts = []
        for start in range(0, raw_len, block):
            n = min(block, raw_len - start)
            if len(data) < pos + 12:
                raise DecodeError("truncated frame header")
            size, crc, raw_crc = struct.unpack_from("<III", data, pos)
            pos += 12
            if (s["codec"] == "none" and size != n) or size > n + n // 8 + 4096 or len(data) < pos + size:
                raise DecodeError("frame size")
            parts.append(_segment(data[pos : pos + size], s["codec"], s["filter"], s["dtype"], n, crc, raw_crc))
            pos += size
        raws.append(b"".join(parts))
    return raws, pos


def decode(data: bytes, reference: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Decode a version-2 payload, whole or block-framed; ``reference`` (same representation) for
    a delta payload."""
    if len(data) < 16:
        raise DecodeError("truncated prefix")
    magic, version, flags, reserved, hlen, hcrc = struct.unpack_from("<4sBBHII", data, 0)
    if magic != MAGIC or version != VERSION or flags not in (0, 1) or reserved:
        raise DecodeError("bad prefix")
    if hlen > MAX_HEADER or len(data) < 16 + hlen:
        raise DecodeError("bad header length")
    hbytes = data[16 : 16 + hlen]
    if zlib.crc32(hbytes) != hcrc:
        raise DecodeError("header crc32")
    header: dict[str, Any] = json.loads(hbytes.decode("utf-8"))
    if header["version"] != VERSION:
        raise DecodeError("header version")

    segments = header["segments"]
    pos = 16 + hlen
    if flags == 1:
        raws, pos = _framed_segments(data, pos, segments)
        if pos != len(data):
            raise DecodeError("trailing bytes after the last frame")
    else:
        if pos + sum(s["size"] for s in segments) != len(data):
            raise DecodeError("payload length does not match the segment sizes")
        raws = []
        for s in segments:
            body = data[pos : pos + s["size"]]
            pos += s["size"]
            raws.append(_segment(body, s["codec"], s["filter"], s["dtype"], s["raw"], s["crc32"], s["raw_crc32"]))

    spans: list[list[tuple[int, int]]] = [[] for _ in segments]

    def take(ref: list[int], dtype: str, count: int) -> np.ndarray:
        seg, off, length = ref
        k, np_dtype, _ = DTYPES[dtype]
        if segments[seg]["dtype"] != dtype or length != count * k:
            raise DecodeError("reference does not fit its segment")
        spans[seg].append((off, length))
        return np.frombuffer(raws[seg], np_dtype, count, off)

    out: dict[str, np.ndarray] = {}
    for t in header["tensors"]:
        shape, dtype, n = list(t["shape"]), t["dtype"], _numel(t["shape"])
        if t["enc"] == "raw":
            values = take(t["data"], t["wire"], n)
            if t["wire"] == "bool":
                if values.size and values.max() > 1:
                    raise DecodeError("bool byte is not 0 or 1")
                values = values.astype(bool)
            out[t["name"]] = _convert(values, t["wire"], dtype).reshape(shape)
        elif t["enc"] == "q8":
            if header["kind"] != "delta" or reference is None:
                raise DecodeError("q8 needs a delta payload and the reference model")
            channels = shape[0] if len(shape) >= 2 else 1
            q = take(t["data"], "int8", n)
            scale = take(t["scale"], "float32", channels)
            ref32 = _to_float32(np.asarray(reference[t["name"]]).reshape(-1), dtype)
            if n:
                d = (q.astype(np.float32).reshape(channels, -1) * scale.reshape(channels, 1)).reshape(-1)
                value = ref32 + d
            else:
                value = ref32
            out[t["name"]] = _from_float32(value, dtype).reshape(shape)
        else:
            raise DecodeError(f"unknown enc {t['enc']!r}")

    for s, seg_spans in zip(segments, spans):  # section 3: the references tile [0, raw)
        cursor = 0
        for off, length in sorted(seg_spans):
            if off != cursor:
                raise DecodeError("tensors do not tile their segment")
            cursor += length
        if cursor != s["raw"] or not seg_spans:
            raise DecodeError("segment bytes not covered by tensors")
    return out
