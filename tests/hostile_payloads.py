"""Hostile fedcore wire payloads, for fuzzing the decoder and the live transports.

Structure-aware: each payload starts as a valid payload of a given model (every codec, filters,
cast dtypes, weights and delta kinds) and then gets one to three mutations of the prefix, the
JSON header (field values, types, missing and unknown keys, dtypes, filter/codec labels, byte
references, shapes, crc fields, overlaps, extra segments), the bodies (bit flips with or without
a fixed-up crc, decompression bombs) or the framing (truncation, trailing bytes, deep JSON).

Two entry points share one mutation engine:

* :func:`hostile_payloads` — a hypothesis strategy (shrinks to a small failing mutation);
* :func:`hostile_corpus` — ``n`` deterministic payloads from a seed, for sending through a
  live server without hypothesis.

Helpers :func:`split_payload` / :func:`assemble` turn a payload into editable parts and back.
"""
from __future__ import annotations

import copy
import json
import random
import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol, TypeVar

import torch
from hypothesis import strategies as st

import compression
from fedcore import wire

T = TypeVar("T")
StateDict = Mapping[str, torch.Tensor]
PREFIX = struct.Struct("<4sBBHII")
ZSTD_BLOCK = 128 * 1024


# ------------------------------------------------------------------ payload parts
@dataclass
class Parts:
    """An editable payload: prefix fields, the header as JSON values, and the segment bodies."""

    header: Any
    bodies: list[bytes]
    magic: bytes = b"FCW1"
    version: int = 2
    flags: int = 0
    reserved: int = 0
    header_bytes: bytes | None = None  # replaces json.dumps(header) when set
    header_len: int | None = None  # a lying header_len when set
    crc_xor: int = 0  # a wrong header crc32 when non-zero
    cut: int | None = None  # truncate the final bytes to this length
    tail: bytes = b""


def split_payload(data: bytes) -> Parts:
    """Parse a well-formed payload (without fedcore's decoder) into :class:`Parts`."""
    magic, version, flags, reserved, hlen, _ = PREFIX.unpack_from(data, 0)
    header = json.loads(data[PREFIX.size : PREFIX.size + hlen])
    pos = PREFIX.size + hlen
    bodies = []
    for s in header["segments"]:
        bodies.append(bytes(data[pos : pos + s["size"]]))
        pos += s["size"]
    return Parts(header, bodies, magic, version, flags, reserved)


def assemble(p: Parts) -> bytes:
    """Serialise :class:`Parts`; the header crc32 is right unless ``crc_xor`` says otherwise."""
    hbytes = p.header_bytes if p.header_bytes is not None else json.dumps(p.header).encode()
    hlen = len(hbytes) if p.header_len is None else p.header_len
    prefix = PREFIX.pack(p.magic, p.version, p.flags, p.reserved, hlen & 0xFFFFFFFF,
                         zlib.crc32(hbytes) ^ p.crc_xor)
    out = b"".join([prefix, hbytes, *p.bodies, p.tail])
    return out if p.cut is None else out[: p.cut]


def reseal(p: Parts, seg: int) -> None:
    """Make segment ``seg``'s ``size`` and ``crc32`` describe its (replaced) body."""
    segs = p.header.get("segments") if isinstance(p.header, dict) else None
    if isinstance(segs, list) and seg < len(segs) and isinstance(segs[seg], dict) and seg < len(p.bodies):
        segs[seg]["size"] = len(p.bodies[seg])
        segs[seg]["crc32"] = zlib.crc32(p.bodies[seg])


# ------------------------------------------------------------------ bombs
def zstd_rle_bomb(n_bytes: int, *, content_size: bool = True, value: int = 0) -> bytes:
    """A valid zstd frame that inflates to ``n_bytes`` copies of ``value`` in ~4 bytes per 128 KiB.

    Built by hand from RLE blocks (RFC 8878), so a 4 GiB bomb costs nothing to make (131 KB).
    With ``content_size=False`` the frame does not declare its size: only streaming with a
    bound stops it.
    """
    out = bytearray(b"\x28\xb5\x2f\xfd")
    if content_size:  # descriptor: 8-byte content size, not single-segment; window 128 KiB
        out += bytes([0xC0, 0x38]) + struct.pack("<Q", n_bytes)
    else:
        out += bytes([0x00, 0x38])
    full, rem = divmod(n_bytes, ZSTD_BLOCK)
    sizes = [ZSTD_BLOCK] * full + ([rem] if rem or not full else [])
    for i, size in enumerate(sizes):
        last = int(i == len(sizes) - 1)
        out += ((size << 3) | (1 << 1) | last).to_bytes(3, "little") + bytes([value])
    return bytes(out)


