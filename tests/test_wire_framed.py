"""Block-framed payloads (README wire format, section 9): streamed encode and decode give exactly
what the whole format gives, and a truncated or corrupt block stream fails with the typed error
and leaves the decoder holding nothing."""
from __future__ import annotations

import random
import struct
import zlib

import pytest
import torch

import compression
from fedcore import wire
from fedcore.errors import PayloadError, PayloadTooLargeError

FRAME = struct.Struct("<III")


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {
        "conv.weight": torch.randn(64, 3, 8, 8, generator=g),
        "bn.running_mean": torch.randn(64, generator=g),
        "bn.num_batches_tracked": torch.tensor(17),
        "half": torch.randn(5000, generator=g).half(),
        "ids": torch.randint(-9, 9, (40_000,), generator=g, dtype=torch.int32),  # 156 KiB: three 64 KiB blocks
        "mask": torch.rand(333, generator=g) > 0.5,
        "fc.weight": torch.randn(10, 700, generator=g, dtype=torch.float64),
    }


def _reference(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}


def _feed_in_pieces(data: bytes, decoder: wire.StreamDecoder, seed: int) -> None:
    rng = random.Random(seed)
    i = 0
    while i < len(data):
        n = rng.choice([1, 7, 12, 100, 4096, 70_000, 300_000])
        decoder.feed(data[i : i + n])
        i += n


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k].view(torch.uint8) if a[k].dtype == torch.bool else a[k],
                           b[k].view(torch.uint8) if b[k].dtype == torch.bool else b[k]), k


CASES = [(d, c, f) for d in wire.CAST_DTYPES for c in compression.available_codecs()
         for f in ("auto", "none", "shuffle", "split")]


@pytest.mark.parametrize(("dtype", "codec", "filt"), CASES)
@pytest.mark.parametrize("q8", [False, True], ids=["weights", "delta"])
def test_streamed_equals_whole_bit_for_bit(dtype: str, codec: str, filt: str, q8: bool) -> None:
    state = _state()
    ref = _reference(state)
    kw = dict(dtype=dtype, codec=codec, filter=filt, quantize_update=q8, reference=ref if q8 else None,
              meta={"round": 3})
    whole = wire.encode_state(state, **kw)  # type: ignore[arg-type]
    chunks = list(wire.iter_encode_state(state, block=wire.MIN_BLOCK, **kw))  # type: ignore[arg-type]
    framed = b"".join(chunks)
    assert len(chunks) > 3, "the big tensor must span several blocks"
    assert framed[5] == wire.FLAG_FRAMED and whole[5] == 0
    spec = wire.spec_of(state)
    expected = wire.decode_state(whole, reference=ref, expected=spec)
    _assert_same(expected, wire.decode_state(framed, reference=ref, expected=spec))
    dec = wire.StreamDecoder(reference=ref, expected=spec)
    _feed_in_pieces(framed, dec, seed=len(framed))
    _assert_same(expected, dec.finish())
    # and the raw bytes the blocks carry, joined, are the whole payload's segments
    hw, pw = wire.read_header(whole)
    hf, _ = wire.read_header(framed)
    assert [s.raw for s in hw.segments] == [s.raw for s in hf.segments]
    assert hw.tensors == hf.tensors


def test_the_header_comes_before_anything_is_compressed() -> None:
    state = _state()
    stream = wire.iter_encode_state(state)
    first = next(stream)
    header, end = wire.read_header(first)
    assert end == len(first) and isinstance(header, wire.FramedWireHeader)
    assert all(s.block == wire.DEFAULT_BLOCK for s in header.segments)
    stream.close()


def test_encoded_stream_replays_the_same_bytes() -> None:
    enc = wire.EncodedStream(wire.iter_encode_state(_state(), block=wire.MIN_BLOCK))
    first = b"".join(enc)
    assert b"".join(enc) == first and enc.nbytes == len(first) == len(enc.getvalue())


def _framed() -> tuple[bytes, int, dict[str, wire.TensorSpec]]:
    state = _state()
    data = wire.encode_state(state, framed=True, block=wire.MIN_BLOCK)
    _, end = wire.read_header(data)
    return data, end, wire.spec_of(state)


def _rewrite_header(data: bytes, old: str, new: str) -> bytes:
    """The payload with ``old`` replaced by ``new`` in its JSON header, prefix length and crc fixed."""
    hlen = struct.unpack_from("<I", data, 8)[0]
    header = data[16 : 16 + hlen].decode().replace(old, new, 1).encode()
    return data[:8] + struct.pack("<II", len(header), zlib.crc32(header)) + header + data[16 + hlen :]


def _holds_nothing(dec: wire.StreamDecoder) -> bool:
    return not dec._segments and not dec._buf and not dec._jobs


