"""The wire form of secure-aggregation messages: versioned, bounded, no pickle.

    frame  = b"FSA" version(u8 = 1) kind(u8) header_len(u32 BE) header blob
    header = UTF-8 JSON object (bytes as base64, integer keys as decimal strings)
    blob   = only in MASKED: the masked vector, little-endian uint32

Shamir shares travel as decimal strings of field elements (< 2^521 − 1). Every decoder checks
the magic, version, kind, lengths and field types and raises :class:`SecAggError` on anything
else, so a transport can hand it untrusted bytes.
"""
from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np

from fedcore.secagg import shamir
from fedcore.secagg.params import SecAggError, SecAggMessageError, SecAggParams
from fedcore.secagg.protocol import (
    AdvertiseKeys,
    KeyBook,
    MaskedInput,
    ShareInbox,
    ShareKeys,
    Survivors,
    UnmaskShares,
)

MAGIC = b"FSA"
VERSION = 1
_HEAD = struct.Struct(">3sBBI")
MAX_HEADER_BYTES = 16 * 1024 * 1024


class Kind(IntEnum):
    CONTEXT = 1  # server → client: session, ids, this client's id, parameters, vector length
    ADVERTISE = 2
    KEYBOOK = 3
    SHARES = 4
    INBOX = 5
    MASKED = 6
    SURVIVORS = 7
    UNMASK = 8
    DONE = 9  # server → client: the unmasking shares were taken
    PENDING = 10  # server → client: not ready yet, ask again (long-poll ended)
    FAILED = 11  # server → client: the round's secure aggregation failed (reason in header)


@dataclass(frozen=True)
class Context:
    """What a client needs to take part: the public round setting and its own id."""

    session: bytes
    ids: tuple[int, ...]
    me: int
    params: SecAggParams
    length: int


def frame(kind: Kind, header: Mapping[str, Any], blob: bytes = b"") -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return _HEAD.pack(MAGIC, VERSION, int(kind), len(head)) + head + blob


def unframe(data: bytes, max_bytes: int) -> tuple[Kind, dict[str, Any], bytes]:
    if len(data) > max_bytes:
        raise SecAggMessageError(f"secagg message of {len(data)} bytes is over the {max_bytes}-byte limit")
    if len(data) < _HEAD.size:
        raise SecAggMessageError("secagg message is too short")
    magic, version, kind, hlen = _HEAD.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise SecAggMessageError(f"not a secagg v{VERSION} message")
    if hlen > MAX_HEADER_BYTES or _HEAD.size + hlen > len(data):
        raise SecAggMessageError("secagg header length is out of range")
    try:
        k = Kind(kind)
        header = json.loads(data[_HEAD.size:_HEAD.size + hlen])
    except (ValueError, UnicodeDecodeError):
        raise SecAggMessageError("malformed secagg header") from None
    if not isinstance(header, dict):
        raise SecAggMessageError("a secagg header is a JSON object")
    return k, header, data[_HEAD.size + hlen:]


def expect(data: bytes, kind: Kind, max_bytes: int) -> tuple[dict[str, Any], bytes]:
    k, header, blob = unframe(data, max_bytes)
    if k is Kind.FAILED:
        raise SecAggError(f"secure aggregation failed on the server: {header.get('reason', '?')}")
    if k is not kind:
        raise SecAggMessageError(f"expected a secagg {kind.name} message, got {k.name}")
    return header, blob


# ---------------------------------------------------------------------- field helpers
def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(v: Any, size: int | None = None) -> bytes:
    if not isinstance(v, str) or len(v) > 4 * MAX_HEADER_BYTES:
        raise SecAggMessageError("expected a base64 string")
    try:
        out = base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        raise SecAggMessageError("malformed base64 in a secagg message") from None
    if size is not None and len(out) != size:
        raise SecAggMessageError(f"expected {size} bytes, got {len(out)}")
    return out


