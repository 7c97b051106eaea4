"""The parameter wire format ("model lightweighting"): state_dict ⇄ bytes.

state_dict → cast (fp32 | bf16 | fp16; integer / bool tensors untouched) → one contiguous
segment per wire dtype → float-aware filter → lossless codec → bytes. Optionally a client sends
its *update* (local − the global it received) quantised int8 per output channel.

Layout (all integers little-endian; the full byte-level spec is the README's "Wire format" section)::

    magic "FCW1" | u8 version (2) | u8 flags (0) | u16 reserved (0) | u32 header_len | u32 header_crc32
    header: UTF-8 JSON, header_len bytes
    segment bodies, back to back, in header order

A *block-framed* payload (flags bit 0 set) cuts every segment into fixed-size blocks, each
filtered, compressed and checksummed on its own and preceded by a 12-byte frame header, so a
sender can write its header before compressing anything and a receiver can decode each block
as it arrives: encode, transfer and decode overlap (:func:`iter_encode_state`,
:class:`StreamDecoder`).

The decoder trusts nothing: the header is parsed into a strict schema (bounded size and depth),
every tensor must tile its segment exactly, sizes are checked against the expected model before
anything is decompressed, decompression is bounded by the declared raw size, and both the
compressed body and the reconstructed raw bytes are checksummed. Nothing here ever unpickles.

A state is torch tensors or numpy arrays (``fedcore.arrays``): both encode to the same bytes,
and a decoder builds either (``into="numpy"``). Torch is imported only for torch tensors.
"""
from __future__ import annotations

import json
import math
import os
import struct
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

import numpy as np
import pydantic
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

import compression
from fedcore import arrays
from fedcore.arrays import ITEMSIZE as ITEMSIZE
from fedcore.arrays import Array, Kind
from fedcore.constants import (
    DEFAULT_CODEC,
    DEFAULT_DTYPE,
    DEFAULT_FILTER,
    DEFAULT_LEVEL,
    DEFAULT_MAX_DECODED_BYTES,
    WIRE_MAGIC,
    WIRE_MAX_DIM,
    WIRE_MAX_HEADER_BYTES,
    WIRE_MAX_HEADER_DEPTH,
    WIRE_MAX_META_CHARS,
    WIRE_MAX_META_ITEMS,
    WIRE_MAX_NAME_CHARS,
    WIRE_MAX_NDIM,
    WIRE_MAX_SEGMENTS,
    WIRE_MAX_TENSORS,
    WIRE_VERSION,
)
from fedcore.errors import PayloadError, PayloadTooLargeError
from fedcore.update_checks import is_untrained as is_untrained  # public here too (wire.is_untrained)

StateDict = Mapping[str, Array]

_PREFIX = struct.Struct("<4sBBHII")
_FRAME = struct.Struct("<III")  # body size, crc32 of the body, crc32 of the block's raw bytes

#: prefix flag: the segments are cut into blocks, each a frame of its own (README, section 9)
FLAG_FRAMED = 1
MIN_BLOCK = 1 << 16
MAX_BLOCK = 1 << 26
DEFAULT_BLOCK = 1 << 20

FLOAT_DTYPES = frozenset(("float32", "float16", "bfloat16", "float64"))
CAST_DTYPES = ("float32", "bfloat16", "float16")
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}

# Buffers that are not trained by gradient (update_checks.is_untrained) travel exactly, not as deltas.


def __getattr__(name: str) -> Any:
    """``DTYPE_NAMES`` (torch dtype → wire name) and ``TORCH_DTYPES`` (the reverse) import torch
    on first use, so a numpy-only process never does."""
    if name == "DTYPE_NAMES":
        return arrays.torch_names()
    if name == "TORCH_DTYPES":
        return arrays.torch_dtypes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def canonical_dtype(name: str) -> str:
    """'bf16' → 'bfloat16'; raises ValueError for a dtype the wire cannot cast to."""
    canon = _DTYPE_ALIASES.get(name, name)
    if canon not in CAST_DTYPES:
        raise ValueError(f"unknown wire dtype {name!r}; choose one of fp32, bf16, fp16")
    return canon


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one tensor: what a model expects a payload to hold."""

    shape: tuple[int, ...]
    dtype: str


def spec_of(state: StateDict) -> dict[str, TensorSpec]:
    out: dict[str, TensorSpec] = {}
    for k, v in state.items():
        name = arrays.dtype_name(v)
        if name is None:
            raise ValueError(f"tensor {k!r} has a dtype the wire cannot carry: {v.dtype}")
        out[k] = TensorSpec(arrays.shape_of(v), name)
    return out


# ------------------------------------------------------------------ header schema
def _registered_codec(name: str) -> str:
    if name not in compression.available_codecs():
        raise ValueError(f"unknown codec {name!r}")
    return name


def _registered_filter(name: str) -> str:
    if name not in compression.available_filters():
        raise ValueError(f"unknown filter {name!r}")
    return name


DtypeName = Literal["float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool"]
CastName = Literal["float32", "bfloat16", "float16"]
CodecName = Annotated[str, Field(max_length=64), AfterValidator(_registered_codec)]
FilterName = Annotated[str, Field(max_length=64), AfterValidator(_registered_filter)]
U32 = Annotated[int, Field(ge=0, le=0xFFFF_FFFF)]
ByteCount = Annotated[int, Field(ge=0, le=2**62)]
Dim = Annotated[int, Field(ge=0, le=WIRE_MAX_DIM)]
Shape = Annotated[list[Dim], Field(max_length=WIRE_MAX_NDIM)]
#: [segment index, byte offset in the segment's raw bytes, byte length]
ByteRef = Annotated[list[ByteCount], Field(min_length=3, max_length=3)]
TensorName = Annotated[str, Field(min_length=1, max_length=WIRE_MAX_NAME_CHARS)]
MetaKey = Annotated[str, Field(max_length=WIRE_MAX_META_CHARS)]
MetaValue = Union[bool, int, float, Annotated[str, Field(max_length=WIRE_MAX_META_CHARS)], None]


class _Strict(BaseModel):
    """No coercion (128.5 and true are not integers), no unknown fields, immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _SegmentBase(_Strict):
    dtype: DtypeName
    filter: FilterName
    codec: CodecName
    raw: ByteCount


