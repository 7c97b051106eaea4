"""The browser's JavaScript wire codec (browser/src/wire.js) against fedcore.wire, both ways.

Python writes payloads for every dtype x filter x codec the page supports, plus hostile ones;
``node --test`` decodes them bit-exactly (and refuses the hostile ones), then encodes inputs
that include rounding edge cases; Python decodes those and compares bit for bit with torch's
own casts (bf16/fp16 round-to-nearest-even, NaN excluded).
"""
from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import compression
from fedcore import wire
from fedcore.errors import PayloadError, PayloadTooLargeError

ROOT = Path(__file__).resolve().parents[1]
BROWSER = ROOT / "browser"
NODE = shutil.which("node")
PREFIX = struct.Struct("<4sBBHII")
DTYPES = ("fp32", "bf16", "fp16")
FILTERS = ("none", "shuffle", "split")
CODECS = ("none", "zstd")

pytestmark = [
    pytest.mark.skipif(NODE is None, reason="node is not installed (the browser codec tests need node >= 18)"),
    pytest.mark.skipif(not (BROWSER / "node_modules" / "@bokuweb" / "zstd-wasm").is_dir(),
                       reason="browser/node_modules missing: run `make browser` (npm ci)"),
]


# ------------------------------------------------------------------ payload surgery
def split_payload(data: bytes) -> tuple[int, dict[str, Any], bytes]:
    _magic, version, _f, _r, hlen, _crc = PREFIX.unpack_from(data, 0)
    return version, json.loads(data[PREFIX.size : PREFIX.size + hlen]), data[PREFIX.size + hlen :]


def join_payload(version: int, header: dict[str, Any], body: bytes) -> bytes:
    hb = json.dumps(header, separators=(",", ":")).encode()
    return PREFIX.pack(b"FCW1", version, 0, 0, len(hb), zlib.crc32(hb)) + hb + body


def segment_raws(header: dict[str, Any], body: bytes) -> list[bytes]:
    """Each segment's raw bytes (decompressed and un-filtered)."""
    out, pos = [], 0
    for s in header["segments"]:
        b = body[pos : pos + s["size"]]
        pos += s["size"]
        f = b if s["codec"] == "none" else compression.get_codec(s["codec"]).decompress(b, max_size=s["raw"])
        out.append(bytes(f if s["filter"] == "none" else compression.get_filter(s["filter"]).decode(f, s["dtype"])))
    return out


# ------------------------------------------------------------------ fixtures
EDGE_BITS = [
    0x00000000, 0x80000000, 0x00000001, 0x807FFFFF, 0x00800000, 0x3F800000, 0xBF800000,
    0x3F808000, 0x3F818000, 0x3F808001, 0x3F817FFF, 0x7F7FFFFF, 0xFF7FFFFF, 0x7F800000, 0xFF800000,
    0x477FE000, 0x477FEFFF, 0x477FF000, 0x47800000, 0x33000000, 0x33000001, 0x33400000, 0x33800000,
    0x387FC000, 0x387FE000, 0x38800000, 0x3A800800, 0x3A801000, 0x3A801800, 0x7F7F8000, 0x7F7F7FFF,
]


def sample_state(rng: np.random.Generator) -> dict[str, torch.Tensor]:
    edges = np.array(EDGE_BITS, dtype=np.uint32).view(np.float32)
    w = np.concatenate([edges, rng.standard_normal(200).astype(np.float32) * np.float32(0.05),
                        (rng.standard_normal(64) * 1e4).astype(np.float32),
                        rng.integers(0, 2**32, 300, dtype=np.uint64).astype(np.uint32).view(np.float32)])
    w = w[~np.isnan(w)]
    n = len(w) - len(w) % 5
    return {
        "0.weight": torch.from_numpy(w[:n].reshape(-1, 5).copy()),
        "0.bias": torch.from_numpy(rng.standard_normal(7).astype(np.float32)),
        "bn.running_mean": torch.from_numpy(rng.standard_normal(4).astype(np.float32)),
        "bn.num_batches_tracked": torch.tensor(12345678901, dtype=torch.int64),
        "idx": torch.from_numpy(rng.integers(-(2**40), 2**40, 6)),
        "i32": torch.from_numpy(rng.integers(-(2**30), 2**30, 5).astype(np.int32)),
        "u8": torch.from_numpy(rng.integers(0, 256, 9).astype(np.uint8)),
        "flag": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 3),
        # fp16 near its max travels as bf16 as 65536, which comes back to fp16 as inf (a rounding)
        "half": torch.from_numpy(np.concatenate([rng.standard_normal(6) * 100, [65504, -65504, 65000, 2**-24]])
                                 .astype(np.float16)),
        "brain": torch.from_numpy(np.concatenate([rng.standard_normal(6) * 1e3, rng.uniform(1e-9, 6e-5, 24)])
                                  .astype(np.float32)).to(torch.bfloat16),
    }


