"""Conformance: the reference decoder (written from the README's "Wire format" section alone) must decode every
payload fedcore produces — each wire dtype × filter × codec × kind — to exactly fedcore's values."""
from __future__ import annotations

import re
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import compression
import reference_decoder as refdec
from fedcore import wire

DOC = Path(__file__).resolve().parents[1] / "README.md"  # its "Wire format" section is the spec
WIRE_DTYPES = ["fp32", "bf16", "fp16"]
FILTERS = ["none", "shuffle", "split", "auto"]
CODECS = compression.available_codecs()


def _state() -> dict[str, torch.Tensor]:
    """Every tensor dtype the wire carries: float weights of three model dtypes, exact float
    buffers (float32 and float64), every integer dtype, bool, a scalar and an empty tensor."""
    g = torch.Generator().manual_seed(5)
    return {
        "conv.weight": torch.randn(6, 3, 3, 3, generator=g) * 0.1,
        "fc.weight": torch.randn(4, 7, generator=g),
        "fc.bias": torch.randn(4, generator=g) * 1e-3,
        "half.weight": (torch.randn(3, 5, generator=g) * 4).to(torch.float16),
        "brain.weight": (torch.randn(5, 2, generator=g) * 1e3).to(torch.bfloat16),
        "wide.weight": torch.randn(2, 3, generator=g, dtype=torch.float64),
        "scalar": torch.tensor(-3.3e-5),
        "nothing": torch.empty(3, 0),
        "bn.running_mean": torch.randn(6, generator=g),
        "bn.running_var": torch.rand(6, generator=g, dtype=torch.float64) + 0.5,
        "bn.num_batches_tracked": torch.tensor(1234567890123),
        "ids32": torch.randint(-(2**31), 2**31 - 1, (5,), generator=g, dtype=torch.int32),
        "ids16": torch.randint(-(2**15), 2**15 - 1, (2, 3), generator=g, dtype=torch.int16),
        "ids8": torch.randint(-128, 127, (7,), generator=g, dtype=torch.int8),
        "bytes": torch.randint(0, 255, (9,), generator=g, dtype=torch.uint8),
        "mask": torch.rand(6, generator=g) > 0.5,
    }


def _update(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(6)
    return {k: (v.float() + 0.01 * torch.randn(v.shape, generator=g)).to(v.dtype) if v.is_floating_point() else v + 1
            if v.dtype not in (torch.bool,) else ~v for k, v in state.items()}


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    """The reference decoder's representation: bf16 as uint16 bit patterns."""
    t = t.detach().contiguous()
    return t.view(torch.uint16).numpy() if t.dtype == torch.bfloat16 else t.numpy()


def _assert_identical(ref: dict[str, np.ndarray], ours: dict[str, torch.Tensor]) -> None:
    assert list(ref) == list(ours)
    for name, t in ours.items():
        mine = _as_numpy(t)
        assert ref[name].dtype == mine.dtype and ref[name].shape == mine.shape, name
        assert ref[name].tobytes() == mine.tobytes(), name


@pytest.mark.parametrize("framed", [False, True], ids=["whole", "blocks"])
@pytest.mark.parametrize("kind", ["weights", "delta"])
@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("filt", FILTERS)
@pytest.mark.parametrize("dtype", WIRE_DTYPES)
def test_reference_decoder_matches_fedcore(dtype: str, filt: str, codec: str, kind: str, framed: bool) -> None:
    state = _state()
    blocks = dict(framed=framed, block=wire.MIN_BLOCK)
    if kind == "weights":
        data = wire.encode_state(state, dtype=dtype, codec=codec, filter=filt, level=None, meta={"round": 1},
                                 **blocks)  # type: ignore[arg-type]
        reference = None
    else:
        data = wire.encode_state(_update(state), dtype=dtype, codec=codec, filter=filt, reference=state,
                                 quantize_update=True, meta={"round": 1, "client": "c"},
                                 **blocks)  # type: ignore[arg-type]
        reference = state
    assert data[5] == int(framed)
    header = wire.payload_info(data)
    assert header.kind == kind and {s.codec for s in header.segments} == {codec}
    ours = wire.decode_state(data, reference=reference, expected=wire.spec_of(state))
    theirs = refdec.decode(data, None if reference is None else {k: _as_numpy(v) for k, v in reference.items()})
    _assert_identical(theirs, ours)


def _doc_example(start: str = "### 7. Worked example", end: str = "### 8.") -> bytes:
    """A worked example of the README's "Wire format" section (section 7, or 9), rebuilt from its text."""
    text = DOC.read_text()
    section = text[text.index(start):text.index(end)]
    block = section.split("```")[-2]  # the section's last code block
    prefix = bytes.fromhex(block.splitlines()[1].split(":", 1)[1])
    header = next(line for line in block.splitlines() if line.startswith("{")).encode()
    bodies = [bytes.fromhex(m) for m in re.findall(r"bytes\):\s+([0-9a-f ]+)", block)]
    return prefix + header + b"".join(bodies)


def test_documented_example_is_what_fedcore_writes() -> None:
    state = {"w": torch.tensor([1.0, -2.0, 0.5]), "n": torch.tensor([3], dtype=torch.int16)}
    data = wire.encode_state(state, dtype="bf16", codec="none", level=None, meta={"round": 1})
    assert _doc_example() == data and len(data) == 539
    out = refdec.decode(data)
    assert out["w"].tolist() == [1.0, -2.0, 0.5] and out["n"].tolist() == [3]
    assert zlib.crc32(bytes.fromhex("803f00c0003f")) == 2882150737


def test_documented_framed_example_is_what_fedcore_writes() -> None:
    state = {"w": torch.tensor([1.0, -2.0, 0.5]), "n": torch.tensor([3], dtype=torch.int16)}
    data = wire.encode_state(state, dtype="bf16", codec="none", level=None, meta={"round": 1}, framed=True,
                             block=65536)
    assert _doc_example("### 9. Block-framed", "## Transports") == data and len(data) == 489
    out = refdec.decode(data)
    assert out["w"].tolist() == [1.0, -2.0, 0.5] and out["n"].tolist() == [3]


@pytest.mark.parametrize("codec", ["zstd", "lz4", "none"])
def test_reference_decoder_reads_many_blocks(codec: str) -> None:
    """Segments of several blocks, the last one short (the tiny state above fits one block)."""
    g = torch.Generator().manual_seed(7)
    state = {"a": torch.randn(70_000, generator=g), "b": torch.randint(0, 5, (50_001,), generator=g),
             "c": torch.randn(3, generator=g).half()}
    for dtype in ("fp32", "bf16"):
        data = wire.encode_state(state, dtype=dtype, codec=codec, framed=True, block=wire.MIN_BLOCK)
        _assert_identical(refdec.decode(data), wire.decode_state(data, expected=wire.spec_of(state)))
        with pytest.raises(refdec.DecodeError):
            refdec.decode(data[:-1])


def test_reference_decoder_refuses_a_relabelled_filter() -> None:
    """The raw_crc32 rule of the spec, seen from the second implementation."""
    data = wire.encode_state(_state(), dtype="fp32", codec="none", filter="split")
    hlen = int.from_bytes(data[8:12], "little")
    header = data[16:16 + hlen].replace(b'"filter":"split"', b'"filter":"shuffle"', 1)
    prefix = data[:8] + len(header).to_bytes(4, "little") + zlib.crc32(header).to_bytes(4, "little")
    forged = prefix + header + data[16 + hlen:]
    assert wire.payload_info(forged).segments[0].filter == "shuffle"
    with pytest.raises(refdec.DecodeError, match="raw_crc32"):
        refdec.decode(forged)