class SegmentHeader(_SegmentBase):
    """One segment: the raw bytes of every tensor of one wire dtype, filtered then compressed."""

    size: ByteCount
    crc32: U32
    raw_crc32: U32


class RawTensor(_Strict):
    """A tensor stored as values of dtype ``wire`` (absolute values, also in a delta payload)."""

    name: TensorName
    shape: Shape
    dtype: DtypeName
    enc: Literal["raw"]
    wire: DtypeName
    data: ByteRef


class Q8Tensor(_Strict):
    """An int8 update quantised per output channel, with float32 scales (kind ``delta`` only)."""

    name: TensorName
    shape: Shape
    dtype: Literal["float32", "float16", "bfloat16", "float64"]
    enc: Literal["q8"]
    data: ByteRef
    scale: ByteRef


TensorEntry = Annotated[Union[RawTensor, Q8Tensor], Field(discriminator="enc")]


def check_block(n: int) -> int:
    """The block-size rule of README section 9: a power of two from MIN_BLOCK to MAX_BLOCK."""
    if n < MIN_BLOCK or n > MAX_BLOCK or n & (n - 1):
        raise ValueError(f"block must be a power of two from {MIN_BLOCK} to {MAX_BLOCK}, not {n}")
    return n


BlockSize = Annotated[int, Field(ge=MIN_BLOCK, le=MAX_BLOCK), AfterValidator(check_block)]


class FramedSegmentHeader(_SegmentBase):
    """A segment of a block-framed payload: its sizes and checksums are in each frame."""

    block: BlockSize


class _HeaderBase(_Strict):
    segments: Sequence[_SegmentBase]  # each kind of header says which segments it holds
    version: Annotated[int, Field(ge=WIRE_VERSION, le=WIRE_VERSION)]
    kind: Literal["weights", "delta"]
    dtype: CastName
    codec: CodecName
    level: Annotated[int, Field(ge=-(2**31), le=2**31 - 1)] | None
    tensors: Annotated[list[TensorEntry], Field(max_length=WIRE_MAX_TENSORS)]
    meta: Annotated[dict[MetaKey, MetaValue], Field(max_length=WIRE_MAX_META_ITEMS)]


class WireHeader(_HeaderBase):
    """The JSON header of a payload, as the decoder accepts it (see the README's "Wire format" section)."""

    segments: Annotated[list[SegmentHeader], Field(max_length=WIRE_MAX_SEGMENTS)]


class FramedWireHeader(_HeaderBase):
    """The header of a block-framed payload (prefix flag 1): segments declare a block size."""

    segments: Annotated[list[FramedSegmentHeader], Field(max_length=WIRE_MAX_SEGMENTS)]


AnyHeader = Union[WireHeader, FramedWireHeader]


def frame_body_limit(raw: int) -> int:
    """The most bytes a frame's body may take for ``raw`` bytes of block (codecs expand
    incompressible data a little; anything past this is refused before it is buffered)."""
    return raw + raw // 8 + 4096


# ------------------------------------------------------------------ encoding
class _Quantised:
    """One tensor's int8 update, quantised when its bytes are first needed (once): a streamed
    payload sends the blocks before it while this runs, instead of after every tensor is done.
    Read by the one thread that pulls the payload's blocks."""

    def __init__(self, tensor: Array, ref: Array) -> None:
        self._tensor: Array | None = tensor
        self._ref: Array | None = ref
        self._done: tuple[np.ndarray, np.ndarray] | None = None

    def get(self) -> tuple[np.ndarray, np.ndarray]:
        if self._done is None:
            assert self._tensor is not None and self._ref is not None
            delta = _float32(self._tensor) - _float32(self._ref)
            q, scales = compression.quant.quantize_per_channel(delta)
            self._done = (q, np.ascontiguousarray(scales, np.float32))
            self._tensor = self._ref = None  # what it needed is no longer held here
        return self._done


def _float32(x: Array) -> np.ndarray:
    """A float value as float32 numpy (a fresh array where it had to be cast; bfloat16 bits, as
    a numpy decoder reads a reference ``as_sent``, widened exactly)."""
    if isinstance(x, np.ndarray):
        return _float_numpy(x).astype(np.float32, copy=False)
    return x.detach().float().numpy()


_Part = Union[Array, tuple[_Quantised, int]]  # a tensor, or (quantised, 0 = data / 1 = scales)


