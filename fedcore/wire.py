"""The parameter wire format ("model lightweighting"): state_dict ⇄ bytes.

state_dict → cast (fp32 | bf16 | fp16; integer / bool tensors untouched) → one contiguous
segment per wire dtype → float-aware filter → lossless codec → bytes. Optionally a client sends
its *update* (local − the global it received) quantised int8 per output channel.

Layout (all integers little-endian)::

    magic "FCW1" | u8 version | u8 flags (0) | u16 reserved (0) | u32 header_len | u32 header_crc32
    header: UTF-8 JSON, header_len bytes
    segment bodies, back to back, in header order

The JSON header names every tensor (name, shape, dtype, where its bytes are) and every segment
(dtype, filter, codec, raw and compressed size, crc32 of the compressed bytes), so any language
can decode it without fedcore's Python objects. Nothing here ever unpickles.
"""
from __future__ import annotations

import json
import struct
import warnings
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

import compression
from fedcore.constants import (
    DEFAULT_CODEC,
    DEFAULT_DTYPE,
    DEFAULT_FILTER,
    DEFAULT_LEVEL,
    DEFAULT_MAX_DECODED_BYTES,
    WIRE_MAGIC,
    WIRE_MAX_HEADER_BYTES,
    WIRE_VERSION,
)
from fedcore.errors import PayloadError, PayloadTooLargeError

StateDict = Mapping[str, torch.Tensor]

_PREFIX = struct.Struct("<4sBBHII")

DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float32: "float32",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.float64: "float64",
    torch.int64: "int64",
    torch.int32: "int32",
    torch.int16: "int16",
    torch.int8: "int8",
    torch.uint8: "uint8",
    torch.bool: "bool",
}
TORCH_DTYPES: dict[str, torch.dtype] = {v: k for k, v in DTYPE_NAMES.items()}
CAST_DTYPES = ("float32", "bfloat16", "float16")
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}

# Buffers that are not trained by gradient: in update mode they travel exactly, not as deltas.
_UNTRAINED_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def canonical_dtype(name: str) -> str:
    """'bf16' → 'bfloat16'; raises ValueError for a dtype the wire cannot cast to."""
    canon = _DTYPE_ALIASES.get(name, name)
    if canon not in CAST_DTYPES:
        raise ValueError(f"unknown wire dtype {name!r}; choose one of fp32, bf16, fp16")
    return canon


def is_untrained(name: str) -> bool:
    """BatchNorm statistics and counters: exact in every mode."""
    return name.endswith(_UNTRAINED_SUFFIXES)


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one tensor: what a model expects a payload to hold."""

    shape: tuple[int, ...]
    dtype: str


def spec_of(state: StateDict) -> dict[str, TensorSpec]:
    return {k: TensorSpec(tuple(v.shape), DTYPE_NAMES[v.dtype]) for k, v in state.items()}


class _SegmentBuilder:
    """Collects same-dtype tensors into one contiguous buffer."""

    def __init__(self, dtype: str) -> None:
        self.dtype = dtype
        self.parts: list[torch.Tensor] = []
        self.nbytes = 0

    def add(self, t: torch.Tensor) -> tuple[int, int]:
        flat = t.detach().reshape(-1).contiguous()
        offset, n = self.nbytes, flat.numel() * flat.element_size()
        self.parts.append(flat)
        self.nbytes += n
        return offset, n

    def views(self) -> list[memoryview]:
        """Each tensor's bytes without copying (bool and bfloat16 have no numpy twin: uint8 view)."""
        return [memoryview(p.view(torch.uint8).numpy()).cast("B") for p in self.parts]

    def to_bytes(self) -> memoryview:
        if not self.parts:
            return memoryview(b"")
        joined = torch.cat(self.parts) if len(self.parts) > 1 else self.parts[0]
        return memoryview(joined.view(torch.uint8).numpy()).cast("B")