def _int(v: Any, lo: int = 1, hi: int = (1 << 31) - 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise SecAggMessageError("expected an integer")
    try:
        n = int(v)
    except ValueError:
        raise SecAggMessageError("expected an integer") from None
    if not lo <= n <= hi or (isinstance(v, str) and len(v) > 12):
        raise SecAggMessageError(f"integer {n} out of range")
    return n


def _share(v: Any) -> int:
    if not isinstance(v, str) or not v.isdigit() or len(v) > 160:
        raise SecAggMessageError("a share is a decimal string")
    y = int(v)
    if y >= shamir.PRIME:
        raise SecAggMessageError("a share is out of the field")
    return y


def _dict(v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise SecAggMessageError("expected a JSON object")
    return v


# ---------------------------------------------------------------------- messages
def encode_context(c: Context) -> bytes:
    p = c.params
    return frame(Kind.CONTEXT, {"session": _b64(c.session), "ids": list(c.ids), "me": c.me, "length": c.length,
                                "params": {"bits": p.bits, "clip": p.clip, "threshold": p.threshold,
                                           "neighbours": p.neighbours, "rounding": p.rounding}})


def decode_context(data: bytes, max_bytes: int) -> Context:
    h, _ = expect(data, Kind.CONTEXT, max_bytes)
    p = _dict(h.get("params"))
    try:
        params = SecAggParams(bits=_int(p.get("bits"), 1, 31), clip=float(p.get("clip", 0)),
                              threshold=None if p.get("threshold") is None else _int(p.get("threshold")),
                              neighbours=None if p.get("neighbours") is None else _int(p.get("neighbours")),
                              rounding=str(p.get("rounding")))
    except (TypeError, ValueError) as exc:
        raise SecAggMessageError(f"bad secagg parameters: {exc}") from None
    ids = h.get("ids")
    if not isinstance(ids, list):
        raise SecAggMessageError("ids must be a list")
    return Context(_unb64(h.get("session")), tuple(_int(i) for i in ids), _int(h.get("me")), params,
                   _int(h.get("length"), 0, 1 << 31))


def encode_advertise(m: AdvertiseKeys) -> bytes:
    return frame(Kind.ADVERTISE, {"sender": m.sender, "c_pk": _b64(m.c_pk), "s_pk": _b64(m.s_pk)})


def _advertise(h: Mapping[str, Any]) -> AdvertiseKeys:
    return AdvertiseKeys(_int(h.get("sender")), _unb64(h.get("c_pk"), 32), _unb64(h.get("s_pk"), 32))


def decode_advertise(data: bytes, max_bytes: int) -> AdvertiseKeys:
    return _advertise(expect(data, Kind.ADVERTISE, max_bytes)[0])


def encode_keybook(m: KeyBook) -> bytes:
    return frame(Kind.KEYBOOK, {"keys": [{"sender": a.sender, "c_pk": _b64(a.c_pk), "s_pk": _b64(a.s_pk)}
                                         for a in m.keys.values()]})


def decode_keybook(data: bytes, max_bytes: int) -> KeyBook:
    h, _ = expect(data, Kind.KEYBOOK, max_bytes)
    keys = h.get("keys")
    if not isinstance(keys, list):
        raise SecAggMessageError("keys must be a list")
    ads = [_advertise(_dict(k)) for k in keys]
    return KeyBook({a.sender: a for a in ads})


def encode_shares(m: ShareKeys) -> bytes:
    return frame(Kind.SHARES, {"sender": m.sender, "ct": {str(j): _b64(c) for j, c in m.ciphertexts.items()}})


def decode_shares(data: bytes, max_bytes: int) -> ShareKeys:
    h, _ = expect(data, Kind.SHARES, max_bytes)
    return ShareKeys(_int(h.get("sender")), {_int(j): _unb64(c) for j, c in _dict(h.get("ct")).items()})


def encode_inbox(m: ShareInbox) -> bytes:
    return frame(Kind.INBOX, {"u2": list(m.u2), "ct": {str(i): _b64(c) for i, c in m.ciphertexts.items()}})


def decode_inbox(data: bytes, max_bytes: int) -> ShareInbox:
    h, _ = expect(data, Kind.INBOX, max_bytes)
    u2 = h.get("u2")
    if not isinstance(u2, list):
        raise SecAggMessageError("u2 must be a list")
    return ShareInbox(tuple(_int(i) for i in u2), {_int(i): _unb64(c) for i, c in _dict(h.get("ct")).items()})


def encode_masked(m: MaskedInput) -> bytes:
    return frame(Kind.MASKED, {"sender": m.sender, "length": int(m.vector.size)}, m.vector.astype("<u4").tobytes())


def decode_masked(data: bytes, max_bytes: int) -> MaskedInput:
    h, blob = expect(data, Kind.MASKED, max_bytes)
    length = _int(h.get("length"), 0, 1 << 31)
    if len(blob) != 4 * length:
        raise SecAggMessageError(f"masked input declares {length} values but carries {len(blob)} bytes")
    return MaskedInput(_int(h.get("sender")), np.frombuffer(blob, dtype="<u4").astype(np.uint32))


def encode_survivors(m: Survivors) -> bytes:
    return frame(Kind.SURVIVORS, {"u3": list(m.u3)})


def decode_survivors(data: bytes, max_bytes: int) -> Survivors:
    h, _ = expect(data, Kind.SURVIVORS, max_bytes)
    u3 = h.get("u3")
    if not isinstance(u3, list):
        raise SecAggMessageError("u3 must be a list")
    return Survivors(tuple(_int(i) for i in u3))


def encode_unmask(m: UnmaskShares) -> bytes:
    return frame(Kind.UNMASK, {"sender": m.sender, "b": {str(o): str(y) for o, y in m.self_mask.items()},
                               "s": {str(o): str(y) for o, y in m.mask_key.items()}})


def decode_unmask(data: bytes, max_bytes: int) -> UnmaskShares:
    h, _ = expect(data, Kind.UNMASK, max_bytes)
    return UnmaskShares(_int(h.get("sender")), {_int(o): _share(y) for o, y in _dict(h.get("b")).items()},
                        {_int(o): _share(y) for o, y in _dict(h.get("s")).items()})


def simple(kind: Kind, **header: Any) -> bytes:
    """A DONE, PENDING or FAILED reply."""
    return frame(kind, header)
