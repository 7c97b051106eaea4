"""The wire decoder against hostile input: every refusal is a PayloadError (issue 11, items 3-5)."""
from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from typing import Any

import pytest
import torch

from fedcore import wire
from fedcore.errors import PayloadError, PayloadTooLargeError
from hostile_payloads import Parts, assemble, perturbed, reseal, small_state, split_payload, zstd_rle_bomb

STATE = small_state()
SPEC = wire.spec_of(STATE)


def _parts(**kw: Any) -> Parts:
    return split_payload(wire.encode_state(STATE, **kw))


def _refused(p: Parts | bytes, match: str | None = None, err: type[Exception] = PayloadError, **kw: Any) -> None:
    data = assemble(p) if isinstance(p, Parts) else p
    with pytest.raises(err, match=match):
        wire.decode_state(data, **kw)


def _seg_of(p: Parts, dtype: str) -> int:
    return next(i for i, s in enumerate(p.header["segments"]) if s["dtype"] == dtype)


def _tensor(p: Parts, name: str) -> dict[str, Any]:
    return next(t for t in p.header["tensors"] if t["name"] == name)


# ------------------------------------------------------------------ prefix
def test_version_1_is_refused_with_a_clear_message() -> None:
    p = _parts()
    p.version = 1
    _refused(p, "^wire format version 1 is no longer accepted: ")
    p = _parts()
    p.header["version"] = 1
    _refused(p, "header version 1 differs from the prefix version 2")


@pytest.mark.parametrize("field,value", [("flags", 1), ("reserved", 1), ("version", 3)])
def test_prefix_fields_must_be_exact(field: str, value: int) -> None:
    p = _parts()
    setattr(p, field, value)
    _refused(p)


# ------------------------------------------------------------------ schema
def _drop(key: str, where: str) -> Callable[[dict[str, Any]], None]:
    def edit(h: dict[str, Any]) -> None:
        del (h["tensors"][0] if where == "tensor" else h["segments"][0])[key]
    return edit