def expected_hex(t: torch.Tensor, wire_dtype: str, name: str) -> str:
    """Bytes the page should hold after decoding: floats as float32 (after the wire's cast)."""
    if t.is_floating_point():
        target = t if wire.is_untrained(name) else t.to(wire.TORCH_DTYPES[wire_dtype]).to(t.dtype)
        return target.float().numpy().tobytes().hex()
    return t.view(torch.uint8).numpy().tobytes().hex() if t.dtype == torch.bool else t.numpy().tobytes().hex()


def hostile(valid: bytes) -> list[tuple[str, bytes, str, int | None]]:
    """(name, bytes, regex the JS error must match, max_size) for payloads the page must refuse."""
    version, h, body = split_payload(valid)

    def forged(edit: Any, *, v: int = version, b: bytes = body) -> bytes:
        hh = json.loads(json.dumps(h))
        edit(hh)
        return join_payload(v, hh, b)

    def set_data(i: int, ref: list[int]) -> Any:
        return lambda hh: hh["tensors"][i].__setitem__("data", ref)

    t0 = h["tensors"][0]
    seg, off, n = t0["data"]
    bad_body = bytearray(body)
    bad_body[-1] ^= 0x5A
    corrupt_hdr = bytearray(valid)
    corrupt_hdr[PREFIX.size + 3] ^= 0x01
    out: list[tuple[str, bytes, str, int | None]] = [
        ("truncated_prefix", valid[:9], "truncated", None),
        ("truncated_header", valid[: PREFIX.size + 5], "truncated inside the header", None),
        ("truncated_body", valid[:-1], "truncated", None),
        ("trailing", valid + b"\0", "trailing", None),
        ("bad_magic", b"XXXX" + valid[4:], "magic", None),
        ("version1", valid[:4] + b"\x01" + valid[5:], "version", None),
        ("header_crc", bytes(corrupt_hdr), "checksum", None),
        ("segment_crc", join_payload(version, h, bytes(bad_body)), "checksum", None),
        ("oversize", valid, "over the 64-byte limit", 64),
        ("unknown_field", forged(lambda hh: hh.__setitem__("extra", 1)), "unknown field", None),
        ("unknown_seg_field", forged(lambda hh: hh["segments"][0].__setitem__("x", 0)), "unknown field", None),
        ("float_shape", forged(lambda hh: hh["tensors"][0]["shape"].__setitem__(0, 2.5)), "integer", None),
        ("neg_offset", forged(set_data(0, [seg, -4, n])), "integer", None),
        ("gap", forged(set_data(0, [seg, off + 2, n])), "gap|overlaps|needs", None),
        ("overlap", forged(set_data(1, [seg, 0, h["tensors"][1]["data"][2]])), "overlaps|needs|segment", None),
        ("past_segment", forged(set_data(0, [seg + 9, off, n])), "points at segment", None),
        ("wrong_length", forged(set_data(0, [seg, off, n + 2])), "needs", None),
        ("raw_shrunk", forged(lambda hh: hh["segments"][0].__setitem__("raw", hh["segments"][0]["raw"] - 4)),
         "declares|tensors hold|raw", None),
        ("raw_crc", forged(lambda hh: hh["segments"][0].__setitem__("raw_crc32", (hh["segments"][0]["raw_crc32"] + 1) % 2**32)),
         "raw checksum", None),
        ("wrong_filter", forged(lambda hh: hh["segments"][0].__setitem__("filter", "shuffle")), "raw checksum", None),
        ("deep", forged(lambda hh: hh["meta"].__setitem__("x", [[[[[[[[1]]]]]]]])), "deeper|scalar", None),
        ("q8_in_weights", forged(lambda hh: hh["tensors"][0].update(enc="q8", scale=[0, 0, 4]) or hh["tensors"][0].pop("wire")),
         "q8|needs|segment", None),
        ("bool_byte", b"", "bool", None),
    ]
    # a bool tensor whose byte is 2, with every checksum made consistent
    hh = json.loads(json.dumps(h))
    raws = segment_raws(hh, body)
    flag = next(t for t in hh["tensors"] if t["name"] == "flag")
    fs, fo, _ = flag["data"]
    raw = bytearray(raws[fs])
    raw[fo] = 2
    pieces, pos = [], 0
    for i, s in enumerate(hh["segments"]):
        seg_body = body[pos : pos + s["size"]]
        pos += s["size"]
        if i == fs:
            filt = bytes(raw) if s["filter"] == "none" else compression.get_filter(s["filter"]).encode(bytes(raw), s["dtype"])
            seg_body = filt if s["codec"] == "none" else compression.get_codec(s["codec"]).compress(filt, None)
            s.update(size=len(seg_body), crc32=zlib.crc32(seg_body), raw_crc32=zlib.crc32(bytes(raw)))
        pieces.append(seg_body)
    out[-1] = ("bool_byte", join_payload(version, hh, b"".join(pieces)), "bool", None)
    return out