class _SegmentBuilder:
    """Collects same-dtype tensors into one contiguous buffer (an int8 update's parts are
    computed when they are first read: :class:`_Quantised`)."""

    def __init__(self, dtype: str) -> None:
        self.dtype = dtype
        self.parts: list[_Part] = []
        self.nbytes = 0

    def add(self, t: Array) -> tuple[int, int]:
        offset, n = self.nbytes, arrays.nbytes(t)
        self.parts.append(t)
        self.nbytes += n
        return offset, n

    def add_quantised(self, quantised: _Quantised, which: int, nbytes: int) -> tuple[int, int]:
        offset = self.nbytes
        self.parts.append((quantised, which))
        self.nbytes += nbytes
        return offset, nbytes

    def views(self) -> list[memoryview]:
        """Each tensor's bytes without copying (a non-contiguous tensor is copied once)."""
        return list(self.iter_views())

    def iter_views(self) -> Iterator[memoryview]:
        for part in self.parts:
            yield arrays.flat_bytes(part[0].get()[part[1]] if isinstance(part, tuple) else part)

    def to_bytes(self) -> memoryview:
        views = self.views()
        if len(views) == 1:
            return views[0]
        return memoryview(b"".join(views))

    def blocks(self, block: int) -> Iterator[memoryview | bytes]:
        """The segment's bytes in blocks of ``block`` (the last may be shorter), each part read
        only when the blocks reach it; a block that spans parts is copied, the others are views."""
        pending = bytearray()
        for view in self.iter_views():
            pos = 0
            if pending:
                pos = min(block - len(pending), len(view))
                pending += view[:pos]
                if len(pending) < block:
                    continue
                yield bytes(pending)
                pending = bytearray()
            while len(view) - pos >= block:
                yield view[pos : pos + block]
                pos += block
            pending += view[pos:]
        if pending:
            yield bytes(pending)


@dataclass
class _Collected:
    """A state_dict cast and grouped into segments, before any filter or codec."""

    kind: str
    wire_dtype: str
    codec: compression.Codec
    level: int | None
    filter: str
    segments: list[_SegmentBuilder]
    entries: list[dict[str, Any]]
    meta: dict[str, Any]

    def filters(self) -> list[str]:
        """The filter each segment uses (``auto`` resolved per dtype)."""
        return [compression.default_filter(b.dtype) if self.filter == "auto" else self.filter for b in self.segments]

    def head(self, segments: list[dict[str, Any]], flags: int) -> bytes:
        """The prefix and the JSON header, for these segment entries."""
        header = {
            "version": WIRE_VERSION,
            "kind": self.kind,
            "dtype": self.wire_dtype,
            "codec": self.codec.name,
            "level": self.level,
            "segments": segments,
            "tensors": self.entries,
            "meta": self.meta,
        }
        hbytes = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
        return _PREFIX.pack(WIRE_MAGIC, WIRE_VERSION, flags, 0, len(hbytes), zlib.crc32(hbytes)) + hbytes


def _collect(
    state: StateDict,
    *,
    dtype: str,
    codec: str,
    level: int | None,
    filter: str,
    reference: StateDict | None,
    quantize_update: bool,
    exact: Iterable[str],
    meta: Mapping[str, Any] | None,
) -> _Collected:
    wire_dtype = canonical_dtype(dtype)
    codec_obj = compression.get_codec(codec)
    if filter != "auto":
        compression.get_filter(filter)  # an unknown name fails here, not after the casts
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
        src = arrays.dtype_name(tensor)
        if src is None:
            raise PayloadError(f"tensor {name!r} has unsupported dtype {tensor.dtype}")
        shape = arrays.shape_of(tensor)
        entry: dict[str, Any] = {"name": name, "shape": list(shape), "dtype": src}
        floating = arrays.is_floating(tensor)
        if quantize_update and floating and not is_untrained(name) and name not in exact_names:
            ref = reference[name] if reference is not None and name in reference else None
            if ref is None or arrays.shape_of(ref) != shape:
                raise ValueError(f"reference has no tensor {name!r} of shape {shape}")
            if not arrays.all_finite(tensor):  # refused before any byte is sent
                raise compression.CompressionError("cannot quantise non-finite values (NaN/inf in the update)")
            quantised = _Quantised(tensor, ref)
            qi, qb = seg("int8")
            si, sb = seg("float32")
            entry["enc"] = "q8"
            entry["data"] = [qi, *qb.add_quantised(quantised, 0, _numel(shape))]
            entry["scale"] = [si, *sb.add_quantised(quantised, 1, 4 * _channels(list(shape)))]
        else:
            target, wd = tensor, src
            if floating and not is_untrained(name) and name not in exact_names:
                target, wd = arrays.cast_to_wire(tensor, wire_dtype), wire_dtype
            i, b = seg(wd)
            entry["enc"] = "raw"
            entry["wire"] = wd
            entry["data"] = [i, *b.add(target)]
        entries.append(entry)
    kind = "delta" if quantize_update else "weights"
    return _Collected(kind, wire_dtype, codec_obj, level, filter, list(segments.values()), entries, dict(meta or {}))


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
    framed: bool = False,
    block: int = DEFAULT_BLOCK,
) -> bytes:
    """Encode a state_dict. With ``quantize_update`` the payload holds ``state - reference``
    quantised int8 per output channel; untrained buffers (and names in ``exact``) travel as-is.
    With ``framed`` the payload is block-framed (the same bytes :func:`iter_encode_state` yields)."""
    if framed:
        return b"".join(iter_encode_state(state, dtype=dtype, codec=codec, level=level, filter=filter,
                                          reference=reference, quantize_update=quantize_update, exact=exact,
                                          meta=meta, block=block))
    c = _collect(state, dtype=dtype, codec=codec, level=level, filter=filter, reference=reference,
                 quantize_update=quantize_update, exact=exact, meta=meta)
    codec_obj = c.codec
    bodies: list[bytes | memoryview] = []
    seg_headers: list[dict[str, Any]] = []
    for builder, filt in zip(c.segments, c.filters()):
        if filt == "none" and codec_obj.name == "none":
            # Identity steps are skipped: the tensors' own bytes go out, copied once by the join.
            parts = builder.views()
            raw_crc = 0
            for part in parts:
                raw_crc = zlib.crc32(part, raw_crc)
            bodies.extend(parts)
            size, crc = builder.nbytes, raw_crc
        else:
            raw = builder.to_bytes()
            raw_crc = zlib.crc32(raw)
            body = _filter_compress(raw, builder.dtype, filt, codec_obj, c.level)
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
                "raw_crc32": raw_crc,
            }
        )
    return b"".join([c.head(seg_headers, 0), *bodies])


