"""Round-trip and rejection tests of the parameter wire format (fedcore.wire)."""
from __future__ import annotations

import json
import struct
import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import compression
from fedcore import wire
from fedcore.errors import PayloadError, PayloadTooLargeError
from fedcore.app.models import build_model
from hostile_payloads import assemble, split_payload

CODECS = compression.available_codecs()
DTYPES = ["fp32", "bf16", "fp16"]


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(8, 3, 3, 3, generator=g) * 0.1,
        "fc.bias": torch.randn(10, generator=g),
        "bn.running_mean": torch.randn(8, generator=g),
        "bn.running_var": torch.rand(8, generator=g) + 0.5,
        "bn.num_batches_tracked": torch.tensor(17),
        "mask": torch.rand(5, generator=g) > 0.5,
        "ids": torch.randint(-1000, 1000, (4, 2), generator=g, dtype=torch.int32),
        "scalar": torch.tensor(3.25),
        "empty": torch.empty(0, 4),
    }


def _assert_matches(out: dict[str, torch.Tensor], src: dict[str, torch.Tensor], dtype: str) -> None:
    assert list(out) == list(src)
    cast = wire.TORCH_DTYPES[wire.canonical_dtype(dtype)]
    for k, v in src.items():
        assert out[k].dtype == v.dtype and out[k].shape == v.shape, k
        if v.is_floating_point() and not wire.is_untrained(k):
            torch.testing.assert_close(out[k], v.to(cast).to(v.dtype), rtol=0, atol=0)  # exactly the cast value
        else:
            assert torch.equal(out[k], v), k


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_roundtrip_every_dtype_and_codec(codec: str, dtype: str) -> None:
    src = _state()
    data = wire.encode_state(src, dtype=dtype, codec=codec, level=None)
    out = wire.decode_state(data, expected=wire.spec_of(src))
    _assert_matches(out, src, dtype)


def test_fp32_is_exact_and_bf16_within_rounding() -> None:
    src = build_model("digits_mlp").state_dict()
    out32 = wire.decode_state(wire.encode_state(src, dtype="fp32"))
    assert all(torch.equal(out32[k], src[k]) for k in src)
    out16 = wire.decode_state(wire.encode_state(src, dtype="bf16"))
    for k in src:
        rel = (out16[k] - src[k]).abs() / src[k].abs().clamp_min(1e-30)
        assert float(rel.max()) <= 2**-8, k  # bf16 keeps 8 significant bits


@st.composite
def state_dicts(draw: st.DrawFn) -> dict[str, torch.Tensor]:
    n = draw(st.integers(1, 6))
    out: dict[str, torch.Tensor] = {}
    for i in range(n):
        shape = tuple(draw(st.lists(st.integers(0, 5), min_size=0, max_size=3)))
        kind = draw(st.sampled_from(["float32", "float16", "bfloat16", "float64", "int64", "uint8", "bool"]))
        seed = draw(st.integers(0, 2**31 - 1))
        g = torch.Generator().manual_seed(seed)
        scale = draw(st.sampled_from([1e-6, 1.0, 1e4]))
        base = torch.randn(shape, generator=g, dtype=torch.float64) * scale
        dt = wire.TORCH_DTYPES[kind]
        out[f"layer{i}.{kind}"] = (base > 0) if dt is torch.bool else base.to(dt)
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(src=state_dicts(), dtype=st.sampled_from(DTYPES), codec=st.sampled_from(CODECS))
def test_property_random_state_dicts(src: dict[str, torch.Tensor], dtype: str, codec: str) -> None:
    out = wire.decode_state(wire.encode_state(src, dtype=dtype, codec=codec), expected=wire.spec_of(src))
    _assert_matches(out, src, dtype)