MALFORMED: dict[str, Callable[[dict[str, Any]], None]] = {
    "tensor without name": _drop("name", "tensor"),
    "tensor without wire": _drop("wire", "tensor"),
    "tensor without data": _drop("data", "tensor"),
    "tensor without enc": _drop("enc", "tensor"),
    "segment without filter": _drop("filter", "segment"),
    "segment without codec": _drop("codec", "segment"),
    "segment without crc32": _drop("crc32", "segment"),
    "segment without raw_crc32": _drop("raw_crc32", "segment"),
    "unknown wire dtype": lambda h: h["tensors"][0].update(wire="float8_e4m3"),
    "unknown segment dtype": lambda h: h["segments"][0].update(dtype="float8_e4m3"),
    "unknown codec": lambda h: h["segments"][0].update(codec="lz4_raw"),
    "unknown filter": lambda h: h["segments"][0].update(filter="bitshuffle"),
    "non-integer shape": lambda h: h["tensors"][0].update(shape=[8.5, 3, 3, 3]),
    "boolean shape": lambda h: h["tensors"][0].update(shape=[True, 3, 3, 3]),
    "string offset": lambda h: h["tensors"][0].update(data=[0, "0", 864]),
    "negative offset": lambda h: h["tensors"][0].update(data=[0, -4, 864]),
    "short data ref": lambda h: h["tensors"][0].update(data=[0, 0]),
    "unknown field": lambda h: h["segments"][0].update(extra=1),
    "unknown kind": lambda h: h.update(kind="update"),
    "tensors not a list": lambda h: h.update(tensors={"a": 1}),
    "meta nested": lambda h: h.update(meta={"a": {"b": 1}}),
    "long name": lambda h: h["tensors"][0].update(name="x" * 5000),
    "duplicate name": lambda h: h["tensors"].append(dict(h["tensors"][0])),
    "float version": lambda h: h.update(version=2.0),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_header_is_a_payload_error(case: str) -> None:
    p = _parts()
    MALFORMED[case](p.header)
    _refused(p, "malformed header")
    _refused(p, "malformed header", expected=SPEC)


@pytest.mark.parametrize("text", [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000])
def test_deep_json_header_is_refused_before_parsing(text: bytes) -> None:
    p = _parts()
    p.header_bytes = text
    _refused(p, "nested 100000 deep")


def test_json_oddities_are_refused() -> None:
    for text in (b"\xff{}", b'{"version": NaN}', b"[2]", b"{", b'{"version": 2, "version": 2}',
                 b'\xef\xbb\xbf{"version": 2}'):
        p = _parts()
        p.header_bytes = text
        _refused(p, "malformed header")


def test_non_finite_meta_number_is_refused() -> None:
    p = _parts(meta={"x": 1.5})
    p.header_bytes = json.dumps(p.header).replace('"x": 1.5', '"x": 1e999').encode()
    _refused(p, "out of range")


def test_json_depth_ignores_brackets_in_strings() -> None:
    assert wire.json_depth(b'{"a": "[[[{{{", "b": [1, [2]]}') == 3
    assert wire.json_depth(b'["\\"[[[", "\\\\", [[]]]') == 3  # escaped quote, escaped backslash
    assert wire.json_depth(b"") == 0
    assert wire.json_depth(b'"[[[') == 0


# ------------------------------------------------------------------ layout
def test_overlapping_tensors_are_refused() -> None:
    p = _parts(dtype="fp32")
    _tensor(p, "conv.bias")["data"] = list(_tensor(p, "conv.weight")["data"][:2]) + [32]
    _refused(p, "malformed header")


def test_gap_and_short_segment_are_refused() -> None:
    p = _parts(dtype="fp32")
    seg = _seg_of(p, "float32")
    p.header["segments"][seg]["raw"] += 4  # 4 bytes nobody owns at the end
    _refused(p, "declares")
    p = _parts(dtype="fp32")
    t = _tensor(p, "conv.bias")
    t["data"][1] += 4  # a gap before it, and it runs into the next tensor
    _refused(p, "malformed header")


def test_size_must_match_shape() -> None:
    p = _parts()
    t = _tensor(p, "fc.bias")
    t["shape"] = [9]
    _refused(p, "its shape needs")


def test_extra_unreferenced_segment_is_refused() -> None:
    p = _parts()
    body = zlib.compress(bytes(8))
    p.header["segments"].append({"dtype": "uint8", "filter": "none", "codec": "zstd", "raw": 8, "size": len(body),
                                 "crc32": zlib.crc32(body), "raw_crc32": zlib.crc32(bytes(8))})
    p.bodies.append(body)
    _refused(p, "not used by any tensor")


def test_wire_dtype_rules() -> None:
    p = _parts(dtype="bf16")
    _tensor(p, "ids")["wire"] = "float32"  # an int32 tensor cannot travel as float
    _refused(p, "must travel as int32")
    p = _parts(dtype="bf16")
    _tensor(p, "conv.weight")["wire"] = "float16"  # neither the header's cast dtype nor its own
    _refused(p, "cannot travel as float16")


def test_delta_rules() -> None:
    update = perturbed(STATE)
    p = split_payload(wire.encode_state(update, reference=STATE, quantize_update=True))
    out = wire.decode_state(assemble(p), reference=STATE, expected=SPEC)
    assert torch.equal(out["bn.running_mean"], update["bn.running_mean"])  # raw in a delta = absolute
    plain = _parts()
    plain.header["kind"] = "delta"
    _refused(plain, "no q8 tensor", reference=STATE)
    p.header["kind"] = "weights"
    _refused(p, "only allowed in a delta", reference=STATE)


def test_relabelled_filter_is_caught_by_the_raw_checksum() -> None:
    """split → shuffle keeps the body crc right; only raw_crc32 tells the bytes are garbage now."""
    p = _parts(dtype="fp32", filter="split")
    seg = _seg_of(p, "float32")
    p.header["segments"][seg]["filter"] = "shuffle"
    _refused(p, "raw checksum mismatch")
    p = _parts(dtype="fp32", filter="split")
    p.header["segments"][seg]["raw_crc32"] ^= 1
    _refused(p, "raw checksum mismatch")


def test_bool_bytes_must_be_0_or_1() -> None:
    p = _parts(codec="none", filter="none")
    seg = _seg_of(p, "bool")
    p.bodies[seg] = bytes([0, 1, 2, 0, 1])[: len(p.bodies[seg])]
    p.header["segments"][seg]["raw_crc32"] = zlib.crc32(p.bodies[seg])
    reseal(p, seg)
    _refused(p, "bool")


# ------------------------------------------------------------------ bounded decoding
def _declare_big(p: Parts, n: int) -> Parts:
    """Make the float32 segment one tensor of n bytes, body a zstd bomb: consistent, huge."""
    seg = _seg_of(p, "float32")
    mine = [t for t in p.header["tensors"] if t["data"][0] == seg]
    keep = mine[0]
    p.header["tensors"] = [t for t in p.header["tensors"] if t is keep or t not in mine]
    keep.update(shape=[n // 4], data=[seg, 0, n])
    s = p.header["segments"][seg]
    s.update(raw=n, filter="none", raw_crc32=0)
    p.bodies[seg] = zstd_rle_bomb(n)
    reseal(p, seg)
    return p


def test_bomb_is_refused_against_the_model_before_decompressing() -> None:
    p = _declare_big(_parts(dtype="fp32"), 4 * 2**30)
    data = assemble(p)
    assert len(data) < 140_000
    _refused(data, "another model", expected=SPEC)
    _refused(data, "inflates to", PayloadTooLargeError, max_size=2**30)


def test_declared_raw_size_must_equal_the_models() -> None:
    """Shapes right, but the segment claims more bytes than the model's tensors need."""
    p = _parts(dtype="fp32")
    seg = _seg_of(p, "float32")
    p.header["segments"][seg]["raw"] += 4
    with pytest.raises(PayloadError):
        wire.decode_state(assemble(p), expected=SPEC)


def test_body_that_inflates_past_its_declared_size_is_stopped() -> None:
    """A consistent header whose body is a bomb: the codec stops at the declared raw size."""
    for content_size in (True, False):
        p = _parts(dtype="fp32")
        seg = _seg_of(p, "float32")
        p.bodies[seg] = zstd_rle_bomb(2**30, content_size=content_size)
        reseal(p, seg)
        if content_size:  # refused from the frame header, before any allocation
            _refused(p, "exceeds", PayloadTooLargeError, expected=SPEC)
        else:  # decoded into a buffer of the declared size, which it overruns
            _refused(p, "does not end within", expected=SPEC)


def test_valid_payloads_still_decode_after_a_header_round_trip() -> None:
    """split_payload/assemble are faithful: an untouched payload decodes bit-exactly."""
    for kw in ({}, {"codec": "none", "filter": "none"}, {"dtype": "fp16", "codec": "lz4"}):
        data = wire.encode_state(STATE, **kw)  # type: ignore[arg-type]
        p = split_payload(data)
        assert json.loads(json.dumps(p.header)) == p.header
        out = wire.decode_state(assemble(p), expected=SPEC)
        ref = wire.decode_state(data, expected=SPEC)
        assert all(torch.equal(out[k], ref[k]) for k in ref)