def encode_state(
    state: StateDict,
    *,
    dtype: str = DEFAULT_DTYPE,
    codec: str = DEFAULT_CODEC,
    level: int | None = DEFAULT_LEVEL,
    filter: str = DEFAULT_FILTER,
    reference: StateDict | None = None,
    quantize_update: bool = False,
    exact: Iterable[str] = (),
    meta: Mapping[str, Any] | None = None,
) -> bytes:
    """Encode a state_dict. With ``quantize_update`` the payload holds ``state - reference``
    quantised int8 per output channel; untrained buffers (and names in ``exact``) travel as-is."""
    wire_dtype = canonical_dtype(dtype)
    codec_obj = compression.get_codec(codec)
    if quantize_update and reference is None:
        raise ValueError("quantize_update needs the reference (global) state the client received")
    exact_names = set(exact)
    segments: dict[str, _SegmentBuilder] = {}
    entries: list[dict[str, Any]] = []

    def seg(d: str) -> tuple[int, _SegmentBuilder]:
        if d not in segments:
            segments[d] = _SegmentBuilder(d)
        return list(segments).index(d), segments[d]

    for name, tensor in state.items():
        src = DTYPE_NAMES.get(tensor.dtype)
        if src is None:
            raise PayloadError(f"tensor {name!r} has unsupported dtype {tensor.dtype}")
        entry: dict[str, Any] = {"name": name, "shape": list(tensor.shape), "dtype": src}
        floating = tensor.is_floating_point()
        if quantize_update and floating and not is_untrained(name) and name not in exact_names:
            ref = reference[name] if reference is not None and name in reference else None
            if ref is None or tuple(ref.shape) != tuple(tensor.shape):
                raise ValueError(f"reference has no tensor {name!r} of shape {tuple(tensor.shape)}")
            delta = (tensor.detach().float() - ref.detach().float()).numpy()
            q, scales = compression.quant.quantize_per_channel(delta)
            qi, qb = seg("int8")
            si, sb = seg("float32")
            entry["enc"] = "q8"
            entry["data"] = [qi, *qb.add(torch.from_numpy(q))]
            entry["scale"] = [si, *sb.add(torch.from_numpy(np.ascontiguousarray(scales, np.float32)))]
        else:
            target = tensor
            if floating and not is_untrained(name) and name not in exact_names:
                target = tensor.to(TORCH_DTYPES[wire_dtype])
            wd = DTYPE_NAMES[target.dtype]
            i, b = seg(wd)
            entry["enc"] = "raw"
            entry["wire"] = wd
            entry["data"] = [i, *b.add(target)]
        entries.append(entry)

    bodies: list[bytes | memoryview] = []
    seg_headers: list[dict[str, Any]] = []
    for builder in segments.values():
        filt = compression.default_filter(builder.dtype) if filter == "auto" else filter
        if filt == "none" and codec_obj.name == "none":
            # Identity steps are skipped: the tensors' own bytes go out, copied once by the join.
            parts = builder.views()
            crc = 0
            for part in parts:
                crc = zlib.crc32(part, crc)
            bodies.extend(parts)
            size = builder.nbytes
        else:
            raw = builder.to_bytes()
            filtered = raw if filt == "none" else compression.get_filter(filt).encode(raw, builder.dtype)
            body = filtered if codec_obj.name == "none" else codec_obj.compress(filtered, level)
            bodies.append(body)
            size, crc = len(body), zlib.crc32(body)
        seg_headers.append(
            {
                "dtype": builder.dtype,
                "filter": filt,
                "codec": codec_obj.name,
                "raw": builder.nbytes,
                "size": size,
                "crc32": crc,
            }
        )
    header = {
        "version": WIRE_VERSION,
        "kind": "delta" if quantize_update else "weights",
        "dtype": wire_dtype,
        "codec": codec_obj.name,
        "level": level,
        "segments": seg_headers,
        "tensors": entries,
        "meta": dict(meta or {}),
    }
    hbytes = json.dumps(header, separators=(",", ":")).encode()
    prefix = _PREFIX.pack(WIRE_MAGIC, WIRE_VERSION, 0, 0, len(hbytes), zlib.crc32(hbytes))
    return b"".join([prefix, hbytes, *bodies])