def test_truncated_stream_fails_at_finish_and_keeps_nothing() -> None:
    data, _, spec = _framed()
    for cut in (10, 200, len(data) // 2, len(data) - 1):
        dec = wire.StreamDecoder(expected=spec)
        dec.feed(data[:cut])
        with pytest.raises(PayloadError, match="truncated"):
            dec.finish()
        assert _holds_nothing(dec)
        with pytest.raises(PayloadError):  # spent
            dec.feed(data[cut:])


def test_corrupt_block_fails_and_keeps_nothing() -> None:
    data, end, spec = _framed()
    size = FRAME.unpack_from(data, end)[0]
    for where in (end + FRAME.size, end + FRAME.size + size // 2, len(data) - 3):
        bad = bytearray(data)
        bad[where] ^= 0x40
        dec = wire.StreamDecoder(expected=spec)
        with pytest.raises(PayloadError, match="checksum|decode"):
            _feed_in_pieces(bytes(bad), dec, seed=where)
            dec.finish()
        assert _holds_nothing(dec)


def test_relabelled_block_is_caught_by_its_raw_checksum() -> None:
    state = {"w": torch.randn(40_000)}
    data = wire.encode_state(state, dtype="fp32", codec="none", filter="split", framed=True, block=wire.MIN_BLOCK)
    relabelled = _rewrite_header(data, '"filter":"split"', '"filter":"shuffle"')
    with pytest.raises(PayloadError, match="raw checksum"):
        wire.decode_state(relabelled)


def test_oversize_frame_is_refused_before_its_body_is_buffered() -> None:
    data, end, spec = _framed()
    bad = bytearray(data[: end + FRAME.size])
    struct.pack_into("<I", bad, end, 1 << 30)
    dec = wire.StreamDecoder(expected=spec)
    with pytest.raises(PayloadTooLargeError, match="declares"):
        dec.feed(bytes(bad))
    assert _holds_nothing(dec)


def test_trailing_bytes_after_the_last_block() -> None:
    data, _, spec = _framed()
    with pytest.raises(PayloadError, match="trailing"):
        wire.decode_state(data + b"\0", expected=spec)


def test_header_is_checked_against_the_model_before_any_block() -> None:
    data, end, _ = _framed()
    other = wire.spec_of({"w": torch.zeros(3)})
    dec = wire.StreamDecoder(expected=other)
    with pytest.raises(PayloadError, match="another model"):
        dec.feed(data[:end])  # only the header: refused before a block arrives


@pytest.mark.parametrize("block", [wire.MIN_BLOCK - 8, wire.MIN_BLOCK + 8, wire.MAX_BLOCK * 2])
def test_block_size_must_be_a_power_of_two_in_range(block: int) -> None:
    data, _, _ = _framed()
    with pytest.raises(PayloadError, match="block"):
        wire.read_header(_rewrite_header(data, f'"block":{wire.MIN_BLOCK}', f'"block":{block}'))
    with pytest.raises(ValueError, match="power of two"):
        wire.encode_state({"w": torch.zeros(3)}, framed=True, block=block)


def test_flags_other_than_framed_are_refused() -> None:
    data, _, _ = _framed()
    with pytest.raises(PayloadError, match="flags"):
        wire.read_header(data[:5] + b"\x02" + data[6:])
    whole = wire.encode_state(_state())
    with pytest.raises(PayloadError, match="malformed header"):  # a whole header under the framed flag
        wire.read_header(whole[:5] + b"\x01" + whole[6:])


def test_int8_update_is_quantised_as_its_blocks_are_reached(monkeypatch: pytest.MonkeyPatch) -> None:
    """A streamed int8 update sends its first block before the later tensors are quantised
    (quantisation overlaps the upload); the bytes are those of the whole payload."""
    g = torch.Generator().manual_seed(5)
    state = {f"layer{i}.weight": torch.randn(64, 64, 32, generator=g) for i in range(16)}  # 128 KiB of int8 each
    ref = _reference(state)
    calls: list[int] = []
    real = compression.quant.quantize_per_channel

    def counting(x: object, **k: object) -> object:
        calls.append(1)
        return real(x, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(compression.quant, "quantize_per_channel", counting)
    frames = wire.iter_encode_state(state, reference=ref, quantize_update=True, block=wire.MIN_BLOCK)
    got = [next(frames), next(frames)]  # the head, then the first block's frame
    assert 1 <= len(calls) < len(state)
    got += list(frames)
    assert len(calls) == len(state)  # each tensor once: its scales reuse the same result
    assert b"".join(got) == wire.encode_state(state, reference=ref, quantize_update=True, framed=True,
                                              block=wire.MIN_BLOCK)


def test_non_finite_update_is_refused_before_any_byte() -> None:
    state = _state()
    ref = _reference(state)
    state["conv.weight"][0, 0, 0, 0] = float("nan")
    with pytest.raises(compression.CompressionError, match="non-finite"):
        next(wire.iter_encode_state(state, reference=ref, quantize_update=True))


@pytest.mark.parametrize("ref_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("into", ["torch", "numpy"])
def test_int8_update_decodes_across_the_dequantisers_row_blocks(ref_dtype: torch.dtype, into: str) -> None:
    """The dequantiser works a few rows at a time: reference + q × scale must be exact across
    block edges (70 rows of 2,000 values: blocks of 32 rows), for a float32 reference and a
    bfloat16 one (what a server holds ``as_sent``), into torch and into numpy."""
    import numpy as np

    g = torch.Generator().manual_seed(9)
    state = {"w": torch.randn(70, 2000, generator=g), "b": torch.randn(70, generator=g)}
    ref = {k: (v + 0.01 * torch.randn(v.shape, generator=g)).to(ref_dtype) for k, v in state.items()}
    assert wire._DEQ_BLOCK // 2000 < 70
    payload = wire.encode_state(state, reference=ref, quantize_update=True, framed=True)
    from fedcore.arrays import float_bits

    # a numpy decoder holds a bfloat16 reference as its bits
    dec = wire.StreamDecoder(reference=ref if into == "torch" else {k: float_bits(v) for k, v in ref.items()},
                             into=into)  # type: ignore[arg-type]
    dec.feed(payload)
    got = dec.finish()
    for name, x in state.items():
        delta = (x - ref[name].float()).numpy()
        q, s = compression.quant.quantize_per_channel(delta)
        want = ref[name].float().numpy() + compression.quant.dequantize_per_channel(q, s)
        assert np.array_equal(np.asarray(got[name]), want), name