def _filter_compress(raw: bytes | memoryview, dtype: str, filt: str, codec: compression.Codec,
                     level: int | None) -> bytes | memoryview:
    filtered = raw if filt == "none" else compression.get_filter(filt).encode(raw, dtype)
    return filtered if codec.name == "none" else codec.compress(filtered, level)


# ------------------------------------------------------------------ block-framed streaming
_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_workers = 1


def codec_pool() -> ThreadPoolExecutor:
    """The threads that filter and (de)compress blocks; zstd, lz4 and numpy release the GIL, so
    blocks of one payload (and of several clients' payloads) are coded in parallel."""
    global _pool, _workers
    with _pool_lock:
        if _pool is None:
            _workers = int(os.environ.get("FEDCORE_CODEC_THREADS", "0")) or min(4, os.cpu_count() or 1)
            _pool = ThreadPoolExecutor(max_workers=_workers, thread_name_prefix="fedcore-codec")
        return _pool


def _encode_frame(raw: bytes | memoryview, dtype: str, filt: str, codec: compression.Codec, level: int | None) -> bytes:
    body = _filter_compress(raw, dtype, filt, codec, level)
    if len(body) > frame_body_limit(len(raw)):  # never seen with the registered codecs; refuse rather than send it
        raise PayloadError(f"codec {codec.name} expanded a {len(raw)}-byte block to {len(body)} bytes")
    return b"".join([_FRAME.pack(len(body), zlib.crc32(body), zlib.crc32(raw)), body])


def iter_encode_state(
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
    block: int = DEFAULT_BLOCK,
) -> Iterator[bytes]:
    """A block-framed payload as a stream of byte strings: the prefix and header first (before
    anything is compressed), then one frame per block in order, each yielded as soon as it is
    coded; blocks are coded on :func:`codec_pool` a few ahead of the consumer."""
    check_block(block)
    c = _collect(state, dtype=dtype, codec=codec, level=level, filter=filter, reference=reference,
                 quantize_update=quantize_update, exact=exact, meta=meta)
    filters = c.filters()
    seg_headers = [{"dtype": b.dtype, "filter": f, "codec": c.codec.name, "raw": b.nbytes, "block": block}
                   for b, f in zip(c.segments, filters)]
    yield c.head(seg_headers, FLAG_FRAMED)
    pool = codec_pool()
    ahead = 2 * (_workers + 1)
    pending: deque[Future[bytes]] = deque()
    try:
        for builder, filt in zip(c.segments, filters):
            for raw in builder.blocks(block):
                pending.append(pool.submit(_encode_frame, raw, builder.dtype, filt, c.codec, c.level))
                while len(pending) >= ahead:
                    yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()


