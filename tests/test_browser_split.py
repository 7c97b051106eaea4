"""Split mode in the browser device (browser/src/split.js, parts.js) against fedcore.split.

Python writes split messages (fp32 and bf16, with labels, a gradient reply with loss and
correct, and replies the device must refuse); ``node --test`` decodes them, and encodes the same
inputs, which must be Python's bytes exactly. Then the page's device parts (the digits MLP cut
after its first ReLU, the ViT cut after ``blocks.1``) take two split steps from Python's weights
on Python's batch, against a fake edge answering Python's activation gradients; torch takes the
same steps (``act.backward(dy)`` per micro-batch, one SGD step per mini-batch, as
``fedcore.split.device.DeviceTrainer``) and the activations and weights are compared.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedcore import wire
from fedcore.app.models import build_model
from fedcore.split.cut import cut
from fedcore.split.edge import sgd
from fedcore.split.messages import MicroMeta, SplitMessage, encode_message

ROOT = Path(__file__).resolve().parents[1]
BROWSER = ROOT / "browser"
NODE = shutil.which("node")

pytestmark = [
    pytest.mark.skipif(NODE is None, reason="node is not installed (the browser tests need node >= 18)"),
    pytest.mark.skipif(not (BROWSER / "node_modules" / "@tensorflow" / "tfjs-core").is_dir(),
                       reason="browser/node_modules missing: run `make browser` (npm ci)"),
]


def _hex(t: torch.Tensor) -> str:
    return t.detach().float().contiguous().numpy().tobytes().hex()


def _unhex(h: str, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(bytes.fromhex(h), dtype=np.float32).copy()).view(shape)


def write_messages(fix: Path) -> dict[str, bytes]:
    """Messages as fedcore.split writes them, and what decoding them must give."""
    g = torch.Generator().manual_seed(3)
    meta = MicroMeta(round=2, epoch=1, step=5, micro=1, num_micro=3, size=4, mini_size=11)
    acts = torch.randn(4, 128, generator=g) * 3
    acts[0, :4] = torch.tensor([1.00390625, -2.0078125, 1e-40, 65504.0])  # bf16 ties, a subnormal
    labels = torch.tensor([3, 0, 9, 7])
    vit_grad = torch.randn(4, 65, 64, generator=g) * 1e-3
    cases: list[tuple[str, SplitMessage, str]] = [
        ("forward_fp32.fcw", SplitMessage("forward", meta, acts, labels=labels), "fp32"),
        ("forward_bf16.fcw", SplitMessage("forward", meta, acts, labels=labels), "bf16"),
        ("grad_fp32.fcw", SplitMessage("grad", meta, vit_grad, loss=2.3125, correct=3), "fp32"),
        ("grad_bf16.fcw", SplitMessage("grad", meta, vit_grad, loss=0.1, correct=0), "bf16"),
    ]
    expected: dict[str, bytes] = {}
    listed = []
    for name, msg, dtype in cases:
        data = encode_message(msg, dtype=dtype)
        (fix / name).write_bytes(data)
        expected[name] = data
        decoded = wire.decode_state(data)[{"forward": "activations", "grad": "activation_grad"}[msg.kind]]
        listed.append({"file": name, "kind": msg.kind, "dtype": dtype, "meta": vars(meta),
                       "shape": list(msg.tensor.shape[1:]), "values": _hex(msg.tensor), "decoded": _hex(decoded),
                       "labels": None if msg.labels is None else msg.labels.tolist(),
                       "loss": msg.loss, "correct": msg.correct})
    # replies the device must refuse: another micro-batch's, NaN, labels where none belong, too many correct
    other = MicroMeta(round=2, epoch=1, step=5, micro=2, num_micro=3, size=4, mini_size=11)
    bad_grad = vit_grad.clone()
    bad_grad[1, 2, 3] = float("nan")
    refused = [
        ("bad_other_micro.fcw", SplitMessage("grad", other, vit_grad, loss=1.0, correct=0), "reply is for step 5 micro 2"),
        ("bad_nan.fcw", SplitMessage("grad", meta, bad_grad, loss=1.0, correct=0), "NaN or Inf"),
        ("bad_labels.fcw", SplitMessage("grad", meta, vit_grad, labels=labels, loss=1.0, correct=0), "unexpected \\[labels\\]|over the"),
        ("bad_correct.fcw", SplitMessage("grad", meta, vit_grad, loss=1.0, correct=5), "correct=5"),
    ]
    bad = []
    for name, msg, why in refused:
        if msg.correct == 5:  # encode_message does not check; the decoder must
            data = encode_message(SplitMessage("grad", meta, vit_grad, loss=1.0, correct=4))
            data = data.replace(b'"correct":4', b'"correct":5')
            data = _fix_header_crc(data)
        else:
            data = encode_message(msg)
        (fix / name).write_bytes(data)
        bad.append({"file": name, "kind": "grad", "shape": [65, 64], "meta": vars(meta), "why": why})
    (fix / "messages.json").write_text(json.dumps({"messages": listed, "refused": bad}))
    return expected


def _fix_header_crc(data: bytes) -> bytes:
    import struct
    import zlib

    prefix = struct.Struct("<4sBBHII")
    magic, version, flags, reserved, hlen, _ = prefix.unpack_from(data, 0)
    header = data[prefix.size:prefix.size + hlen]
    return prefix.pack(magic, version, flags, reserved, hlen, zlib.crc32(header)) + data[prefix.size:]


STEP_CASES = [  # name, model, cut, mini-batch, micro-batches, window
    ("mlp", "digits_mlp", "1", 10, 4, 2),
    ("vit", "vit_cifar", "blocks.1", 4, 2, 2),
]
STEPS, LR = 2, 0.05


def write_steps(fix: Path) -> dict[str, Any]:
    """Two split steps in torch from seeded weights, per case: the activations each micro-batch
    sends in the first step, and the device part's weights after."""
    jobs, results = [], {}
    for name, kind, at, n, micro, window in STEP_CASES:
        torch.manual_seed(11)
        model = build_model(kind, seed=11)
        split = cut(model, at=at)
        dev = split.device
        g = torch.Generator().manual_seed(5)
        if kind == "vit_cifar":
            x_nhwc = torch.randn(n, 32, 32, 3, generator=g)
            x = x_nhwc.permute(0, 3, 1, 2).contiguous()
            flat = x_nhwc.reshape(n, -1)
        else:
            x = torch.rand(n, 64, generator=g)
            flat = x
        y = torch.randint(0, 10, (n,), generator=g)
        init = {k: v.detach().clone() for k, v in split.device_side.state_dict().items()}
        xs = [t for t in torch.tensor_split(x, micro) if len(t)]
        with torch.no_grad():
            cut_shape = list(dev(xs[0]).shape[1:])
        dys = [torch.randn(len(t), *cut_shape, generator=g) * 0.05 for t in xs]
        opt = sgd(lr=LR)([p for p in split.device_side.parameters() if p.requires_grad])
        first_acts = []
        for s in range(STEPS):
            for i, (xm, dy) in enumerate(zip(xs, dys)):
                act = dev(xm)
                if s == 0:
                    first_acts.append(act.detach().clone())
                act.backward(dy)
            opt.step()
            opt.zero_grad(set_to_none=True)
        (fix / f"init_{name}.fcw").write_bytes(wire.encode_state(init, dtype="fp32", codec="none"))
        metas = [vars(MicroMeta(round=1, epoch=0, step=0, micro=i, num_micro=len(xs), size=len(t), mini_size=n))
                 for i, t in enumerate(xs)]
        jobs.append({"name": name, "kind": kind, "at": at, "init": f"init_{name}.fcw", "x": _hex(flat), "y": y.tolist(),
                     "dy": [_hex(d) for d in dys], "cut": cut_shape, "metas": metas, "micro_batches": micro,
                     "window": window, "lr": LR, "steps": STEPS})
        results[name] = (init, {k: v.detach().clone() for k, v in split.device_side.state_dict().items()},
                         first_acts, cut_shape)
    (fix / "steps.json").write_text(json.dumps({"cases": jobs}))
    return results