@lru_cache(maxsize=None)
def codec_bomb(codec: str, n_bytes: int) -> bytes:
    """``n_bytes`` zeros compressed by ``codec`` at a fast level (cached: built once per run)."""
    if codec == "zstd":
        return zstd_rle_bomb(n_bytes)
    c = compression.get_codec(codec)
    fast = {"gzip": 1, "zlib": 1, "bz2": 1, "lzma": 0, "lz4": 0, "brotli": 1}.get(codec)
    return c.compress(bytes(n_bytes), fast)


# ------------------------------------------------------------------ choosers
class Chooser(Protocol):
    def integer(self, lo: int, hi: int) -> int: ...


class RandomChooser:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)


class DrawChooser:
    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw

    def integer(self, lo: int, hi: int) -> int:
        return self.draw(st.integers(lo, hi))


def pick(c: Chooser, seq: Sequence[T]) -> T:
    return seq[c.integer(0, len(seq) - 1)]


def hostile(c: Chooser, seq: Sequence[T] | None = None) -> T:
    """A copy of a constant (default: one of HOSTILE_VALUES): later edits must not change it."""
    return copy.deepcopy(pick(c, seq if seq is not None else HOSTILE_VALUES))  # type: ignore[arg-type]


# ------------------------------------------------------------------ base payloads
def small_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A small model-like state with every kind of tensor the wire carries."""
    g = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(8, 3, 3, 3, generator=g) * 0.1,
        "conv.bias": torch.randn(8, generator=g) * 0.1,
        "bn.running_mean": torch.randn(8, generator=g),
        "bn.running_var": torch.rand(8, generator=g) + 0.5,
        "bn.num_batches_tracked": torch.tensor(17),
        "fc.weight": torch.randn(10, 32, generator=g) * 0.1,
        "fc.bias": torch.randn(10, generator=g),
        "mask": torch.rand(5, generator=g) > 0.5,
        "ids": torch.randint(-1000, 1000, (4, 2), generator=g, dtype=torch.int32),
        "scalar": torch.tensor(3.25),
    }


def perturbed(state: StateDict, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.01 * torch.randn(v.shape, generator=g, dtype=v.dtype) if v.is_floating_point() else v.clone()
            for k, v in state.items()}


def base_payloads(state: StateDict) -> list[bytes]:
    """Valid payloads of ``state``: every codec, the cast dtypes, every filter, both kinds."""
    out = []
    for i, codec in enumerate(compression.available_codecs()):
        dtype = wire.CAST_DTYPES[i % 3]
        filt = ("auto", "split", "shuffle", "none")[i % 4]
        out.append(wire.encode_state(state, dtype=dtype, codec=codec, filter=filt, level=None))
    update = perturbed(state)
    for codec in ("zstd", "none", "lz4"):
        out.append(wire.encode_state(update, reference=state, quantize_update=True, codec=codec))
    return out


# ------------------------------------------------------------------ mutations
HOSTILE_VALUES: tuple[Any, ...] = (
    -1, 0, 1, 3, 2**31, 2**32, 2**63, 2**64 + 1, 10**30, 128.5, -0.0, 1e308, True, False, None,
    "", "x" * 5000, "float8_e4m3", "split", "zstd", "delta", [], {}, [1, 2], [0, 0, 2**40],
    {"a": 1}, [[[[[[[[[[1]]]]]]]]]],
)
DTYPE_LABELS = (*wire.TORCH_DTYPES, "float8_e4m3", "uint64", "complex64", "Float32", "")
FILTER_LABELS = ("none", "shuffle", "split", "auto", "bitshuffle")
CODEC_LABELS = (*compression.available_codecs(), "lz4_raw", "snappy_framed", "ZSTD")


def _dicts_and_lists(node: Any, out: list[Any]) -> list[Any]:
    if isinstance(node, (dict, list)):
        out.append(node)
        for v in node.values() if isinstance(node, dict) else node:
            _dicts_and_lists(v, out)
    return out


def _segments(p: Parts) -> list[dict[str, Any]]:
    segs = p.header.get("segments") if isinstance(p.header, dict) else None
    return [s for s in segs if isinstance(s, dict)] if isinstance(segs, list) else []


def _tensors(p: Parts) -> list[dict[str, Any]]:
    ts = p.header.get("tensors") if isinstance(p.header, dict) else None
    return [t for t in ts if isinstance(t, dict)] if isinstance(ts, list) else []


def m_prefix(p: Parts, c: Chooser) -> None:
    which = c.integer(0, 4)
    if which == 0:
        p.version = pick(c, (0, 1, 3, 255))
    elif which == 1:
        p.flags = pick(c, (1, 2, 128, 255))
    elif which == 2:
        p.reserved = pick(c, (1, 256, 0xFFFF))
    elif which == 3:
        p.magic = pick(c, (b"FCW2", b"fcw1", b"\x00\x00\x00\x00", b"PK\x03\x04"))
    else:
        p.crc_xor = pick(c, (1, 0x80000000, 0xFFFFFFFF))


def m_header_len(p: Parts, c: Chooser) -> None:
    real = len(json.dumps(p.header).encode())
    p.header_len = pick(c, (0, 1, real - 1, real + 1, real + 1000, 2**24, 2**32 - 1))


def m_truncate(p: Parts, c: Chooser) -> None:
    total = len(assemble(p))
    if c.integer(0, 2) == 0:
        p.tail = pick(c, (b"\x00", b"junk", bytes(4096)))
    else:
        p.cut = c.integer(0, max(0, total - 1))


def m_value(p: Parts, c: Chooser) -> None:
    """Replace one value anywhere in the header by a hostile or nearby value."""
    containers = _dicts_and_lists(p.header, [])
    if not containers:
        p.header = hostile(c)
        return
    node = pick(c, containers)
    keys = list(node) if isinstance(node, dict) else list(range(len(node)))
    if not keys:
        return
    key = pick(c, keys)
    old = node[key]
    if isinstance(old, int) and not isinstance(old, bool) and c.integer(0, 1):
        node[key] = pick(c, (old + 1, old - 1, old * 2, old // 2, -old, old + 2**32, float(old)))
    else:
        node[key] = hostile(c)


def m_delete_key(p: Parts, c: Chooser) -> None:
    dicts = [d for d in _dicts_and_lists(p.header, []) if isinstance(d, dict) and d]
    if dicts:
        d = pick(c, dicts)
        del d[pick(c, list(d))]


def m_add_key(p: Parts, c: Chooser) -> None:
    dicts = [d for d in _dicts_and_lists(p.header, []) if isinstance(d, dict)]
    if dicts:
        pick(c, dicts)[pick(c, ("extra", "wire", "scale", "enc", "x" * 300))] = hostile(c)


def m_dtype(p: Parts, c: Chooser) -> None:
    targets = [(s, "dtype") for s in _segments(p)] + [(t, k) for t in _tensors(p) for k in ("dtype", "wire") if k in t]
    if isinstance(p.header, dict):
        targets.append((p.header, "dtype"))
    if targets:
        d, k = pick(c, targets)
        d[k] = pick(c, DTYPE_LABELS)


def m_label(p: Parts, c: Chooser) -> None:
    """Relabel a segment's filter or codec; the body crc still matches (only raw_crc32 can tell)."""
    segs = _segments(p)
    if not segs:
        return
    s = pick(c, segs)
    if c.integer(0, 1):
        s["filter"] = pick(c, FILTER_LABELS)
    else:
        s["codec"] = pick(c, CODEC_LABELS)
        if c.integer(0, 1) and isinstance(p.header, dict):
            p.header["codec"] = s["codec"]