class EncodedStream:
    """A payload being encoded, iterable any number of times: the first pass pulls chunks from
    the encoder as they are ready (so they can be sent while the rest is coded), later passes
    (a retried upload) replay what was kept."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._source: Iterator[bytes] | None = chunks
        self._kept: list[bytes] = []
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[bytes]:
        i = 0
        while True:
            with self._lock:
                if i < len(self._kept):
                    chunk = self._kept[i]
                elif self._source is None:
                    return
                else:
                    nxt = next(self._source, None)
                    if nxt is None:
                        self._source = None
                        return
                    self._kept.append(nxt)
                    chunk = nxt
            i += 1
            yield chunk

    @property
    def nbytes(self) -> int:
        """Bytes encoded so far (all of them once a pass has ended)."""
        return sum(len(c) for c in self._kept)

    def getvalue(self) -> bytes:
        """The whole payload (encodes what is left)."""
        return b"".join(self)


# ------------------------------------------------------------------ header parsing
def json_depth(text: bytes) -> int:
    """Deepest nesting of arrays/objects in ``text``, without parsing it (linear, no recursion).

    Brackets inside strings do not count: a string starts and ends at a quote that is not
    escaped (preceded by an even run of backslashes), exactly as a JSON scanner sees it, so for
    any input the count is what a parser would reach before it stops.
    """
    a = np.frombuffer(text, dtype=np.uint8)
    if a.size == 0:
        return 0
    idx = np.arange(a.size)
    backslash = a == 0x5C
    last_other = np.maximum.accumulate(np.where(backslash, -1, idx))
    run_before = np.empty(a.size, dtype=np.int64)
    run_before[0] = 0
    run_before[1:] = idx[:-1] - last_other[:-1]  # backslashes immediately before each byte
    boundary = (a == 0x22) & (run_before % 2 == 0)
    inside = (np.cumsum(boundary) - boundary) % 2 == 1  # a closing quote itself counts as inside
    step = ((a == 0x5B) | (a == 0x7B)).astype(np.int8) - ((a == 0x5D) | (a == 0x7D)).astype(np.int8)
    step[inside] = 0
    return int(np.cumsum(step, dtype=np.int64).max(initial=0))


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"duplicate key {dup!r}")
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def _first_error(exc: pydantic.ValidationError) -> str:
    errs = exc.errors(include_url=False, include_input=False)
    e = errs[0]
    loc = ".".join(str(p) for p in e["loc"]) or "header"
    more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
    return f"{loc}: {e['msg']}{more}"


def read_header(data: bytes | bytearray | memoryview) -> tuple[AnyHeader, int]:
    """Parse and check the prefix and JSON header; returns (header, offset of first segment)."""
    view = memoryview(data).cast("B")
    if len(view) < _PREFIX.size:
        raise PayloadError(f"payload truncated: {len(view)} bytes is shorter than the {_PREFIX.size}-byte prefix")
    magic, version, flags, reserved, hlen, hcrc = _PREFIX.unpack_from(view, 0)
    if magic != WIRE_MAGIC:
        raise PayloadError(f"not a fedcore payload (magic {bytes(magic)!r}, expected {WIRE_MAGIC!r})")
    if version == 1:
        raise PayloadError(
            f"wire format version 1 is no longer accepted: re-encode with a fedcore that writes version {WIRE_VERSION}"
        )
    if version != WIRE_VERSION:
        raise PayloadError(f"unsupported wire format version {version} (this build reads {WIRE_VERSION})")
    if flags not in (0, FLAG_FRAMED) or reserved:
        raise PayloadError(f"prefix flags ({flags}) must be 0 or {FLAG_FRAMED} (block-framed) and reserved ({reserved}) 0")
    if hlen > WIRE_MAX_HEADER_BYTES:
        raise PayloadTooLargeError(f"header of {hlen} bytes is over the {WIRE_MAX_HEADER_BYTES}-byte limit")
    end = _PREFIX.size + hlen
    if len(view) < end:
        raise PayloadError("payload truncated inside the header")
    hbytes = bytes(view[_PREFIX.size : end])
    if zlib.crc32(hbytes) != hcrc:
        raise PayloadError("header checksum mismatch: payload corrupt")
    depth = json_depth(hbytes)
    if depth > WIRE_MAX_HEADER_DEPTH:
        raise PayloadError(f"malformed header: JSON nested {depth} deep, over the limit of {WIRE_MAX_HEADER_DEPTH}")
    try:
        obj = json.loads(hbytes.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant,
                         parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise PayloadError(f"malformed header: not UTF-8 JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise PayloadError(f"malformed header: a JSON object is expected, not {type(obj).__name__}")
    hv = obj.get("version")
    if type(hv) is not int or hv != version:
        raise PayloadError(f"malformed header: header version {hv!r} differs from the prefix version {version}")
    try:
        header: AnyHeader = (FramedWireHeader if flags & FLAG_FRAMED else WireHeader).model_validate(obj)
    except pydantic.ValidationError as exc:
        raise PayloadError(f"malformed header: {_first_error(exc)}") from None
    _check_layout(header)
    return header, end


def _numel(shape: Iterable[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _channels(shape: list[int]) -> int:
    """Number of q8 scales: the output channels (dim 0) of a rank ≥ 2 tensor, else one."""
    return shape[0] if len(shape) >= 2 else 1


def _refs(t: RawTensor | Q8Tensor) -> list[tuple[str, list[int], str, int]]:
    """(what, [segment, offset, length], segment dtype it needs, byte length it needs)."""
    if isinstance(t, RawTensor):
        return [("data", t.data, t.wire, _numel(t.shape) * ITEMSIZE[t.wire])]
    return [("data", t.data, "int8", _numel(t.shape)), ("scale", t.scale, "float32", 4 * _channels(t.shape))]


def _check_layout(h: AnyHeader) -> None:
    """What the schema cannot say: cross-references, sizes, tiling, and the kind's rules."""
    nseg = len(h.segments)
    dtypes = [s.dtype for s in h.segments]
    if len(set(dtypes)) != nseg:
        raise PayloadError(f"malformed header: two segments of one dtype ({dtypes})")
    for i, s in enumerate(h.segments):
        if s.codec != h.codec:
            raise PayloadError(f"malformed header: segment {i} uses codec {s.codec!r}, the header says {h.codec!r}")
        if isinstance(s, SegmentHeader) and s.codec == "none" and s.size != s.raw:
            raise PayloadError(f"malformed header: segment {i} is stored (codec none) but size {s.size} != raw {s.raw}")
        if s.raw % ITEMSIZE[s.dtype]:
            raise PayloadError(f"malformed header: segment {i} raw size {s.raw} is not a whole number of {s.dtype}")
    names: set[str] = set()
    spans: list[list[tuple[int, int, str]]] = [[] for _ in range(nseg)]
    q8 = 0
    for t in h.tensors:
        if t.name in names:
            raise PayloadError(f"malformed header: tensor {t.name!r} appears twice")
        names.add(t.name)
        if isinstance(t, Q8Tensor):
            q8 += 1
        elif t.dtype in FLOAT_DTYPES:
            if t.wire not in (h.dtype, t.dtype):
                raise PayloadError(f"malformed header: tensor {t.name!r} ({t.dtype}) cannot travel as {t.wire}")
        elif t.wire != t.dtype:
            raise PayloadError(f"malformed header: tensor {t.name!r} ({t.dtype}) must travel as {t.dtype}, not {t.wire}")
        for what, (seg_i, off, n), seg_dtype, need in _refs(t):
            if seg_i >= nseg:
                raise PayloadError(f"malformed header: tensor {t.name!r} {what} points at segment {seg_i} of {nseg}")
            if h.segments[seg_i].dtype != seg_dtype:
                raise PayloadError(
                    f"malformed header: tensor {t.name!r} {what} needs a {seg_dtype} segment, "
                    f"segment {seg_i} is {h.segments[seg_i].dtype}"
                )
            if n != need:
                raise PayloadError(f"malformed header: tensor {t.name!r} {what} is {n} bytes, its shape needs {need}")
            spans[seg_i].append((off, n, t.name))
    if h.kind == "delta" and q8 == 0:
        raise PayloadError("malformed header: a delta payload holds no q8 tensor")
    if h.kind == "weights" and q8:
        raise PayloadError("malformed header: q8 tensors are only allowed in a delta payload")
    for i, (s, seg_spans) in enumerate(zip(h.segments, spans)):
        if not seg_spans:
            raise PayloadError(f"malformed header: segment {i} is not used by any tensor")
        cursor = 0
        for off, n, name in sorted(seg_spans):
            if off != cursor:
                what = "overlaps the bytes before it" if off < cursor else f"leaves a gap of {off - cursor} bytes"
                raise PayloadError(f"malformed header: tensor {name!r} in segment {i} {what}")
            cursor += n
        if cursor != s.raw:
            raise PayloadError(f"malformed header: segment {i} declares {s.raw} raw bytes, its tensors hold {cursor}")