def read_header(data: bytes | memoryview) -> tuple[dict[str, Any], int]:
    """Parse and check the prefix and JSON header; returns (header, offset of first segment)."""
    view = memoryview(data)
    if len(view) < _PREFIX.size:
        raise PayloadError(f"payload truncated: {len(view)} bytes is shorter than the {_PREFIX.size}-byte prefix")
    magic, version, _flags, _res, hlen, hcrc = _PREFIX.unpack_from(view, 0)
    if magic != WIRE_MAGIC:
        raise PayloadError(f"not a fedcore payload (magic {bytes(magic)!r}, expected {WIRE_MAGIC!r})")
    if version != WIRE_VERSION:
        raise PayloadError(f"unsupported wire format version {version} (this build reads {WIRE_VERSION})")
    if hlen > WIRE_MAX_HEADER_BYTES:
        raise PayloadTooLargeError(f"header of {hlen} bytes is over the {WIRE_MAX_HEADER_BYTES}-byte limit")
    end = _PREFIX.size + hlen
    if len(view) < end:
        raise PayloadError("payload truncated inside the header")
    hbytes = bytes(view[_PREFIX.size : end])
    if zlib.crc32(hbytes) != hcrc:
        raise PayloadError("header checksum mismatch: payload corrupt")
    try:
        header = json.loads(hbytes)
        _check_header(header)
    except (ValueError, TypeError, KeyError) as exc:
        raise PayloadError(f"malformed header: {exc}") from exc
    return header, end


def _check_header(h: dict[str, Any]) -> None:
    if h["kind"] not in ("weights", "delta"):
        raise ValueError(f"unknown kind {h['kind']!r}")
    nseg = len(h["segments"])
    for s in h["segments"]:
        if s["dtype"] not in TORCH_DTYPES or int(s["raw"]) < 0 or int(s["size"]) < 0:
            raise ValueError(f"bad segment {s!r}")
    for t in h["tensors"]:
        if t["dtype"] not in TORCH_DTYPES or any(int(d) < 0 for d in t["shape"]):
            raise ValueError(f"bad tensor entry {t.get('name')!r}")
        refs = [t["data"]] + ([t["scale"]] if t["enc"] == "q8" else [])
        for seg_i, off, n in refs:
            if not (0 <= seg_i < nseg) or off < 0 or n < 0 or off + n > h["segments"][seg_i]["raw"]:
                raise ValueError(f"tensor {t['name']!r} points outside its segment")