def m_crc(p: Parts, c: Chooser) -> None:
    segs = _segments(p)
    if segs:
        s = pick(c, segs)
        k = pick(c, ("crc32", "raw_crc32"))
        v = s.get(k, 0)
        s[k] = pick(c, ((v ^ 1) if isinstance(v, int) else 1, -1, 2**32, "0"))


def m_ref(p: Parts, c: Chooser) -> None:
    """Move a tensor's byte reference: other segment, shifted, resized, or onto another tensor."""
    ts = [t for t in _tensors(p) if isinstance(t.get("data"), list) and len(t["data"]) == 3]
    if not ts:
        return
    t = pick(c, ts)
    key = "scale" if "scale" in t and c.integer(0, 1) else "data"
    ref = t[key]
    if not (isinstance(ref, list) and len(ref) == 3):
        return
    ref = list(ref)
    which = c.integer(0, 3)
    if which == 0:
        ref[0] = pick(c, (ref[0] + 1, ref[0] - 1, 0, 99))
    elif which == 1:
        ref[1] = pick(c, (ref[1] + 1, ref[1] - 1, ref[1] + 2, 0, ref[1] + 10**9))
    elif which == 2:
        ref[2] = pick(c, (ref[2] + 1, ref[2] - 1, ref[2] * 2, 0, 2**40))
    else:
        other = pick(c, ts)
        if isinstance(other.get("data"), list):
            ref = list(other["data"])  # the same bytes twice: an overlap
    t[key] = ref