def _check_expected(header: AnyHeader, expected: Mapping[str, TensorSpec]) -> None:
    """Same names, shapes and dtypes as the model, and so exactly the model's bytes per segment."""
    got = {t.name: t for t in header.tensors}
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    if missing or extra:
        raise PayloadError(
            f"payload is for another model: missing {missing[:5]}{'…' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{'…' if len(extra) > 5 else ''}"
        )
    need = [0] * len(header.segments)
    for name, spec in expected.items():
        t = got[name]
        if tuple(t.shape) != tuple(spec.shape) or t.dtype != spec.dtype:
            raise PayloadError(
                f"tensor {name!r} is {t.dtype}{list(t.shape)} in the payload, the model expects {spec.dtype}{list(spec.shape)}"
            )
        for _, ref, _, nbytes in _refs(t):  # the shape is the model's now, so are these sizes
            need[ref[0]] += nbytes
    for i, (s, n) in enumerate(zip(header.segments, need)):
        if s.raw != n:
            err = PayloadTooLargeError if s.raw > n else PayloadError
            raise err(f"segment {i} declares {s.raw} raw bytes, the model's tensors need {n}")


# ------------------------------------------------------------------ decoding
def decode_state(
    data: bytes | bytearray | memoryview,
    *,
    max_size: int = DEFAULT_MAX_DECODED_BYTES,
    reference: StateDict | None = None,
    expected: Mapping[str, TensorSpec] | None = None,
    as_sent: bool = False,
    into: Kind = "torch",
) -> dict[str, Array]:
    """Decode a payload (whole or block-framed) into tensors of their original dtypes.

    With ``as_sent`` raw tensors stay in their wire dtype as read-only views of the decoded
    segment (no cast, no copy): for consumers that only read, such as an aggregator folding
    them into a float64 sum. ``into="numpy"`` builds numpy arrays instead of torch tensors
    (torch is not imported); numpy has no bfloat16, so a bfloat16 segment read ``as_sent``
    holds its raw bits (uint16), and a model whose own dtype is bfloat16 cannot be decoded so.

    Raises :class:`PayloadError` for truncated / corrupt bytes, a malformed header, or a payload
    that does not match ``expected`` (names, shapes, dtypes, bytes per segment), and
    :class:`PayloadTooLargeError` when the segments would inflate past ``max_size`` (or past
    what ``expected`` needs). All of it is checked before anything is decompressed.
    A ``delta`` payload needs ``reference``.
    """
    header, pos = read_header(data)
    if isinstance(header, FramedWireHeader):
        dec = StreamDecoder(max_size=max_size, reference=reference, expected=expected, as_sent=as_sent, into=into)
        dec.feed(data)
        return dec.finish()
    _admit(header, max_size, reference, expected)
    return _decode_whole(header, pos, data, reference, as_sent, into)


def _decode_whole(header: WireHeader, pos: int, data: bytes | bytearray | memoryview,
                  reference: StateDict | None, as_sent: bool, into: Kind) -> dict[str, Array]:
    """The segments of a whole (unframed) payload whose header was read and admitted."""
    view = memoryview(data).cast("B")
    body_bytes = sum(s.size for s in header.segments)
    if pos + body_bytes > len(view):
        raise PayloadError(f"payload truncated: segments need {body_bytes} bytes, {len(view) - pos} follow the header")
    if pos + body_bytes < len(view):
        raise PayloadError(f"{len(view) - pos - body_bytes} trailing bytes after the last segment")

    raws: list[bytes | memoryview] = []
    for i, s in enumerate(header.segments):
        body = view[pos : pos + s.size]
        pos += s.size
        raws.append(_inflate(f"segment {i}", s.dtype, s.filter, s.codec, s.raw, s.crc32, s.raw_crc32, body))
    return _tensors(header, raws, reference, as_sent, into)


def _admit(header: AnyHeader, max_size: int, reference: StateDict | None,
           expected: Mapping[str, TensorSpec] | None) -> None:
    """Every check that needs only the header: done before anything is decompressed."""
    if expected is not None:
        _check_expected(header, expected)
    total_raw = sum(s.raw for s in header.segments)
    if total_raw > max_size:
        raise PayloadTooLargeError(f"payload inflates to {total_raw} bytes, over the {max_size}-byte limit")
    if header.kind == "delta" and reference is None:
        raise PayloadError("payload holds an update (delta); decoding it needs the reference global model")


def _tensors(header: AnyHeader, raws: list[bytes | memoryview], reference: StateDict | None,
             as_sent: bool, into: Kind) -> dict[str, Array]:
    """Tensors from the decoded segments (README section 5)."""
    out: dict[str, Array] = {}
    for t in header.tensors:
        shape = tuple(t.shape)
        # A numpy decoder keeps bfloat16 only as raw bits read as sent; a dequantised delta or a
        # cast back to bfloat16 would need the dtype numpy lacks.
        if into == "numpy" and t.dtype == "bfloat16" and (isinstance(t, Q8Tensor) or not as_sent):
            raise PayloadError(f"tensor {t.name!r} is bfloat16, which numpy has no dtype for: decode into torch")
        if isinstance(t, Q8Tensor):
            out[t.name] = _dequantize(t, raws, reference, into)
            continue
        if t.wire == "bool" and _numel(shape) and _view(raws, t.data, "uint8", "numpy").max() > 1:
            raise PayloadError(f"tensor {t.name!r}: bool bytes must be 0 or 1")
        tensor = _view(raws, t.data, t.wire, into).reshape(shape)
        out[t.name] = tensor if as_sent else arrays.from_wire(tensor, t.wire, t.dtype)
    return out


