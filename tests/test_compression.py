"""Contract suite of the compression package: every codec, every filter x dtype, the quantiser."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import compression as C
from compression.codecs import Codec

CODECS = C.available_codecs()
DTYPES = list(C.DTYPES)
FILTERS = C.available_filters()


def _payloads() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    weights = rng.normal(0, 0.02, 50_000).astype(np.float32).tobytes()
    return {
        "empty": b"",
        "one": b"x",
        "random": os.urandom(10_000),
        "zeros": bytes(200_000),
        "weights": weights,
    }


PAYLOADS = _payloads()


# ---------------------------------------------------------------- codecs
@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("kind", list(PAYLOADS))
def test_codec_roundtrip(name: str, kind: str) -> None:
    codec = C.get_codec(name)
    data = PAYLOADS[kind]
    blob = codec.compress(data)
    assert isinstance(blob, bytes)
    assert codec.decompress(blob, max_size=len(data)) == data


@pytest.mark.parametrize("name", CODECS)
def test_codec_accepts_memoryview_and_levels(name: str) -> None:
    codec = C.get_codec(name)
    data = PAYLOADS["weights"]
    for level in getattr(codec, "bench_levels", (None,))[:2]:
        blob = codec.compress(memoryview(data), level)
        assert codec.decompress(memoryview(blob), max_size=len(data)) == data


@pytest.mark.parametrize("name", CODECS)
def test_codec_large_input(name: str) -> None:
    codec = C.get_codec(name)
    data = np.random.default_rng(1).integers(0, 4, 3 << 20, dtype=np.uint8).tobytes()
    level = {"lzma": 0, "brotli": 1, "bz2": 1, "gzip": 1, "zlib": 1}.get(name)
    blob = codec.compress(data, level)
    assert codec.decompress(blob, max_size=len(data)) == data


@pytest.mark.parametrize("name", CODECS)
def test_codec_limit(name: str) -> None:
    codec = C.get_codec(name)
    data = bytes(1_000_000)  # a small "bomb": 1 MB of zeros
    blob = codec.compress(data)
    with pytest.raises(C.DecompressionLimitError):
        codec.decompress(blob, max_size=len(data) - 1)
    with pytest.raises(C.DecompressionLimitError):
        codec.decompress(blob, max_size=1000)


@pytest.mark.parametrize("name", [n for n in CODECS if n != "none"])
def test_codec_corrupt(name: str) -> None:
    codec = C.get_codec(name)
    data = PAYLOADS["weights"]
    blob = codec.compress(data)
    for bad in (b"", b"not a compressed stream at all" * 3, blob[: len(blob) // 2], blob + b"junk"):
        with pytest.raises(C.CorruptDataError):
            codec.decompress(bad, max_size=10 * len(data))


@pytest.mark.parametrize("name", [n for n in CODECS if n != "none"])
def test_codec_bitflip_never_escapes(name: str) -> None:
    """Any damage gives CorruptDataError, the limit error or (rarely) other bytes — never a foreign exception."""
    codec = C.get_codec(name)
    data = PAYLOADS["weights"][:20_000]
    blob = bytearray(codec.compress(data))
    rng = np.random.default_rng(2)
    for _ in range(20):
        b = bytearray(blob)
        b[int(rng.integers(len(b)))] ^= 1 << int(rng.integers(8))
        try:
            codec.decompress(bytes(b), max_size=len(data))
        except C.CompressionError:
            pass


def test_unknown_codec() -> None:
    with pytest.raises(C.UnknownCodecError) as exc:
        C.get_codec("zip")
    assert "zstd" in str(exc.value) and isinstance(exc.value, C.CompressionError)
    with pytest.raises(C.UnknownCodecError):
        C.get_filter("nope")


def test_registry_lists_paper_codecs() -> None:
    for name in ("gzip", "zlib", "bz2", "lzma", "lz4", "brotli", "zstd", "snappy", "none"):
        assert name in CODECS


def test_register_custom_codec() -> None:
    class Rot(Codec):
        name = "test-rot"

        def compress(self, data, level=None):
            return bytes(b ^ 0x55 for b in bytes(data))

        def decompress(self, data, max_size):
            if len(data) > max_size:
                raise C.DecompressionLimitError("too big")
            return bytes(b ^ 0x55 for b in bytes(data))

    C.register_codec(Rot(), replace=True)
    assert C.get_codec("test-rot").decompress(C.get_codec("test-rot").compress(b"abc"), 3) == b"abc"
    with pytest.raises(ValueError):
        C.register_codec(Rot())
    with pytest.raises(TypeError):
        C.register_codec(object())  # type: ignore[arg-type]


def test_max_size_validated() -> None:
    with pytest.raises(ValueError):
        C.get_codec("zstd").decompress(C.get_codec("zstd").compress(b"a"), max_size=-1)


# ---------------------------------------------------------------- filters
def _array_bytes(dtype: str, n: int, seed: int = 0) -> bytes:
    k = C.DTYPES[dtype][0]
    return np.random.default_rng(seed).integers(0, 256, n * k, dtype=np.uint8).tobytes()


@pytest.mark.parametrize("fname", FILTERS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 1, 7, 1000])
def test_filter_roundtrip(fname: str, dtype: str, n: int) -> None:
    f = C.get_filter(fname)
    data = _array_bytes(dtype, n)
    enc = f.encode(data, dtype)
    assert isinstance(enc, bytes) and len(enc) == len(data)
    assert f.decode(enc, dtype) == data
    assert f.decode(memoryview(enc), dtype) == data


@settings(max_examples=60, deadline=None)
@given(
    fname=st.sampled_from(FILTERS),
    dtype=st.sampled_from(DTYPES),
    payload=st.binary(max_size=512),
)
def test_filter_roundtrip_property(fname: str, dtype: str, payload: bytes) -> None:
    k = C.DTYPES[dtype][0]
    data = payload[: len(payload) - len(payload) % k]
    f = C.get_filter(fname)
    assert f.decode(f.encode(data, dtype), dtype) == data


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), max_size=200))
def test_split_exact_on_special_floats(values: list[float]) -> None:
    data = np.asarray(values, dtype=np.float32).tobytes()
    f = C.get_filter("split")
    assert f.decode(f.encode(data, "float32"), "float32") == data


def test_split_bf16_planes() -> None:
    """bf16 split = [sign + 7 mantissa bits] plane, then the [8 exponent bits] plane."""
    u = np.array([0x3F80, 0xBF80, 0x0001, 0x7F7F], dtype="<u2")  # 1.0, -1.0, tiny, max
    enc = np.frombuffer(C.get_filter("split").encode(u.tobytes(), "bfloat16"), np.uint8)
    n = u.size
    exponent = (u >> 7) & 0xFF
    sign_mant = ((u & 0x7F) << 1) | (u >> 15)
    assert (enc[n:] == exponent).all() and (enc[:n] == sign_mant).all()


def test_split_fp32_exponent_plane() -> None:
    x = np.array([1.0, -2.0, 0.5, 3.0e-3], dtype=np.float32)
    enc = np.frombuffer(C.get_filter("split").encode(x.tobytes(), "float32"), np.uint8)
    assert (enc[3 * 4:] == ((x.view("<u4") >> 23) & 0xFF)).all()


def test_filter_rejects_partial_items() -> None:
    with pytest.raises(C.CompressionError):
        C.get_filter("shuffle").encode(b"abc", "float32")
    with pytest.raises(C.CompressionError):
        C.get_filter("split").encode(b"", "complex32")


def test_default_filter() -> None:
    assert C.default_filter("bfloat16") == "split"
    assert C.default_filter("float32") == "split"
    assert C.default_filter("int64") == "shuffle"
    assert C.default_filter("int8") == "none"
    for d in DTYPES:
        assert C.default_filter(d) in FILTERS


def test_split_helps_bf16_weights() -> None:
    rng = np.random.default_rng(3)
    w = rng.normal(0, 0.05, 200_000).astype(np.float32)
    bf16 = (w.view("<u4") >> 16).astype("<u2").tobytes()
    z = C.get_codec("zstd")
    plain = len(z.compress(bf16))
    split = len(z.compress(C.get_filter("split").encode(bf16, "bfloat16")))
    assert split < 0.9 * plain


# ---------------------------------------------------------------- quantiser
@pytest.mark.parametrize("shape", [(), (5,), (16, 8, 3, 3), (10, 512), (3, 0)])
def test_quant_shapes(shape: tuple[int, ...]) -> None:
    x = np.random.default_rng(4).normal(0, 1e-3, shape).astype(np.float32)
    q, s = C.quantize_per_channel(x)
    assert q.dtype == np.int8 and q.shape == x.shape
    assert s.dtype == np.float32 and s.shape == ((x.shape[0],) if x.ndim >= 2 else (1,))
    y = C.dequantize_per_channel(q, s)
    assert y.dtype == np.float32 and y.shape == x.shape


def test_quant_error_bound_gaussian_and_heavy_tail() -> None:
    rng = np.random.default_rng(5)
    scales = 10.0 ** rng.uniform(-5, -2, size=(64, 1, 1, 1))  # channels differ by 1000x
    for x in (rng.normal(size=(64, 32, 3, 3)) * scales, rng.standard_t(3, size=(64, 32, 3, 3)) * scales):
        x = x.astype(np.float32)
        q, s = C.quantize_per_channel(x)
        err = np.linalg.norm(C.dequantize_per_channel(q, s) - x) / np.linalg.norm(x)
        assert err < 0.02, err
        # per element: never worse than half a step, except clipped tails
        assert np.abs(q).max() <= 127


def test_quant_clipping_beats_maxabs_on_outliers() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(0, 1e-3, (8, 4096)).astype(np.float32)
    x[:, 0] = 0.05  # one huge outlier per channel
    x_err = lambda grid: np.linalg.norm(  # noqa: E731
        C.dequantize_per_channel(*C.quantize_per_channel(x, clip_grid=grid)) - x
    )
    assert x_err((1.0, 0.85, 0.7, 0.55)) <= x_err((1.0,))


def test_quant_deterministic_and_exact_cases() -> None:
    x = np.zeros((4, 10), np.float32)
    x[1] = np.linspace(-1, 1, 10)
    q1, s1 = C.quantize_per_channel(x)
    q2, s2 = C.quantize_per_channel(x.copy())
    assert (q1 == q2).all() and (s1 == s2).all()
    y = C.dequantize_per_channel(q1, s1)
    assert (y[0] == 0).all() and (s1[0] == 0)  # all-zero channel is exact
    z = np.array([0.0, 127.0, -127.0, 1.0], np.float32)  # exactly representable
    assert (C.dequantize_per_channel(*C.quantize_per_channel(z, clip_grid=(1.0,))) == z).all()


def test_quant_row_blocks_equal_rows_alone() -> None:
    """The quantiser works a few rows at a time (an L2-sized block, one work buffer): each row's
    scale and codes must be what that row gets quantised on its own, across block edges too
    (here 300 rows of 1,000 values: blocks of 131 rows, the last one short)."""
    from compression import quant

    rng = np.random.default_rng(8)
    x = (rng.standard_t(3, size=(300, 1000)) * 10.0 ** rng.uniform(-5, -2, size=(300, 1))).astype(np.float32)
    assert quant._BLOCK // 1000 < 300
    q, s = C.quantize_per_channel(x)
    for i in (0, 130, 131, 262, 299):
        qi, si = C.quantize_per_channel(x[i : i + 1])
        assert si[0] == s[i] and (qi[0] == q[i]).all(), i
    with pytest.raises(C.CompressionError):  # a non-finite value in a later block is found too
        x[270, 5] = np.inf
        C.quantize_per_channel(x)


def test_quant_rejects_nonfinite_and_mismatch() -> None:
    with pytest.raises(C.CompressionError):
        C.quantize_per_channel(np.array([1.0, np.nan], np.float32))
    q, s = C.quantize_per_channel(np.ones((4, 3), np.float32))
    with pytest.raises(C.CompressionError):
        C.dequantize_per_channel(q, s[:2])


# ---------------------------------------------------------------- bench smoke test
def test_bench_quick_smoke(tmp_path) -> None:
    pytest.importorskip("torch")
    from experiments import compression_bench as bench

    rc = bench.main(["--quick", "--models", "tiny", "--train-steps", "2", "--codecs", "zstd,lz4,snappy",
                     "--data", str(tmp_path / "missing.npz"), "--out", str(tmp_path)])
    assert rc == 0
    t7 = (tmp_path / "compression_table7.md").read_text()
    t8 = (tmp_path / "compression_table8.md").read_text()
    assert "| tiny | trained | zstd |" in t7 and "paper proposed" in t8 and "Machine:" in t8
    assert (tmp_path / "compression.csv").read_text().count("\n") > 10
    assert (tmp_path / "compression.png").stat().st_size > 1000


def test_bench_help(capsys) -> None:
    from experiments import compression_bench as bench

    with pytest.raises(SystemExit) as exc:
        bench.main(["--help"])
    assert exc.value.code == 0 and "--quick" in capsys.readouterr().out