def write_npz(fix: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Small CIFAR-shaped .npz files as numpy writes them (stored and deflated, with the string
    column the shared files carry), and malformed ones with the reason the page must give."""
    import io
    import zipfile

    rng = np.random.default_rng(2)
    good: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    x = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 5).astype(np.uint8)
    np.savez_compressed(fix / "c.npz", x_train=x, y_train=y, src_train=np.array([f"train/cat/{i:04d}.jpg" for i in range(5)]))
    np.savez(fix / "s.npz", x_test=x[:3], y_test=y[:3])
    good = {"c.npz": (x, y), "s.npz": (x[:3], y[:3])}

    def npz(path: Path, arrays: dict[str, bytes]) -> None:
        with zipfile.ZipFile(path, "w") as z:
            for k, v in arrays.items():
                z.writestr(f"{k}.npy", v)

    def npy(a: np.ndarray) -> bytes:
        b = io.BytesIO()
        np.save(b, a)
        return b.getvalue()

    npz(fix / "short.npz", {"x_train": npy(x)[:-7], "y_train": npy(y)})
    npz(fix / "fortran.npz", {"x_train": npy(np.asfortranarray(x)), "y_train": npy(y)})
    npz(fix / "float.npz", {"x_train": npy(x.astype(np.float32)), "y_train": npy(y)})
    npz(fix / "labels.npz", {"x_train": npy(x), "y_train": npy(y[:4])})
    (fix / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    bad = [["short.npz", "needs 15360 bytes"], ["fortran.npz", "Fortran"], ["float.npz", "uint8 \\(N, 32, 32, 3\\)"],
           ["labels.npz", "y_train has shape"], ["junk.npz", "not a readable .npz"]]
    (fix / "npz.json").write_text(json.dumps({"good": sorted(good), "bad": bad}))
    return good


def test_page_split_against_fedcore_split(tmp_path: Path) -> None:
    fix, out = tmp_path / "fixtures", tmp_path / "js_out"
    fix.mkdir()
    messages = write_messages(fix)
    steps = write_steps(fix)
    npzs = write_npz(fix)
    env = {"PATH": str(Path(NODE).parent), "FEDCORE_SPLIT_FIXTURES": str(fix), "FEDCORE_SPLIT_OUT": str(out)}  # type: ignore[arg-type]
    proc = subprocess.run([NODE, "--test", "--test-reporter=tap", "test_split/"], cwd=BROWSER, env=env,  # type: ignore[list-item]
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "# skipped 0" in proc.stdout and "# pass 4" in proc.stdout, proc.stdout[-3000:]

    js_messages = json.loads((out / "messages.json").read_text())
    for name, data in messages.items():
        assert bytes.fromhex(js_messages[name]) == data, f"{name}: the page's encoding differs from fedcore.split's"

    js_steps = json.loads((out / "steps.json").read_text())
    for name, (init, after, acts, cut_shape) in steps.items():
        got = js_steps[name]
        for i, a in enumerate(acts):
            ja = _unhex(got["acts"][i], tuple(a.shape))
            assert torch.allclose(ja, a, rtol=1e-4, atol=1e-5), (name, i, float((ja - a).abs().max()))
        for pname, ref in after.items():
            js = _unhex(got["state"][pname], tuple(ref.shape))
            moved = (ref - init[pname]).norm()
            err = (js - ref).norm()
            assert moved > 0 and err <= 1e-4 * moved + 1e-6, (name, pname, float(err), float(moved))

    from fedcore.app.data import ArrayDataset

    js_npz = json.loads((out / "npz.json").read_text())
    for name, (x, y) in npzs.items():
        ref, labels = ArrayDataset(x, y, "cifar10").tensors()  # fedcore's own normalisation, NCHW
        got = _unhex(js_npz[name]["x"], (len(y), 32, 32, 3)).permute(0, 3, 1, 2)
        assert js_npz[name]["y"] == labels.tolist()
        assert torch.allclose(got, ref, atol=1e-5), (name, float((got - ref).abs().max()))