def m_shape(p: Parts, c: Chooser) -> None:
    ts = [t for t in _tensors(p) if isinstance(t.get("shape"), list)]
    if not ts:
        return
    t = pick(c, ts)
    shape = list(t["shape"])
    which = c.integer(0, 3)
    if which == 0 and shape:
        shape[c.integer(0, len(shape) - 1)] = pick(c, (128.5, -1, True, "8", None, 2**48 + 1, 2**62))
    elif which == 1:
        shape.append(pick(c, (1, 2, 0)))
    elif which == 2 and shape:
        shape = shape[:-1] if c.integer(0, 1) else list(reversed(shape))
    else:
        shape = hostile(c, ([], [0], [2**20, 2**20], [1] * 40))
    t["shape"] = shape


def m_entries(p: Parts, c: Chooser) -> None:
    """Duplicate, drop or reorder tensor entries or segments (with or without their bodies)."""
    if not isinstance(p.header, dict):
        return
    which = c.integer(0, 4)
    ts, segs = p.header.get("tensors"), p.header.get("segments")
    if which == 0 and isinstance(ts, list) and ts:
        ts.append(copy.deepcopy(pick(c, ts)))
    elif which == 1 and isinstance(ts, list) and ts:
        ts.pop(c.integer(0, len(ts) - 1))
    elif which == 2 and isinstance(segs, list) and segs:
        i = c.integer(0, len(segs) - 1)
        segs.append(copy.deepcopy(segs[i]))
        if c.integer(0, 1) and i < len(p.bodies):
            p.bodies.append(p.bodies[i])
    elif which == 3 and isinstance(segs, list) and len(segs) > 1:
        segs.reverse()
        if c.integer(0, 1):
            p.bodies.reverse()
    elif which == 4 and isinstance(segs, list):  # an extra segment nobody references
        body = zlib.compress(bytes(64))
        codec = p.header.get("codec", "zlib")
        segs.append({"dtype": "uint8", "filter": "none", "codec": codec, "raw": 64, "size": len(body),
                     "crc32": zlib.crc32(body), "raw_crc32": zlib.crc32(bytes(64))})
        p.bodies.append(body)


def m_kind(p: Parts, c: Chooser) -> None:
    if isinstance(p.header, dict):
        p.header["kind"] = pick(c, ("weights", "delta", "Delta", "update"))
        if c.integer(0, 1):
            for t in _tensors(p):
                t["enc"] = pick(c, ("raw", "q8", "q4"))
                break


def m_body(p: Parts, c: Chooser) -> None:
    """Flip bits in a body; with a fixed-up crc the damage reaches the codec and filter."""
    if not p.bodies:
        return
    i = c.integer(0, len(p.bodies) - 1)
    body = bytearray(p.bodies[i])
    if body:
        for _ in range(c.integer(1, 3)):
            body[c.integer(0, len(body) - 1)] ^= 1 << c.integer(0, 7)
    else:
        body += b"\x01"
    p.bodies[i] = bytes(body)
    if c.integer(0, 2):
        reseal(p, i)