def _inflate(what: str, dtype: str, filt: str, codec: str, raw_n: int, crc: int, raw_crc: int,
             body: bytes | memoryview) -> bytes | memoryview:
    """Checksum, inflate (never past ``raw_n`` bytes), un-filter and checksum again: one
    segment of a whole payload or one block of a framed one."""
    if zlib.crc32(body) != crc:
        raise PayloadError(f"{what} checksum mismatch: payload corrupt")
    try:
        if codec == "none":  # identity: size already equals raw; checked, never copied
            filtered: bytes | memoryview = body
        else:
            filtered = compression.get_codec(codec).decompress(body, max_size=raw_n)
        if len(filtered) != raw_n:
            raise PayloadError(f"{what} inflated to {len(filtered)} bytes, header says {raw_n}")
        raw = filtered if filt == "none" else compression.get_filter(filt).decode(filtered, dtype)
    except compression.DecompressionLimitError as exc:
        raise PayloadTooLargeError(f"{what}: {exc}") from None
    except compression.CompressionError as exc:
        raise PayloadError(f"{what} does not decode: {exc}") from None
    if zlib.crc32(raw) != raw_crc:
        raise PayloadError(f"{what} raw checksum mismatch: wrong filter, codec or dtype label")
    return raw


@dataclass(frozen=True)
class _Block:
    segment: int
    offset: int
    size: int


class StreamDecoder:
    """Decodes a payload while its bytes arrive: ``feed(chunk)`` as often as chunks come, then
    ``finish()`` for the tensors.

    A block-framed payload is checked against the model as soon as its header is in (before
    any block is decompressed), and each frame is decoded on :func:`codec_pool` the moment its
    last byte arrives, straight into the segment's buffer, so decoding overlaps the transfer
    and ``finish()`` waits only for the last blocks. A whole (unframed) payload is buffered and
    decoded by :func:`decode_state` at ``finish()``. Any error is a :class:`PayloadError` (or
    :class:`PayloadTooLargeError`) raised by ``feed`` or ``finish``; after one the decoder is
    spent and holds nothing.
    """

    _COMPACT = 1 << 20

    def __init__(
        self,
        *,
        max_size: int = DEFAULT_MAX_DECODED_BYTES,
        reference: StateDict | None = None,
        expected: Mapping[str, TensorSpec] | None = None,
        as_sent: bool = False,
        on_header: Callable[[AnyHeader], None] | None = None,
        into: Kind = "torch",
    ) -> None:
        self.into: Kind = into
        self.max_size = max_size
        self.reference = reference
        self.expected = expected
        self.as_sent = as_sent
        self.on_header = on_header
        self.header: AnyHeader | None = None
        self.received = 0
        self._buf = bytearray()
        self._pos = 0
        self._segments: list[np.ndarray] = []
        self._blocks: list[_Block] = []
        self._next = 0
        self._frame: tuple[int, int, int] | None = None
        self._jobs: list[Future[None]] = []
        self._checked = 0
        self._error: PayloadError | None = None

    @property
    def framed(self) -> bool:
        return isinstance(self.header, FramedWireHeader)

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        if self._error is not None:
            raise self._error
        try:
            self._buf += chunk
            self.received += len(chunk)
            self._advance()
            self._raise_done_errors()
        except PayloadError as exc:
            self._fail(exc)
            raise

    def finish(self) -> dict[str, Array]:
        """The decoded tensors; a payload that stopped short is a :class:`PayloadError`."""
        if self._error is not None:
            raise self._error
        try:
            if self.header is None:
                raise PayloadError(f"payload truncated: {self.received} bytes hold no complete header")
            if not isinstance(self.header, FramedWireHeader):  # read and admitted at feed()
                return _decode_whole(self.header, self._pos, self._buf, self.reference, self.as_sent, self.into)
            if self._next < len(self._blocks):
                raise PayloadError(
                    f"payload truncated: {len(self._blocks) - self._next} of {len(self._blocks)} blocks did not arrive"
                )
            for job in self._jobs:
                job.result()
            raws: list[bytes | memoryview] = [b.data for b in self._segments]
            out = _tensors(self.header, raws, self.reference, self.as_sent, self.into)
        except PayloadError as exc:
            self._fail(exc)
            raise
        self._segments = []
        return out

    def abort(self) -> None:
        """Drop everything (a transport gave up on the stream)."""
        self._fail(PayloadError("payload stream aborted"))

    # ---------------------------------------------------------------- internals
    def _fail(self, exc: PayloadError) -> None:
        self._error = exc
        for job in self._jobs:
            job.cancel()
        for job in self._jobs:  # a running block writes into the buffers: let it end first
            if not job.cancelled():
                try:
                    job.result()
                except Exception:  # noqa: BLE001 - the first error is the one reported
                    pass
        self._buf = bytearray()
        self._segments = []
        self._jobs = []

    def _raise_done_errors(self) -> None:
        while self._checked < len(self._jobs) and self._jobs[self._checked].done():
            self._jobs[self._checked].result()
            self._checked += 1

    def _avail(self) -> int:
        return len(self._buf) - self._pos

    def _take(self, n: int) -> memoryview:
        view = memoryview(self._buf)[self._pos : self._pos + n]
        self._pos += n
        return view

    def _advance(self) -> None:
        if self.header is None and not self._read_header():
            return
        if not isinstance(self.header, FramedWireHeader):
            return  # whole payload: kept as it comes, decoded at finish()
        while True:
            if self._next == len(self._blocks):
                if self._avail():
                    raise PayloadError(f"{self._avail()} trailing bytes after the last block")
                break
            block = self._blocks[self._next]
            seg = self.header.segments[block.segment]
            if self._frame is None:
                if self._avail() < _FRAME.size:
                    break
                with self._take(_FRAME.size) as fh:
                    size, crc, raw_crc = _FRAME.unpack(fh)
                if seg.codec == "none" and size != block.size:
                    raise PayloadError(f"block {self._next} is stored (codec none) but its size {size} != {block.size}")
                if size > frame_body_limit(block.size):
                    raise PayloadTooLargeError(
                        f"block {self._next} declares a {size}-byte body for {block.size} raw bytes"
                    )
                self._frame = (size, crc, raw_crc)
            size, crc, raw_crc = self._frame
            if self._avail() < size:
                break
            body = bytes(self._take(size))
            out = self._segments[block.segment].data[block.offset : block.offset + block.size]
            self._jobs.append(codec_pool().submit(_decode_block, f"block {self._next} (segment {block.segment})",
                                                  seg, block.size, crc, raw_crc, body, out))
            self._frame = None
            self._next += 1
        if self._pos > self._COMPACT and self._pos * 2 > len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0

    def _read_header(self) -> bool:
        if len(self._buf) < _PREFIX.size:
            return False
        hlen = _PREFIX.unpack_from(self._buf, 0)[4]
        if hlen <= WIRE_MAX_HEADER_BYTES and len(self._buf) < _PREFIX.size + hlen:
            return False  # read_header refuses the oversize header straight away
        header, end = read_header(self._buf)
        if self.on_header is not None:
            self.on_header(header)
        _admit(header, self.max_size, self.reference, self.expected)
        self.header = header
        self._pos = end  # a whole payload keeps its bytes from here to finish()
        if isinstance(header, FramedWireHeader):
            # np.empty: every byte is written by its block before finish() reads it (a missing
            # block fails finish()), so the pages need no zero-fill: bytearray(n) memsets n bytes.
            self._segments = [np.empty(s.raw, np.uint8) for s in header.segments]
            self._blocks = [_Block(i, off, min(s.block, s.raw - off))
                            for i, s in enumerate(header.segments) for off in range(0, s.raw, s.block)]
        return True


