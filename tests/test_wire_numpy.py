"""A numpy model on the wire (fedcore.arrays): it encodes to exactly the bytes its torch twin
encodes to, for every dtype × codec × filter, whole or block-framed, weights or int8 delta; a
numpy decoder gives exactly the values a torch decoder gives; and a numpy-only process (the
simulation driver of NumpyClients) never imports torch."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import compression
from fedcore import arrays, wire
from fedcore.errors import PayloadError

ROOT = Path(__file__).resolve().parents[1]


def _torch_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    w = torch.randn(64, 3, 8, 8, generator=g) * 3
    w.view(-1)[:4] = torch.tensor([3.3e38, -3.39e38, 1e-40, -0.0])  # bf16/fp16 overflow, subnormal, signed zero
    w.view(-1)[4:8] = torch.tensor([1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, -(1.0 + 2.0**-8), 0.1])  # ties to even
    return {
        "conv.weight": w,
        "bn.running_mean": torch.randn(64, generator=g),
        "bn.num_batches_tracked": torch.tensor(17),
        "half": torch.randn(5000, generator=g).half(),
        "ids": torch.randint(-9, 9, (40_000,), generator=g, dtype=torch.int32),
        "mask": torch.rand(333, generator=g) > 0.5,
        "fc.weight": torch.randn(10, 700, generator=g, dtype=torch.float64),
        "empty": torch.zeros(0, 4),
    }


def _numpy(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in state.items()}


def _reference(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}


CASES = [(d, c, f) for d in wire.CAST_DTYPES for c in compression.available_codecs()
         for f in ("auto", "none", "shuffle", "split")]


@pytest.mark.parametrize(("dtype", "codec", "filt"), CASES)
@pytest.mark.parametrize("framed", [False, True], ids=["whole", "framed"])
@pytest.mark.parametrize("q8", [False, True], ids=["weights", "delta"])
def test_numpy_state_encodes_to_the_torch_bytes(dtype: str, codec: str, filt: str, framed: bool, q8: bool) -> None:
    t = _torch_state()
    if q8:
        t = {k: v for k, v in t.items() if k != "conv.weight"} | {"conv.weight": t["conv.weight"].clamp(-50, 50)}
    ref_t = _reference(t) if q8 else None
    kw = dict(dtype=dtype, codec=codec, filter=filt, quantize_update=q8, framed=framed, block=1 << 16,
              meta={"round": 3})
    want = wire.encode_state(t, reference=ref_t, **kw)
    got = wire.encode_state(_numpy(t), reference=_numpy(ref_t) if ref_t else None, **kw)
    assert got == want

    dec_t = wire.decode_state(want, reference=ref_t)
    dec_n = wire.decode_state(want, reference=_numpy(ref_t) if ref_t else None, into="numpy")
    assert list(dec_n) == list(dec_t)
    for k, v in dec_t.items():
        n = dec_n[k]
        assert isinstance(n, np.ndarray) and n.flags.writeable, k
        assert n.dtype == v.numpy().dtype and n.shape == tuple(v.shape), k
        assert n.tobytes() == v.numpy().tobytes(), k  # bit for bit (NaN, -0.0 too)


def test_numpy_decode_as_sent_keeps_bfloat16_bits() -> None:
    t = {"w": torch.randn(1000), "n": torch.arange(5)}
    payload = wire.encode_state(t, dtype="bf16")
    sent = wire.decode_state(payload, as_sent=True, into="numpy")
    assert sent["w"].dtype == np.uint16
    assert np.array_equal(sent["w"], t["w"].to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16))
    assert np.array_equal(arrays.widen_bf16(sent["w"]), t["w"].to(torch.bfloat16).float().numpy())


def test_bfloat16_model_does_not_decode_into_numpy() -> None:
    payload = wire.encode_state({"w": torch.randn(10).to(torch.bfloat16)}, dtype="bf16")
    with pytest.raises(PayloadError, match="numpy has no dtype"):
        wire.decode_state(payload, into="numpy")


def test_bf16_bits_match_torch_including_nan_and_inf() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([
        rng.standard_normal(20_000).astype(np.float32) * np.float32(1e3),
        np.array([np.nan, -np.nan, np.inf, -np.inf, 3.3e38, 1e-40, -0.0], np.float32),
        np.array([0x7F800001, 0xFFBFFFFF], np.uint32).view(np.float32),  # signalling NaNs
    ])
    want = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    got = arrays.bf16_bits(x)
    finite = np.isfinite(x) | np.isinf(x)
    assert np.array_equal(got[finite], want[finite])
    assert np.all(np.isnan(arrays.widen_bf16(got[~finite])))  # NaN stays NaN (torch keeps its sign bit)


def test_non_finite_numpy_update_is_refused_before_any_byte() -> None:
    state = {"w": np.array([1.0, np.nan], np.float32)}
    with pytest.raises(compression.CompressionError, match="non-finite"):
        wire.encode_state(state, reference={"w": np.zeros(2, np.float32)}, quantize_update=True)


def test_a_numpy_federation_never_imports_torch() -> None:
    """The simulation driver and the Federation of a NumpyClient workload, on a process pool:
    a round's model, its encode, its decode, the workers' partial sums and FedAvg, all numpy."""
    code = textwrap.dedent("""
        import sys
        from fedcore.sim import NumpyVectorClients, ProcessBackend, SimClock, sim_federation, simulate
        from fedcore.config import Settings
        vc = NumpyVectorClients(dim=5000)
        clock = SimClock()
        fed = sim_federation(vc.initial_state(), 6, clock=clock, settings=Settings(strategy="fedprox"))
        result = simulate(fed, vc, 10, 6, 2, ProcessBackend(num_workers=2), seed=1, clock=clock)
        assert [h.num_participants for h in result.history] == [6, 6], result.history
        assert type(result.final_state["w"]).__module__ == "numpy"
        assert abs(float(result.final_state["w"].sum())) > 0
        print("torch loaded:", any(m == "torch" or m.startswith("torch.") for m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "torch loaded: False" in out.stdout