def m_bomb(p: Parts, c: Chooser) -> None:
    """Replace a body by a bomb of the payload's codec; optionally declare its full size
    consistently (one tensor covering it, the segment's other tensors dropped)."""
    segs = _segments(p)
    codec = p.header.get("codec") if isinstance(p.header, dict) else None
    if not segs or not p.bodies or codec not in compression.available_codecs() or codec == "none":
        return
    i = c.integer(0, min(len(segs), len(p.bodies)) - 1)
    s = segs[i]
    if codec == "zstd":
        n = pick(c, (1 << 20, 1 << 24, 1 << 32))
        p.bodies[i] = zstd_rle_bomb(n, content_size=bool(c.integer(0, 1)))
    else:
        n = pick(c, (1 << 20, 1 << 24))
        p.bodies[i] = codec_bomb(codec, n)
    s["filter"] = "none"
    reseal(p, i)
    if c.integer(0, 1):
        s["raw"] = n
        s["raw_crc32"] = zlib.crc32(bytes(n)) if n <= 1 << 24 else 0
        mine = [t for t in _tensors(p) if isinstance(t.get("data"), list) and t["data"][:1] == [i]]
        if mine and isinstance(p.header.get("tensors"), list):
            keep = mine[0]
            p.header["tensors"] = [t for t in p.header["tensors"] if t is keep or t not in mine]
            keep["enc"], keep["data"] = "raw", [i, 0, n]
            keep.pop("scale", None)
            wire_dtype = str(s.get("dtype"))
            keep["wire"] = keep["dtype"] = wire_dtype
            keep["shape"] = [n // wire.ITEMSIZE.get(wire_dtype, 1)]


def m_deep_json(p: Parts, c: Chooser) -> None:
    depth = pick(c, (9, 64, 1000, 100_000))
    if c.integer(0, 1) or not isinstance(p.header, dict):
        p.header_bytes = b"[" * depth + b"]" * depth
    else:
        p.header["meta"] = {"x": json.loads("[" * min(depth, 500) + "]" * min(depth, 500))}


def m_raw_json(p: Parts, c: Chooser) -> None:
    hb = json.dumps(p.header).encode()
    p.header_bytes = pick(c, (
        b"", b"null", b"[]", b"42", b'"FCW1"', b"{", b"\xff\xfe{}", hb[: len(hb) // 2],
        hb.replace(b'"version": 2', b'"version": 2, "version": 2'),
        hb.replace(b'"version": 2', b'"version": NaN'), hb.replace(b'"version": 2', b'"version": 2.0'),
        hb + b" ", b" " + hb, hb.replace(b"[", b"[ ", 3), b'{"a":"\\' + b'"[' * 5000 + b'"}',
    ))


MUTATIONS: tuple[Callable[[Parts, Chooser], None], ...] = (
    m_prefix, m_header_len, m_truncate, m_value, m_value, m_delete_key, m_add_key, m_dtype, m_label,
    m_label, m_crc, m_ref, m_ref, m_shape, m_entries, m_kind, m_body, m_bomb, m_deep_json, m_raw_json,
)


def mutate(base: bytes, c: Chooser) -> bytes:
    """One to three mutations of a valid payload."""
    p = split_payload(base)
    for _ in range(c.integer(1, 3)):
        pick(c, MUTATIONS)(p, c)
    return assemble(p)


# ------------------------------------------------------------------ entry points
@dataclass
class HostileTarget:
    """A model to attack: its state (the payloads are of it) and the bases built from it."""

    state: StateDict
    bases: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.bases:
            self.bases = base_payloads(self.state)


def hostile_payloads(target: HostileTarget | None = None) -> st.SearchStrategy[bytes]:
    """A hypothesis strategy of hostile payloads of ``target`` (default: :func:`small_state`)."""
    tgt = target or HostileTarget(small_state())

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        # Hypothesis draws the structure (base, which mutations); each mutation's details come
        # from a drawn seed: few draws per example keep 10,000 examples fast, and shrinking
        # still reduces a failure to one base and its fewest, simplest mutations.
        base = draw(st.integers(0, len(tgt.bases) - 1))
        steps = draw(st.lists(st.tuples(st.integers(0, len(MUTATIONS) - 1), st.integers(0, 2**32 - 1)),
                              min_size=1, max_size=3))
        p = split_payload(tgt.bases[base])
        for which, seed in steps:
            MUTATIONS[which](p, RandomChooser(random.Random(seed)))
        return assemble(p)

    return build()


def hostile_corpus(n: int, seed: int = 0, state: StateDict | None = None) -> list[bytes]:
    """``n`` deterministic hostile payloads of ``state`` (default :func:`small_state`).

    Deliver them where a client would upload its update for that model; decode them with the
    model as ``expected`` and the state as ``reference`` (delta payloads are updates of it).
    """
    tgt = HostileTarget(state if state is not None else small_state())
    c = RandomChooser(random.Random(seed))
    return [mutate(pick(c, tgt.bases), c) for _ in range(n)]