def _decode_block(what: str, seg: FramedSegmentHeader, n: int, crc: int, raw_crc: int, body: bytes,
                  out: memoryview) -> None:
    out[:] = _inflate(what, seg.dtype, seg.filter, seg.codec, n, crc, raw_crc, body)


def _dequantize(t: Q8Tensor, raws: list[bytes | memoryview], reference: StateDict | None, into: Kind) -> Array:
    """reference + q × scale[channel], computed in float32, then cast to the tensor's dtype."""
    shape = tuple(t.shape)
    if reference is None or t.name not in reference:
        raise PayloadError(f"reference has no tensor {t.name!r}")
    ref = reference[t.name]
    if tuple(ref.shape) != shape:
        raise PayloadError(f"reference {t.name!r} has shape {tuple(ref.shape)}, update has {list(shape)}")
    out = _dequantize_numpy(t, raws, ref)
    if into == "numpy":
        return out.astype(arrays.NUMPY_DTYPES[t.dtype], copy=False)
    import torch

    return torch.from_numpy(out).to(arrays.torch_dtypes()[t.dtype])


# Elements per step of the dequantiser: the widened reference block and the output block stay in L2.
_DEQ_BLOCK = 1 << 16


def _dequantize_numpy(t: Q8Tensor, raws: list[bytes | memoryview], ref: Array) -> np.ndarray:
    """The float32 values ``reference + q × scale[channel]`` (for torch and numpy decoders
    alike: a torch reference is read through numpy views), rows at a time into one fresh
    output: whole-tensor temporaries (q as float32, a widened bfloat16 reference) would each be
    a fresh mapping under the recommended ``MALLOC_MMAP_THRESHOLD_``, every page faulted in,
    and torch's bfloat16 cast is 4x slower than widening the bits. A bfloat16 reference (read
    ``as_sent``) is widened exactly."""
    shape = tuple(t.shape)
    q = arrays.to_numpy(_view(raws, t.data, "int8", "numpy"))
    scales = arrays.to_numpy(_view(raws, t.scale, "float32", "numpy")).reshape(-1, 1)
    out = np.empty(shape, dtype=np.float32)
    if q.size == 0:
        return out
    rows = scales.shape[0]
    o2, q2 = out.reshape(rows, -1), q.reshape(rows, -1)
    r2 = arrays.float_bits(ref).reshape(rows, -1)
    step = max(1, _DEQ_BLOCK // o2.shape[1])
    for a in range(0, rows, step):
        b = min(rows, a + step)
        np.multiply(q2[a:b], scales[a:b], out=o2[a:b])  # int8 → float32 exactly, then × scale
        np.add(o2[a:b], _float_numpy(r2[a:b]), out=o2[a:b])
    return out


def _float_numpy(ref: Array) -> np.ndarray:
    """A reference tensor as numpy floats (bfloat16 bits, as a numpy decoder reads them ``as_sent``,
    or a torch bfloat16 tensor, widened exactly)."""
    r = arrays.float_bits(ref)
    return arrays.widen_bf16(r) if r.dtype == np.uint16 else r


def _view(raws: list[bytes | memoryview], ref: list[int], dtype: str, into: Kind) -> Array:
    """A read-only tensor over a segment's bytes (offsets and sizes were checked by the layout)."""
    seg_i, off, n = ref
    return arrays.from_buffer(raws[seg_i], dtype, n // ITEMSIZE[dtype], off, into)


def payload_info(data: bytes | bytearray | memoryview) -> AnyHeader:
    """The header of a payload, for logging and the dashboard (no tensor decoding)."""
    header, _ = read_header(data)
    return header