def write_fixtures(fix: Path) -> dict[str, dict[str, torch.Tensor]]:
    rng = np.random.default_rng(13)
    state = sample_state(rng)
    cases, states = [], {}
    big = {**state, "big.weight": torch.from_numpy(rng.standard_normal((300, 120)).astype(np.float32))}
    for dtype in DTYPES:
        for filt in FILTERS:
            for codec in CODECS:
                for framed in (False, True):  # block-framed (section 9): the big tensor spans several blocks
                    name = f"py_{dtype}_{filt}_{codec}{'_blocks' if framed else ''}.fcw"
                    st = big if framed else state
                    payload = wire.encode_state(st, dtype=dtype, filter=filt, codec=codec, meta={"case": name},
                                                framed=framed, block=wire.MIN_BLOCK)
                    (fix / name).write_bytes(payload)
                    wd = wire.canonical_dtype(dtype)
                    cases.append({"file": name, "tensors": {k: {"shape": list(v.shape), "hex": expected_hex(v, wd, k)}
                                                            for k, v in st.items()}})
    (fix / "cases.json").write_text(json.dumps(cases))
    base = wire.encode_state(state, dtype="bf16", codec="zstd", filter="auto")
    entries = []
    for name, data, match, max_size in hostile(base):
        (fix / f"hostile_{name}.fcw").write_bytes(data)
        entries.append({"file": f"hostile_{name}.fcw", "match": match, "max_size": max_size})
    framed = wire.encode_state(big, dtype="fp32", codec="zstd", filter="auto", framed=True, block=wire.MIN_BLOCK)
    flipped = bytearray(framed)
    flipped[-7] ^= 0x21
    for name, data, match in (("framed_truncated", framed[:-1], "truncated"), ("framed_trailing", framed + b"\0", "trailing"),
                              ("framed_block_crc", bytes(flipped), "checksum|decode"),
                              ("framed_flags2", framed[:5] + b"\x02" + framed[6:], "flags")):
        (fix / f"hostile_{name}.fcw").write_bytes(data)
        entries.append({"file": f"hostile_{name}.fcw", "match": match, "max_size": None})
    (fix / "hostile.json").write_text(json.dumps(entries))
    inp = {k: v for k, v in state.items() if k != "empty" and v.dtype in (torch.float32, torch.int64, torch.int32,
                                                                          torch.uint8, torch.bool)}
    (fix / "input.json").write_text(json.dumps({"tensors": [
        {"name": k, "shape": list(v.shape), "dtype": wire.DTYPE_NAMES[v.dtype],
         "hex": (v.view(torch.uint8) if v.dtype == torch.bool else v).numpy().tobytes().hex()} for k, v in inp.items()]}))
    states["input"] = inp
    return states


STEP_LR, STEP_BATCH, STEPS = 0.05, 16, 2


def write_step_fixtures(fix: Path) -> dict[str, tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[float]]]:
    """Weights, batch and torch's result of ``STEPS`` SGD steps (fedcore.loops.train's optimizer)."""
    from fedcore.app.data import load_digits_arrays
    from fedcore.app.models import build_model

    x, y = load_digits_arrays()
    xb, yb = torch.from_numpy(x[:STEP_BATCH]), torch.from_numpy(y[:STEP_BATCH])
    out = {}
    for kind in ("digits_mlp", "digits_cnn"):
        model = build_model(kind, seed=3)
        init = {k: v.detach().clone() for k, v in model.state_dict().items()}
        (fix / f"step_{kind}.fcw").write_bytes(wire.encode_state(init, dtype="fp32", codec="none"))
        (fix / f"step_{kind}.json").write_text(json.dumps(
            {"x": xb.numpy().tobytes().hex(), "y": yb.tolist(), "lr": STEP_LR, "steps": STEPS}))
        opt = torch.optim.SGD(model.parameters(), lr=STEP_LR, momentum=0.9, weight_decay=5e-4)
        losses = []
        for _ in range(STEPS):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        out[kind] = (init, {k: v.detach().clone() for k, v in model.state_dict().items()}, losses)
    return out


CORPUS_SIZE = 400


def _hex(t: torch.Tensor) -> str:
    """A decoded tensor's bytes as the page holds them: floats as float32, bool as bytes."""
    if t.is_floating_point():
        return t.float().numpy().tobytes().hex()
    return (t.to(torch.uint8) if t.dtype == torch.bool else t).numpy().tobytes().hex()