def decode_state(
    data: bytes | memoryview,
    *,
    max_size: int = DEFAULT_MAX_DECODED_BYTES,
    reference: StateDict | None = None,
    expected: Mapping[str, TensorSpec] | None = None,
    as_sent: bool = False,
) -> dict[str, torch.Tensor]:
    """Decode a payload into tensors of their original dtypes.

    With ``as_sent`` raw tensors stay in their wire dtype as read-only views of the decoded
    segment (no cast, no copy): for consumers that only read, such as an aggregator folding
    them into a float64 sum.

    Raises :class:`PayloadError` for truncated / corrupt bytes or a payload that does not match
    ``expected`` (names, shapes, dtypes), and :class:`PayloadTooLargeError` when the segments
    would inflate past ``max_size``. A ``delta`` payload needs ``reference``.
    """
    header, pos = read_header(data)
    view = memoryview(data)
    total_raw = sum(int(s["raw"]) for s in header["segments"])
    if total_raw > max_size:
        raise PayloadTooLargeError(f"payload inflates to {total_raw} bytes, over the {max_size}-byte limit")
    if expected is not None:
        _check_expected(header, expected)
    if header["kind"] == "delta" and reference is None:
        raise PayloadError("payload holds an update (delta); decoding it needs the reference global model")

    raws: list[bytes | memoryview] = []
    for s in header["segments"]:
        size = int(s["size"])
        body = view[pos : pos + size]
        if len(body) < size:
            raise PayloadError("payload truncated inside a segment")
        pos += size
        if zlib.crc32(body) != s["crc32"]:
            raise PayloadError("segment checksum mismatch: payload corrupt")
        try:
            if s["codec"] == "none":  # identity: checked for size, never copied
                if len(body) > int(s["raw"]):
                    raise compression.DecompressionLimitError("segment is larger than its declared raw size")
                filtered = body
            else:
                filtered = compression.get_codec(s["codec"]).decompress(body, max_size=int(s["raw"]))
            raw = filtered if s["filter"] == "none" else compression.get_filter(s["filter"]).decode(filtered, s["dtype"])
        except compression.DecompressionLimitError as exc:
            raise PayloadTooLargeError(str(exc)) from exc
        except compression.CompressionError as exc:
            raise PayloadError(f"segment does not decode: {exc}") from exc
        if len(raw) != int(s["raw"]):
            raise PayloadError(f"segment inflated to {len(raw)} bytes, header says {s['raw']}")
        raws.append(raw)
    if pos != len(view):
        raise PayloadError(f"{len(view) - pos} trailing bytes after the last segment")

    out: dict[str, torch.Tensor] = {}
    for t in header["tensors"]:
        name, shape, dtype = t["name"], tuple(int(d) for d in t["shape"]), TORCH_DTYPES[t["dtype"]]
        if t["enc"] == "q8":
            q = _view(raws, t["data"], torch.int8).reshape(shape)
            scales = _view(raws, t["scale"], torch.float32)
            delta = torch.from_numpy(compression.quant.dequantize_per_channel(q.numpy(), scales.numpy()))
            if reference is None or name not in reference:
                raise PayloadError(f"reference has no tensor {name!r}")
            ref = reference[name]
            if tuple(ref.shape) != shape:
                raise PayloadError(f"reference {name!r} has shape {tuple(ref.shape)}, update has {shape}")
            out[name] = (ref.float() + delta.reshape(shape)).to(dtype)
        elif t["enc"] == "raw":
            wire = TORCH_DTYPES[t["wire"]]
            tensor = _view(raws, t["data"], wire)
            if tensor.numel() != _numel(shape):
                raise PayloadError(f"tensor {name!r} holds {tensor.numel()} values, shape {shape} needs {_numel(shape)}")
            out[name] = tensor.reshape(shape) if as_sent else tensor.reshape(shape).to(dtype, copy=True)
        else:
            raise PayloadError(f"unknown tensor encoding {t['enc']!r}")
    return out


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _view(raws: list[bytes | memoryview], ref: list[int], dtype: torch.dtype) -> torch.Tensor:
    seg_i, off, n = ref
    itemsize = torch.empty((), dtype=dtype).element_size()
    if n % itemsize:
        raise PayloadError(f"{n} bytes is not a whole number of {dtype} values")
    if n == 0:
        return torch.empty(0, dtype=dtype)
    with warnings.catch_warnings():  # read-only buffer: every caller copies or casts before use
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(raws[seg_i], dtype=dtype, count=n // itemsize, offset=off)


def _check_expected(header: dict[str, Any], expected: Mapping[str, TensorSpec]) -> None:
    got = {t["name"]: (tuple(int(d) for d in t["shape"]), t["dtype"]) for t in header["tensors"]}
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    if missing or extra:
        raise PayloadError(
            f"payload is for another model: missing {missing[:5]}{'…' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{'…' if len(extra) > 5 else ''}"
        )
    for name, spec in expected.items():
        shape, dtype = got[name]
        if shape != tuple(spec.shape) or dtype != spec.dtype:
            raise PayloadError(
                f"tensor {name!r} is {dtype}{list(shape)} in the payload, the model expects {spec.dtype}{list(spec.shape)}"
            )


def payload_info(data: bytes | memoryview) -> dict[str, Any]:
    """The header of a payload, for logging and the dashboard (no tensor decoding)."""
    header, _ = read_header(data)
    return header
