"""Compression benchmark: reproduces the REST paper's Tables 7-8 and measures fedcore's codecs.

``python -m experiments.compression_bench`` (or ``fedcore bench compression``) builds torchvision
ResNet-18 / ResNet-50 with a 10-class head, takes the random-init state and the state after
a few SGD steps on real CIFAR-10 images, and reports

* Table 7 — per codec and level, on the paper's input (``pickle.dumps`` of the fp32
  state_dict): compressed size, % of raw, compression / decompression time and MiB/s;
* Table 8 — per transmission format: json, binary (pickle; measured only, never used on the
  wire), raw, the paper's proposed (bf16 → pickle → zstd-3), our compression pipeline
  (bf16 → split filter → zstd), fedcore's wire default, lossless fp32, and the int8 update
  codec (with its relative error).

Times are medians of ``--repeats`` runs on one thread (slow codecs run once), MiB/s are of
the raw fp32 bytes. Writes markdown, CSV and a PNG to ``--out`` with the paper's figures
beside ours.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pickle
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compression import filters as _filters
from compression.registry import get_codec

MiB = float(1 << 20)
DEFAULT_DATA = Path("/work/shared/data/cifar10/cifar10_test.npz")
PAPER_CODECS = ("gzip", "zlib", "bz2", "lzma", "lz4", "brotli", "zstd", "snappy")

# ---- the paper's figures (REST paper, section 4.2). Table 7: time (s), rate (% saved), size (MB).
PAPER_RAW = {"resnet18": 42.83, "resnet50": 90.46}
PAPER_T7: dict[tuple[str, str], tuple[float, float, float]] = {
    ("resnet18", "gzip"): (1.24, 7.34, 39.60), ("resnet18", "zlib"): (1.23, 7.33, 39.60),
    ("resnet18", "bz2"): (2.65, 5.46, 40.40), ("resnet18", "lzma"): (11.78, 8.23, 39.22),
    ("resnet18", "lz4"): (0.04, 0.03, 42.72), ("resnet18", "brotli"): (60.85, 8.67, 39.03),
    ("resnet18", "zstd"): (0.02, 7.55, 39.50), ("resnet18", "snappy"): (0.02, 0.0, 42.73),
    ("resnet50", "gzip"): (2.58, 7.29, 83.50), ("resnet50", "zlib"): (2.56, 7.29, 83.50),
    ("resnet50", "bz2"): (5.76, 5.22, 85.37), ("resnet50", "lzma"): (25.57, 8.09, 82.78),
    ("resnet50", "lz4"): (0.07, 0.04, 90.03), ("resnet50", "brotli"): (124.77, 8.54, 82.38),
    ("resnet50", "zstd"): (0.06, 7.45, 83.36), ("resnet50", "snappy"): (0.04, 0.0, 90.06),
}
#: The level each library uses by default, i.e. what the paper most likely ran.
PAPER_LEVEL: dict[str, int | None] = {
    "gzip": 9, "zlib": 6, "bz2": 9, "lzma": 6, "lz4": 0, "brotli": 11, "zstd": 3, "snappy": None,
}
PAPER_T8 = {
    ("resnet18", "json"): 247.72, ("resnet18", "binary (pickle)"): 42.73,
    ("resnet18", "raw"): 42.83, ("resnet18", "paper proposed (bf16+pickle+zstd-3)"): 16.72,
    ("resnet50", "json"): 556.51, ("resnet50", "binary (pickle)"): 90.46,
    ("resnet50", "raw"): 90.46, ("resnet50", "paper proposed (bf16+pickle+zstd-3)"): 35.29,
}

# Levels swept in a full run. Slow settings are capped (brotli-11 takes ~1 min on ResNet-18,
# lzma-9 and zstd-19 likewise); pass --levels to add them.
FULL_LEVELS: dict[str, tuple[int | None, ...]] = {
    "gzip": (9,), "zlib": (1, 6), "bz2": (9,), "lzma": (0,), "lz4": (0, 9),
    "brotli": (1, 5), "zstd": (None, -1, 1, 3, 9), "snappy": (None,),
}
QUICK_LEVELS: dict[str, tuple[int | None, ...]] = {
    "gzip": (1,), "zlib": (1,), "bz2": (1,), "lzma": (0,), "lz4": (0,), "brotli": (1,),
    "zstd": (None, 3), "snappy": (None,),
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- measurement
#: "cpu": process CPU time (user + system). Every timed step runs on one thread (torch is
#: set to 1 thread, the codecs are single-threaded), so on a shared machine CPU time is the
#: honest single-core figure; wall time would also count other users' jobs. "wall": perf_counter.
CLOCK = {"cpu": time.process_time, "wall": time.perf_counter}
_clock = CLOCK["cpu"]


def measure(fn: Callable[[], Any], repeats: int, slow_s: float = 1.5) -> tuple[Any, float, int]:
    """Median time of ``fn`` over up to ``repeats`` runs; a run slower than ``slow_s``
    is not repeated (keeps lzma / bz2 / brotli / json bounded)."""
    times: list[float] = []
    result = None
    for _ in range(max(1, repeats)):
        t0 = _clock()
        result = fn()
        times.append(_clock() - t0)
        if times[-1] > slow_s:
            break
    return result, statistics.median(times), len(times)


@dataclass
class Row7:
    model: str
    state: str
    codec: str
    level: str
    raw_mib: float
    size_mib: float
    pct_raw: float
    comp_s: float
    decomp_s: float
    comp_mibs: float
    decomp_mibs: float
    repeats: int
    paper_size_mb: float | None = None
    paper_time_s: float | None = None


@dataclass
class Row8:
    model: str
    state: str
    format: str
    size_mib: float
    pct_raw: float
    vs_paper_proposed: float | None
    enc_s: float | None
    dec_s: float | None
    enc_mibs: float | None
    dec_mibs: float | None
    paper_size_mb: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- models and states
def build_model(name: str) -> Any:
    import torch
    import torchvision

    torch.manual_seed(0)
    if name == "tiny":  # for smoke tests: a few conv layers with BatchNorm
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10),
        )
    factory = getattr(torchvision.models, name, None)
    if factory is None:
        raise SystemExit(f"unknown model {name!r}")
    return factory(weights=None, num_classes=10)


def _batches(data: Path | None, steps: int, batch: int) -> tuple[Any, Any, str]:
    import torch

    n = steps * batch
    if data is not None and data.exists():
        with np.load(data) as d:
            x = torch.from_numpy(d["x_test"][:n]).permute(0, 3, 1, 2).float().div(255)
            y = torch.from_numpy(d["y_test"][:n].astype(np.int64))
        mean = torch.tensor([0.491, 0.482, 0.447]).view(1, 3, 1, 1)
        std = torch.tensor([0.247, 0.243, 0.262]).view(1, 3, 1, 1)
        return (x - mean) / std, y, f"CIFAR-10 (JPEG q75 copy), {n} test images"
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g), "random tensors"


def model_states(name: str, steps: int, data: Path | None, batch: int = 32) -> tuple[dict, dict, str]:
    """(init state, state after ``steps`` SGD steps, description of the data)."""
    import torch

    model = build_model(name)
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    x, y, desc = _batches(data, steps, batch)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    for i in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[i * batch:(i + 1) * batch]), y[i * batch:(i + 1) * batch])
        loss.backward()
        opt.step()
    trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return init, trained, f"{desc}, {steps} SGD steps (lr 0.01, momentum 0.9, batch {batch})"


def raw_nbytes(sd: Mapping[str, Any]) -> int:
    return sum(v.numel() * v.element_size() for v in sd.values())


# ----------------------------------------------------------------------------- Table 7
def table7(model: str, state: str, sd: Mapping[str, Any], codecs: list[str],
           levels: Mapping[str, tuple[int | None, ...]], repeats: int) -> list[Row7]:
    data = pickle.dumps(dict(sd))  # the paper's input: the pickled fp32 state_dict
    raw = raw_nbytes(sd)
    rows: list[Row7] = []
    for name in codecs:
        codec = get_codec(name)
        for level in levels.get(name, (codec.default_level,)):
            blob, tc, n1 = measure(lambda: codec.compress(data, level), repeats)
            out, td, n2 = measure(lambda: codec.decompress(blob, max_size=len(data)), repeats)
            assert out == data, f"{name} round trip failed"
            paper = PAPER_T7.get((model, name))  # per codec: the paper ran one level (PAPER_LEVEL)
            lvl = "float preset" if (name == "zstd" and level is None) else ("-" if level is None else str(level))
            rows.append(Row7(
                model, state, name, lvl, raw / MiB, len(blob) / MiB, 100 * len(blob) / raw, tc, td,
                raw / MiB / tc, raw / MiB / td, min(n1, n2),
                paper[2] if paper else None, paper[0] if paper else None,
            ))
            r = rows[-1]
            log(f"T7 {model}/{state} {name:6s} {lvl:>12s}: {r.size_mib:7.2f} MiB ({r.pct_raw:5.1f} %) "
                f"comp {r.comp_mibs:7.1f} MiB/s decomp {r.decomp_mibs:7.1f} MiB/s")
    return rows


# ----------------------------------------------------------------------------- Table 8 pipelines
def _flat(sd: Mapping[str, Any]) -> tuple[Any, list[Any]]:
    import torch

    floats = [v.reshape(-1) for v in sd.values() if v.is_floating_point()]
    others = [v for v in sd.values() if not v.is_floating_point()]
    return torch.cat(floats), others


def pipeline_encode(sd: Mapping[str, Any], dtype: str = "bfloat16", level: int | None = None) -> bytes:
    """cast → split filter → zstd on all float tensors as one segment (what the wire does,
    minus its JSON header and checksums): the cost the speed goal is about."""
    import torch

    flat, _ = _flat(sd)
    t = flat.to(getattr(torch, dtype))
    raw = t.view(torch.uint8).numpy()
    return get_codec("zstd").compress(_filters.get_filter("split").encode(raw, dtype), level)


def pipeline_decode(blob: bytes, n: int, dtype: str = "bfloat16") -> Any:
    import torch

    tdt = getattr(torch, dtype)
    itemsize = torch.empty((), dtype=tdt).element_size()
    raw = _filters.get_filter("split").decode(get_codec("zstd").decompress(blob, n * itemsize), dtype)
    return torch.frombuffer(raw, dtype=tdt).float()


def entropy_floor_bytes(sd: Mapping[str, Any]) -> float:
    """Order-0 entropy of the two bf16 byte planes after ``split``: what an ideal
    per-plane entropy coder without context would reach."""
    import torch

    flat, _ = _flat(sd)
    raw = flat.to(torch.bfloat16).view(torch.uint8).numpy()
    planes = np.frombuffer(_filters.get_filter("split").encode(raw, "bfloat16"), np.uint8).reshape(2, -1)
    bits = 0.0
    for p in planes:
        c = np.bincount(p, minlength=256).astype(np.float64)
        pr = c[c > 0] / p.size
        bits += float(-(pr * np.log2(pr)).sum()) * p.size
    return bits / 8


def _json_encode(sd: Mapping[str, Any]) -> bytes:
    return json.dumps({k: v.numpy().tolist() for k, v in sd.items()}).encode()


def _json_decode(blob: bytes) -> dict[str, Any]:
    import torch

    return {k: torch.tensor(v) for k, v in json.loads(blob).items()}


def _paper_encode(sd: Mapping[str, Any]) -> bytes:
    import torch

    bf = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in sd.items()}
    return get_codec("zstd").compress(pickle.dumps(bf), 3)


def _paper_decode(blob: bytes, max_size: int) -> dict[str, Any]:
    sd = pickle.loads(get_codec("zstd").decompress(blob, max_size))  # local, trusted bytes only
    return {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}


def _wire() -> Any | None:
    try:
        from fedcore import wire  # lazy: the bench must work without fedcore too
        return wire
    except Exception as exc:  # noqa: BLE001 - any import problem means "not available"
        log(f"fedcore.wire not importable ({exc!r}): skipping the wire rows")
        return None


def table8(model: str, state: str, sd: Mapping[str, Any], init: Mapping[str, Any] | None,
           repeats: int, json_rows: bool = True) -> list[Row8]:
    import torch

    raw = raw_nbytes(sd)
    raw_mib = raw / MiB
    rows: list[Row8] = []

    def add(fmt: str, size: int, enc: float | None, dec: float | None, note: str = "", **extra: Any) -> None:
        rows.append(Row8(model, state, fmt, size / MiB, 100 * size / raw, None, enc, dec,
                         raw_mib / enc if enc else None, raw_mib / dec if dec else None,
                         PAPER_T8.get((model, fmt)), note, extra))
        r = rows[-1]
        log(f"T8 {model}/{state} {fmt:45s} {r.size_mib:8.2f} MiB ({r.pct_raw:5.1f} %)"
            + (f" enc {r.enc_mibs:7.1f} MiB/s" if r.enc_mibs else "")
            + (f" dec {r.dec_mibs:7.1f} MiB/s" if r.dec_mibs else "") + (f"  {note}" if note else ""))

    if json_rows:
        blob, te, _ = measure(lambda: _json_encode(sd), repeats)
        _, td, _ = measure(lambda: _json_decode(blob), repeats)
        add("json", len(blob), te, td, "tensors → numpy → tolist → json.dumps")
        del blob
    blob, te, _ = measure(lambda: pickle.dumps(dict(sd)), repeats)
    _, td, _ = measure(lambda: pickle.loads(blob), repeats)
    add("binary (pickle)", len(blob), te, td, "measured only: never unpickle network bytes")
    add("raw", raw, None, None, "sum of tensor bytes (fp32 state_dict)")

    pickled_bf16 = len(pickle.dumps({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in sd.items()}))
    blob, te, _ = measure(lambda: _paper_encode(sd), repeats)
    _, td, _ = measure(lambda: _paper_decode(blob, pickled_bf16 + 1024), repeats)
    add("paper proposed (bf16+pickle+zstd-3)", len(blob), te, td)
    paper_size = len(blob)
    blob, te, _ = measure(lambda: get_codec("zstd").compress(pickle.dumps(dict(sd)), 3), repeats)
    add("pickle fp32 + zstd-3 (plain zstd, lossless)", len(blob), te, None)

    floor = entropy_floor_bytes(sd)
    add("order-0 entropy floor of bf16 split planes", int(floor), None, None, "not a codec: a bound")

    n_float = sum(v.numel() for v in sd.values() if v.is_floating_point())
    for dtype, level, label in (("bfloat16", None, "pipeline bf16+split+zstd(float preset)"),
                                ("bfloat16", 1, "pipeline bf16+split+zstd-1"),
                                ("float32", None, "pipeline fp32+split+zstd(float preset), lossless")):
        blob, te, _ = measure(lambda: pipeline_encode(sd, dtype, level), repeats)
        back, td, _ = measure(lambda: pipeline_decode(blob, n_float, dtype), repeats)
        if dtype == "float32":
            assert torch.equal(back, _flat(sd)[0]), "fp32 pipeline is not exact"
        add(label, len(blob), te, td, "cast + filter + compress, floats only, no header")

    wire = _wire()
    if wire is not None:
        dflt = {p: wire.encode_state.__kwdefaults__.get(p) for p in ("dtype", "codec", "level", "filter")}
        blob, te, _ = measure(lambda: wire.encode_state(sd), repeats)
        back, td, _ = measure(lambda: wire.decode_state(blob), repeats)
        add("fedcore default (wire)", len(blob), te, td,
            "encode_state(" + ", ".join(f"{k}={v!r}" for k, v in dflt.items()) + ")")
        if dflt.get("level") is not None:
            blob, te, _ = measure(lambda: wire.encode_state(sd, level=None), repeats)
            _, td, _ = measure(lambda: wire.decode_state(blob), repeats)
            add("fedcore wire bf16, zstd float preset", len(blob), te, td, "encode_state(level=None)")
        blob, te, _ = measure(lambda: wire.encode_state(sd, dtype="float32", level=None), repeats)
        back, td, _ = measure(lambda: wire.decode_state(blob), repeats)
        exact = all(torch.equal(back[k], v) for k, v in sd.items())
        add("fedcore wire fp32 lossless", len(blob), te, td,
            f"encode_state(dtype='float32', level=None); exact round trip: {exact}", exact=exact)
        if init is not None:
            for level in (None,) if dflt.get("level") is None else (dflt["level"], None):
                blob, te, _ = measure(
                    lambda: wire.encode_state(sd, reference=init, quantize_update=True, level=level), repeats)
                back, td, _ = measure(lambda: wire.decode_state(blob, reference=init), repeats)
                num = den = 0.0
                exact_buffers = True
                for k, v in sd.items():
                    if wire.is_untrained(k) or not v.is_floating_point():
                        exact_buffers &= torch.equal(back[k], v)
                        continue
                    num += float(((back[k].double() - v.double()) ** 2).sum())
                    den += float(((v.double() - init[k].double()) ** 2).sum())
                rel = (num / den) ** 0.5 if den else 0.0
                lvl = "float preset" if level is None else f"zstd-{level}"
                add(f"update codec int8/channel ({lvl})", len(blob), te, td,
                    f"‖err‖/‖update‖ = {100 * rel:.2f} %, untrained buffers exact: {exact_buffers}",
                    rel_error=rel, exact_buffers=exact_buffers)
    for r in rows:
        r.vs_paper_proposed = r.size_mib * MiB / paper_size
    return rows


# ----------------------------------------------------------------------------- output
def machine() -> str:
    import torch
    import zstandard

    from fedcore.app.sysinfo import cpu_model, load_average

    return (f"{cpu_model()}, {os.cpu_count()} logical cores (timings on 1 thread; shared machine, load average "
            f"at the end {load_average()}), Python "
            f"{platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
            f"zstandard {zstandard.__version__} (libzstd {'.'.join(map(str, zstandard.ZSTD_VERSION))})")


def _f(x: float | None, nd: int = 2) -> str:
    return "" if x is None else f"{x:,.{nd}f}"


def write_outputs(out: Path, t7: list[Row7], t8: list[Row8], header: str, png: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "compression_table7.md", out / "compression_table8.md", out / "compression.csv"]
    lines = [f"# Compression: REST paper Table 7 reproduced\n\n{header}\n",
             "Input: `pickle.dumps` of the fp32 state_dict (the paper's). Size in MiB; % of raw fp32 "
             "bytes (the paper's *Rate* is the % saved = 100 − ours); MiB/s of raw fp32 bytes. "
             "*paper* columns: the paper's figures for that codec, which it ran at the library's default level "
             f"({', '.join(f'{k} {v}' for k, v in PAPER_LEVEL.items() if v is not None)}); slow levels "
             "(lzma 6, brotli 11: ~1 min per ResNet-18 here) are left out of the default sweep, "
             "add them with `--levels 'lzma=0,6;brotli=1,5,11'`.\n",
             "| model | state | codec | level | size (MiB) | % of raw | comp (s) | decomp (s) | comp MiB/s "
             "| decomp MiB/s | runs | paper size (MB) | paper time (s) |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in t7:
        lines.append(f"| {r.model} | {r.state} | {r.codec} | {r.level} | {_f(r.size_mib)} | {_f(r.pct_raw, 1)} | "
                     f"{_f(r.comp_s, 3)} | {_f(r.decomp_s, 3)} | {_f(r.comp_mibs, 1)} | {_f(r.decomp_mibs, 1)} | "
                     f"{r.repeats} | {_f(r.paper_size_mb)} | {_f(r.paper_time_s)} |")
    paths[0].write_text("\n".join(lines) + "\n")
    lines = [f"# Compression: REST paper Table 8 reproduced, and fedcore's formats\n\n{header}\n",
             "Size in MiB; % of raw fp32 bytes; *× paper* = size / the paper's proposed pipeline measured "
             "in this run; MiB/s of raw fp32 bytes (encode includes the cast). *paper (MB)*: the paper's Table 8.\n",
             "| model | state | format | size (MiB) | % of raw | × paper | enc (s) | dec (s) | enc MiB/s "
             "| dec MiB/s | paper (MB) | note |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in t8:
        lines.append(f"| {r.model} | {r.state} | {r.format} | {_f(r.size_mib)} | {_f(r.pct_raw, 1)} | "
                     f"{_f(r.vs_paper_proposed, 3)} | {_f(r.enc_s, 3)} | {_f(r.dec_s, 3)} | {_f(r.enc_mibs, 1)} | "
                     f"{_f(r.dec_mibs, 1)} | {_f(r.paper_size_mb)} | {r.note} |")
    paths[1].write_text("\n".join(lines) + "\n")
    with paths[2].open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["table", "model", "state", "name", "level", "size_mib", "pct_raw", "vs_paper_proposed",
                    "enc_s", "dec_s", "enc_mibs", "dec_mibs", "runs", "paper_size_mb", "paper_time_s", "note"])
        for r in t7:
            w.writerow(["7", r.model, r.state, r.codec, r.level, r.size_mib, r.pct_raw, "", r.comp_s, r.decomp_s,
                        r.comp_mibs, r.decomp_mibs, r.repeats, r.paper_size_mb, r.paper_time_s, ""])
        for r in t8:
            w.writerow(["8", r.model, r.state, r.format, "", r.size_mib, r.pct_raw, r.vs_paper_proposed, r.enc_s,
                        r.dec_s, r.enc_mibs, r.dec_mibs, "", r.paper_size_mb, "", r.note])
    if png:
        paths.append(plot(out / "compression.png", t7, t8))
    return paths


def plot(path: Path, t7: list[Row7], t8: list[Row8]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r.model for r in t7 + t8))
    if not models:
        return path
    fig, axes = plt.subplots(1, len(models), figsize=(7.5 * len(models), 5.5), squeeze=False)
    colors = dict(zip(PAPER_CODECS, plt.cm.tab10.colors))
    for ax, model in zip(axes[0], models):
        state = "trained" if any(r.model == model and r.state == "trained" for r in t7) else "init"
        for codec in dict.fromkeys(r.codec for r in t7 if r.model == model):
            pts = sorted(((r.comp_mibs, r.size_mib, r.level) for r in t7
                          if r.model == model and r.state == state and r.codec == codec))
            if not pts:
                continue
            c = colors.get(codec, "grey")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=c, label=f"{codec} (ours)", ms=5)
            for x, y, lvl in pts:
                ax.annotate(lvl if lvl != "float preset" else "fp", (x, y), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
            paper = PAPER_T7.get((model, codec))
            if paper:
                ax.plot([PAPER_RAW[model] / max(paper[0], 1e-3)], [paper[2]], "s", mfc="none", color=c, ms=8)
        for r in t8:
            if r.model == model and r.state == state and r.enc_mibs and r.format != "json":
                if r.format.startswith(("paper", "pipeline bf16+split+zstd(float", "fedcore default",
                                        "update codec int8/channel (float")):
                    ax.plot([r.enc_mibs], [r.size_mib], "*", ms=12, color="black")
                    ax.annotate(r.format.split(" (")[0], (r.enc_mibs, r.size_mib), fontsize=7,
                                xytext=(4, -9), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("compression speed (MiB/s of raw fp32, 1 thread, log)")
        ax.set_ylabel("compressed size (MiB)")
        ax.set_title(f"{model}, {state} state: codecs on pickled fp32 (circles), paper (squares), "
                     "formats (stars)", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="center left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- CLI
def _parse_levels(spec: str | None, base: dict[str, tuple[int | None, ...]]) -> dict[str, tuple[int | None, ...]]:
    levels = dict(base)
    for item in filter(None, (spec or "").split(";")):
        name, _, vals = item.partition("=")
        levels[name.strip()] = tuple(None if v.strip() in ("", "default", "none") else int(v)
                                     for v in vals.split(","))
    return levels


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m experiments.compression_bench",
        description="Reproduce the REST paper's Tables 7-8 (codecs on pickled ResNet state_dicts; "
                    "transmission formats) and measure fedcore's codecs beside them.")
    p.add_argument("--models", default="resnet18,resnet50",
                   help="comma list of torchvision model names (10-class head), or 'tiny' (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="timing repeats, median reported (default: %(default)s)")
    p.add_argument("--codecs", default=",".join(PAPER_CODECS),
                   help="comma list of codecs for Table 7 (default: %(default)s)")
    p.add_argument("--levels", default=None,
                   help="override levels, e.g. 'zstd=1,3,19;brotli=11' ('default' = codec default)")
    p.add_argument("--states", default="init,trained", help="which states: init, trained (default: %(default)s)")
    p.add_argument("--train-steps", type=int, default=10,
                   help="SGD steps for the trained state; the update = trained - init (default: %(default)s)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help="CIFAR-10 npz (x_test/y_test); random tensors if missing (default: %(default)s)")
    p.add_argument("--no-json", action="store_true", help="skip the (slow) json row")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: resnet18 only (unless --models given), 1 repeat, one cheap level per codec")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--clock", choices=list(CLOCK), default="cpu",
                   help="cpu: process CPU time (single-threaded steps; robust on a shared machine); "
                        "wall: elapsed time (default: %(default)s)")
    p.add_argument("--skip-table7", action="store_true", help="only the transmission formats (Table 8)")
    p.add_argument("--out", type=Path, default=Path("experiments/results"), help="output folder (default: %(default)s)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    global _clock
    _clock = CLOCK[args.clock]

    argv_list = list(sys.argv[1:] if argv is None else argv)
    models = [m for m in args.models.split(",") if m]
    if args.quick:
        if "--models" not in " ".join(argv_list):
            models = ["resnet18"]
        args.repeats = 1
    levels = _parse_levels(args.levels, QUICK_LEVELS if args.quick else FULL_LEVELS)
    codecs = [c for c in args.codecs.split(",") if c]
    for c in codecs:
        get_codec(c)  # fail fast with the list of valid names
    states = [s for s in args.states.split(",") if s]
    t0 = time.perf_counter()
    t7: list[Row7] = []
    t8: list[Row8] = []
    data_desc = ""
    for model in models:
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
        log(f"{model}: building and training {args.train_steps} steps")
        init, trained, data_desc = model_states(model, args.train_steps, args.data)
        torch.set_num_threads(1)  # all timings on one core
        for state in states:
            sd = {"init": init, "trained": trained}[state]
            if not args.skip_table7:
                t7 += table7(model, state, sd, codecs, levels, args.repeats)
            t8 += table8(model, state, sd, init if state == "trained" else None, args.repeats,
                         json_rows=not args.no_json)
    elapsed = time.perf_counter() - t0
    header = (f"Machine: {machine()}.  \nTimes: {args.clock} time"
              + (" (process CPU time of single-threaded steps, so other jobs on the shared machine do not "
                 "inflate them)" if args.clock == "cpu" else "") + f", median of up to {args.repeats} runs.  \nStates: *init* = random init (torch seed 0); *trained* = {data_desc}. "
              f"The update codec encodes trained − init.  \nCommand: `python -m experiments.compression_bench "
              f"{' '.join(argv_list)}`, {time.strftime('%Y-%m-%d')}, took {elapsed:.0f} s.")
    paths = write_outputs(args.out, t7, t8, header, png=not args.no_plot)
    log(f"done in {elapsed:.0f} s; wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