# ------------------------------------------------------------------ rejection
def test_truncated_payload_raises_typed_error() -> None:
    data = wire.encode_state(_state())
    for cut in (0, 5, 20, len(data) // 2, len(data) - 1):
        with pytest.raises(PayloadError):
            wire.decode_state(data[:cut])


def test_corrupt_body_and_header_raise_typed_error() -> None:
    data = bytearray(wire.encode_state(_state()))
    body = bytearray(data)
    body[-3] ^= 0xFF
    with pytest.raises(PayloadError, match="checksum"):
        wire.decode_state(bytes(body))
    head = bytearray(data)
    head[30] ^= 0x01
    with pytest.raises(PayloadError):
        wire.decode_state(bytes(head))
    with pytest.raises(PayloadError, match="not a fedcore payload"):
        wire.decode_state(b"PK\x03\x04" + bytes(data[4:]))
    with pytest.raises(PayloadError, match="trailing"):
        wire.decode_state(bytes(data) + b"junk")


def test_forged_header_pointing_outside_segment_is_refused() -> None:
    parts = split_payload(wire.encode_state(_state()))
    parts.header["tensors"][0]["data"][2] = 10**9
    with pytest.raises(PayloadError, match="conv.weight"):
        wire.decode_state(assemble(parts))


def test_inflation_over_limit_is_refused_before_decompressing() -> None:
    big = {"w": torch.zeros(1_000_000)}  # compresses to almost nothing: a small bomb
    data = wire.encode_state(big, dtype="fp32")
    assert len(data) < 10_000
    with pytest.raises(PayloadTooLargeError):
        wire.decode_state(data, max_size=1_000_000)


def test_wrong_model_is_refused() -> None:
    src = _state()
    data = wire.encode_state(src)
    other = dict(src)
    other["conv.weight"] = torch.zeros(4, 3, 3, 3)
    with pytest.raises(PayloadError, match="conv.weight"):
        wire.decode_state(data, expected=wire.spec_of(other))
    fewer = {k: v for k, v in src.items() if k != "fc.bias"}
    with pytest.raises(PayloadError, match="another model"):
        wire.decode_state(data, expected=wire.spec_of(fewer))


def test_no_pickle_on_the_network_path() -> None:
    """The header is JSON and bodies are raw arrays: a pickle opcode stream is just refused."""
    import pickle

    with pytest.raises(PayloadError):
        wire.decode_state(pickle.dumps(_state()))


# ------------------------------------------------------------------ update codec
def test_quantised_update_roundtrip_and_exact_buffers() -> None:
    ref = build_model("cifar_cnn", "cifar10").state_dict()
    g = torch.Generator().manual_seed(1)
    local = {k: (v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v + 1) for k, v in ref.items()}
    data = wire.encode_state(local, reference=ref, quantize_update=True)
    assert wire.payload_info(data).kind == "delta"
    with pytest.raises(PayloadError, match="reference"):
        wire.decode_state(data)
    out = wire.decode_state(data, reference=ref, expected=wire.spec_of(ref))
    num = sum(float(((out[k] - local[k]) ** 2).sum()) for k in ref if not wire.is_untrained(k) and ref[k].is_floating_point())
    den = sum(float(((local[k] - ref[k]) ** 2).sum()) for k in ref if not wire.is_untrained(k) and ref[k].is_floating_point())
    assert (num / den) ** 0.5 < 0.02
    for k in ref:
        if wire.is_untrained(k):
            assert torch.equal(out[k], local[k]), k


def test_resnet18_bf16_zstd_wire_size_is_below_the_papers() -> None:
    sd = build_model("resnet18").state_dict()
    raw = sum(v.numel() * v.element_size() for v in sd.values())
    size = len(wire.encode_state(sd))
    print(f"\nResNet-18 (10 classes): raw {raw / 2**20:.2f} MiB -> bf16+zstd {size / 2**20:.2f} MiB "
          f"(paper: 16.72 MiB)")
    assert size / 2**20 <= 16.72


def test_as_sent_keeps_wire_dtype_without_copying() -> None:
    src = _state()
    out = wire.decode_state(wire.encode_state(src, dtype="bf16"), as_sent=True)
    assert out["conv.weight"].dtype == torch.bfloat16
    assert out["bn.running_mean"].dtype == torch.float32  # untrained buffers travel exactly
    torch.testing.assert_close(out["conv.weight"].float(), src["conv.weight"].bfloat16().float())
    assert torch.equal(out["ids"], src["ids"])