def write_corpus(fix: Path) -> dict[str, dict[str, str] | str]:
    """The wire branch's fuzz corpus (mutated payloads of a small model) and Python's verdicts:
    the decoded tensors where fedcore.wire accepts a payload, else its error."""
    from hostile_payloads import hostile_corpus, small_state

    state = small_state()
    verdicts: dict[str, dict[str, str] | str] = {}
    for i, payload in enumerate(hostile_corpus(CORPUS_SIZE, seed=13, state=state)):
        name = f"corpus_{i:04d}.fcw"
        (fix / name).write_bytes(payload)
        try:
            got = wire.decode_state(payload, expected=wire.spec_of(state), reference=state, max_size=1 << 24)
            verdicts[name] = {k: _hex(v) for k, v in got.items()}
        except (PayloadError, PayloadTooLargeError) as exc:
            verdicts[name] = str(exc)
    spec = [[k, list(v.shape), wire.DTYPE_NAMES[v.dtype]] for k, v in state.items()]
    (fix / "corpus.json").write_text(json.dumps({"files": sorted(verdicts), "spec": spec}))
    return verdicts


def check_corpus(py: dict[str, dict[str, str] | str], js_file: Path) -> tuple[int, int]:
    """Every payload Python refuses, the page refuses; what the page accepts, Python accepts with
    the same values. Returns (accepted by both, refused by both)."""
    js = json.loads(js_file.read_text())
    both_ok = both_refused = 0
    for name, py_verdict in py.items():
        verdict = js[name]
        if isinstance(py_verdict, str):
            assert not verdict["ok"], f"{name}: fedcore.wire refuses it ({py_verdict}), the page accepted it"
            both_refused += 1
        elif verdict["ok"]:
            assert verdict["tensors"] == py_verdict, name
            both_ok += 1
    return both_ok, both_refused


# ------------------------------------------------------------------ the test
def test_js_codec_against_python(tmp_path: Path) -> None:
    fix, out = tmp_path / "fixtures", tmp_path / "js_out"
    fix.mkdir()
    inputs = write_fixtures(fix)["input"]
    steps = write_step_fixtures(fix)
    corpus_verdicts = write_corpus(fix)
    env = {"PATH": str(Path(NODE).parent), "FEDCORE_FIXTURES": str(fix), "FEDCORE_JS_OUT": str(out)}  # type: ignore[arg-type]
    proc = subprocess.run([NODE, "--test", "--test-reporter=tap", "test/"], cwd=BROWSER, env=env,  # type: ignore[list-item]
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "# skipped 0" in proc.stdout, "some node tests were skipped:\n" + proc.stdout[-3000:]
    both_ok, both_refused = check_corpus(corpus_verdicts, out / "corpus_verdicts.json")
    print(f"fuzz corpus: {both_ok} accepted and {both_refused} refused by both decoders, of {CORPUS_SIZE}")
    assert both_refused > CORPUS_SIZE // 2 and both_ok > 0, (both_ok, both_refused)

    files = sorted(f for f in out.glob("*.fcw") if not f.name.startswith("step_"))
    assert len(files) == 24
    for f in files:
        dtype = wire.canonical_dtype(f.name.split("_")[0])
        got = wire.decode_state(f.read_bytes(), expected=wire.spec_of(inputs))
        assert dict(wire.payload_info(f.read_bytes()).meta) == {"client": "node"}
        for name, t in inputs.items():
            g = got[name]
            assert g.dtype == t.dtype and tuple(g.shape) == tuple(t.shape), (f.name, name)
            if t.is_floating_point() and not wire.is_untrained(name):
                cast = t.to(wire.TORCH_DTYPES[dtype]).float()
                ok = ~torch.isnan(t)
                assert torch.equal(g[ok].view(torch.int32), cast[ok].view(torch.int32)), (f.name, name)
            else:
                assert torch.equal(g.view(torch.uint8) if g.dtype == torch.bool else g,
                                   t.view(torch.uint8) if t.dtype == torch.bool else t), (f.name, name)

    for kind, (init, after, torch_losses) in steps.items():
        payload = (out / f"step_{kind}.fcw").read_bytes()
        stepped = wire.decode_state(payload, expected=wire.spec_of(init))
        js_losses = json.loads(str(dict(wire.payload_info(payload).meta)["losses"]))
        assert np.allclose(js_losses, torch_losses, rtol=1e-5, atol=1e-6), (kind, js_losses, torch_losses)
        for name in init:
            moved = (after[name] - init[name]).norm()
            err = (stepped[name] - after[name]).norm()
            assert moved > 0 and err <= 1e-4 * moved + 1e-6, (kind, name, float(err), float(moved))
