"""WASM paper, Tables 7-9: the six device/edge scenarios with K `fedcore client` device processes
and one `fedcore server` edge process, each device behind its own emulated link.

    python -m experiments.edge_scenarios                  # all six scenarios (see --help)
    python -m experiments.edge_scenarios --quick          # 1 round, tiny data: the smoke test

Scenarios (Table 7) differ only by fedcore settings, passed as ``--set`` to server and clients:
1 all training on the devices (FedAvg); 2 split (device front, edge rest), no overlap;
3 split + overlap (a window of in-flight micro-batches); 4 split + device softmax via cuda_ext;
5 split + edge matmul via cuda_ext; 6 all of them.

Emulation (experiments.emulation): an edge network namespace and one per device, each device
joined by its own veth pair shaped with tc (default 100 Mbit/s; 20 ms RTT by netem, or by the
userspace delay line experiments/delay_line.py where the kernel has no netem), devices under a CPU quota (cgroup) with one torch thread. Loopback where namespaces are
not permitted, with the reason in the report.

Measured per scenario: time to train (first round's start to the last round's end, from the
server's round history), edge CPU utilisation (/proc/<pid>/stat of the server; GPU through NVML
when pynvml and a GPU exist), final accuracy (server evaluation on the test subset), data
transfer time (bytes per link / the link's throughput measured in the same run), matmul and
softmax time (torch.profiler self-CPU time per sample from a short probe of each side, run in
the device's namespace and CPU share and in the edge's, scaled to the samples of the run), and
the stage times (device, link, edge, each alone) the issue's goals compare against.

Outputs under --out: <tag>.md (ours beside the paper's Tables 8-9), <tag>.csv, <tag>.png.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import inspect
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from experiments.emulation import (
    CpuShare, Endpoint, LinkSpec, Throughput, Topology, emulated_network, measure_rtt_ms, measure_throughput,
    popen_in, proc_cpu_seconds,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "experiments" / "results"
DEFAULT_DATA = next((d / "shared" / "data" / "cifar10" for d in ROOT.parents
                     if (d / "shared" / "data" / "cifar10").is_dir()), ROOT.parent / "shared" / "data" / "cifar10")
REST_PORT, GRPC_PORT = 8080, 50051

# The paper's Tables 8 and 9 (seconds, %, %; seconds).
PAPER_T8 = {1: (1032.45, 61.3, 85.2), 2: (842.12, 71.8, 87.1), 3: (623.98, 84.7, 88.3),
            4: (762.34, 75.1, 86.4), 5: (645.87, 79.6, 87.8), 6: (547.61, 91.2, 89.5)}
PAPER_T9 = {1: (None, 403.45, 629.87), 2: (52.76, 301.23, 505.12), 3: (32.15, 251.67, 372.31),
            4: (41.89, 351.89, 416.45), 5: (37.54, 304.76, 358.98), 6: (27.83, 202.54, 305.78)}
TITLES = {1: "all training on devices (FedAvg)", 2: "split: device front, edge rest",
          3: "split + overlap", 4: "split + device softmax (cuda_ext)",
          5: "split + edge matmul (cuda_ext)", 6: "all optimisations"}
SPLIT_NOT_WIRED = "split mode not available in this build (fedcore server/client do not run mode=split yet)"


# ---------------------------------------------------------------------------------- scenarios
@dataclass(frozen=True)
class Scenario:
    """One row of Table 7: its number and the fedcore settings that make it."""

    number: int
    title: str
    settings: Mapping[str, str]

    @property
    def split(self) -> bool:
        return self.settings.get("mode") == "split"

    @property
    def window(self) -> int:
        return int(self.settings.get("split_window", "1"))

    @property
    def softmax_ext(self) -> bool:
        return self.settings.get("device_softmax_ext") == "true"

    @property
    def matmul_ext(self) -> bool:
        return self.settings.get("edge_matmul_ext") == "true"


def make_scenarios(split_at: str, micro_batches: int, window: int, split_dtype: str,
                   unified_memory: bool) -> dict[int, Scenario]:
    """Table 7 as fedcore settings; only ``mode`` and the split switches differ."""
    split = {"mode": "split", "split_at": split_at, "micro_batches": str(micro_batches), "split_window": "1",
             "split_dtype": split_dtype}
    over = {"split_window": str(window)}
    sm, mm = {"device_softmax_ext": "true"}, {"edge_matmul_ext": "true"}
    um = {"unified_memory": "true"} if unified_memory else {}
    sets: dict[int, dict[str, str]] = {1: {"mode": "fedavg"}, 2: split, 3: split | over, 4: split | sm,
                                       5: split | mm, 6: split | over | sm | mm | um}
    return {n: Scenario(n, TITLES[n], s) for n, s in sets.items()}


# ---------------------------------------------------------------------------------- availability
def split_unavailable_reason() -> str | None:
    """Why split scenarios cannot run with this build (None when server and client handle mode=split)."""
    sources = []
    for mod in ("fedcore.app.build", "fedcore.client", "fedcore.app.cli", "fedcore.app.apps", "fedcore.server"):
        try:
            sources.append(inspect.getsource(importlib.import_module(mod)))
        except (ImportError, OSError, TypeError):
            continue
    wired = any(re.search(r"\.mode\s*==\s*[\"']split|fedcore\.split", s) for s in sources)
    return None if wired else SPLIT_NOT_WIRED


def ext_unavailable_reason(switches: Sequence[str]) -> str | None:
    """Why the cuda_ext scenarios cannot run: the extension's modules are missing, or no part of
    fedcore hands the ``switches`` from the settings to the model (they would be ignored)."""
    if importlib.util.find_spec("cuda_ext") is None or importlib.util.find_spec("cuda_ext.nn") is None:
        return "cuda_ext.nn (Linear, softmax_attention) is not in this build"
    sources = []
    for mod in ("fedcore.app.build", "fedcore.app.models", "fedcore.app.apps", "fedcore.client", "fedcore.split.setup"):
        try:
            sources.append(inspect.getsource(importlib.import_module(mod)))
        except (ImportError, OSError, TypeError):
            continue
    unwired = [sw for sw in switches if not any(sw in src for src in sources)]
    if unwired:
        return f"setting(s) {', '.join(unwired)} are not passed to the model in this build (they would be ignored)"
    return None


def vit_model_name() -> str | None:
    """The model zoo's name for the CIFAR ViT, when registered."""
    from fedcore.app import models

    for name, factory in models.MODELS.items():
        if "vit" in name.lower() or getattr(factory, "__name__", "").startswith("vit"):
            return name
    return None


def scenario_skip_reason(sc: Scenario, model: str) -> str | None:
    if sc.split:
        if (why := split_unavailable_reason()) is not None:
            return why
        if "vit" not in model:
            return f"split scenarios need the ViT (cut points blocks.N); model {model!r} is not it"
    switches = [k for k in ("device_softmax_ext", "edge_matmul_ext") if sc.settings.get(k) == "true"]
    return ext_unavailable_reason(switches) if switches else None


# ---------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class DataSubset:
    """A seeded random fraction of CIFAR-10's training images and a test subset, written in the
    npz layout fedcore reads (so stock `fedcore server/client --data-dir` use it)."""

    folder: Path
    train_images: int
    test_images: int
    fraction: float


def make_subset(src: Path, dest_root: Path, fraction: float, test_size: int, seed: int) -> DataSubset:
    from fedcore.app.data import load_cifar10_arrays

    folder = dest_root / f"cifar10_f{fraction:g}_t{test_size}_s{seed}"
    train_n = None
    if (folder / "cifar10_test.npz").exists() and (folder / "cifar10_train_0.npz").exists():
        with np.load(folder / "cifar10_train_0.npz") as f:
            train_n = len(f["y_train"])
    if train_n is None:
        xtr, ytr, xte, yte = load_cifar10_arrays(src)
        rng = np.random.default_rng(seed)
        tr = np.sort(rng.permutation(len(ytr))[: max(20, int(round(fraction * len(ytr))))])
        te = np.sort(rng.permutation(len(yte))[: min(test_size, len(yte))])
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / "cifar10_train_0.npz", x_train=xtr[tr], y_train=ytr[tr])
        np.savez(folder / "cifar10_test.npz", x_test=xte[te], y_test=yte[te])
        train_n = len(tr)
    return DataSubset(folder, train_n, min(test_size, 10_000), fraction)


# ---------------------------------------------------------------------------------- probe (subprocess)
MATMUL_OPS = {"aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::addbmm"}
SOFTMAX_OPS = {"aten::_softmax", "aten::_softmax_backward_data", "aten::_log_softmax",
               "aten::_log_softmax_backward_data"}


def op_category(key: str) -> str | None:
    """'matmul', 'softmax' or None for a profiler event name. The fused cuda_ext
    matmul+softmax counts as softmax; cuda_ext's own linear/matmul events as matmul."""
    norm = key.lower().replace("_", "")
    if "matmulsoftmax" in norm or key in SOFTMAX_OPS:
        return "softmax"
    if key in MATMUL_OPS or (not key.startswith(("aten::", "autograd::")) and ("linear" in norm or "matmul" in norm)):
        return "matmul"
    return None


@dataclass(frozen=True)
class Probe:
    """One side's compute, measured alone: seconds per training sample, and the profiler's
    matmul/softmax self-CPU seconds per sample; for a device in split mode also the wire bytes
    per sample of its activations (fp32 and bf16+zstd)."""

    role: str
    seconds_per_sample: float
    matmul_s_per_sample: float
    softmax_s_per_sample: float
    profiled_s_per_sample: float
    act_bytes_fp32: float = 0.0
    act_bytes_bf16_zstd: float = 0.0


def _probe_main(argv: Sequence[str]) -> int:
    """Run inside a namespace/CPU share: time `role`'s training step alone, then profile it."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from fedcore import wire
    from fedcore.app.data import load_federated
    from fedcore.app.models import build_model

    p = argparse.ArgumentParser()
    p.add_argument("--role", choices=["full", "device", "edge", "eval"], required=True)
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--split-at", default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--micro-batches", type=int, default=1)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--softmax-ext", action="store_true")
    p.add_argument("--matmul-ext", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wire-dtype", default="float32", help="split messages' tensor dtype (encoded as the run does)")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    data = load_federated("cifar10", 1, seed=a.seed, data_dir=a.data_dir)
    x_all, y_all = data.clients[0].train.tensors()
    if "vit" in a.model:
        from fedcore.app.vit import ViT

        torch.manual_seed(a.seed)
        model: torch.nn.Module = ViT(device_softmax_ext=a.softmax_ext, edge_matmul_ext=a.matmul_ext)
    else:
        model = build_model(a.model, "cifar10", seed=a.seed)
    if a.role == "eval":  # the server's evaluation of the whole model on its test set
        model.eval()
        x_test, _ = data.server_test.tensors()
        with torch.no_grad():
            model(x_test[:64])
            t0 = time.perf_counter()
            for chunk in torch.split(x_test, 256):
                model(chunk)
        secs = (time.perf_counter() - t0) / len(x_test)
        a.out.write_text(json.dumps(asdict(Probe("eval", secs, 0.0, 0.0, secs))))
        return 0
    loss_fn = torch.nn.CrossEntropyLoss()
    front: torch.nn.Module | None = None
    back: torch.nn.Module = model
    if a.role != "full":
        from fedcore.split import cut

        parts = cut(model, at=a.split_at)
        front, back = parts.device, parts.edge
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    bs, mb = a.batch_size, max(1, a.micro_batches)
    n_batches = max(1, min(a.batches + 1, len(y_all) // bs))
    with torch.no_grad():
        acts = front(x_all[: bs * n_batches]) if front is not None else None
    edge_msgs: dict[tuple[int, int], bytes] = {}  # what the devices would send, encoded before timing
    if a.role == "edge" and acts is not None:
        for b in range(n_batches):
            for j, chunk in enumerate(acts[b * bs:(b + 1) * bs].chunk(mb)):
                edge_msgs[(b * bs, j)] = wire.encode_state({"activations": chunk.contiguous()}, dtype=a.wire_dtype,
                                                           codec="none")

    def step(i: int) -> None:
        """One mini-batch of this side's work, as micro-batches; split sides also encode what
        they send and decode what they receive (the wire format of the run, no network)."""
        lo = (i % n_batches) * bs
        opt.zero_grad()
        for j, (xs, ys) in enumerate(zip(x_all[lo:lo + bs].chunk(mb), y_all[lo:lo + bs].chunk(mb))):
            if a.role == "full":
                (loss_fn(model(xs), ys) * len(ys) / bs).backward()
            elif a.role == "device":
                assert front is not None
                out = front(xs)
                wire.encode_state({"activations": out.detach(), "labels": ys}, dtype=a.wire_dtype, codec="none")
                reply = wire.encode_state({"g": torch.randn_like(out) * 1e-3}, dtype=a.wire_dtype, codec="none")
                out.backward(wire.decode_state(reply)["g"])
            else:
                h = wire.decode_state(edge_msgs[(lo, j)])["activations"].requires_grad_(True)
                (loss_fn(back(h), ys) * len(ys) / bs).backward()
                assert h.grad is not None
                wire.encode_state({"g": h.grad}, dtype=a.wire_dtype, codec="none")
        opt.step()

    step(0)  # warm-up
    t0 = time.perf_counter()
    for i in range(a.batches):
        step(i + 1)
    per_sample = (time.perf_counter() - t0) / (a.batches * bs)
    prof_batches = max(1, a.batches // 2)
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(prof_batches):
            step(i + 1)
    profiled = (time.perf_counter() - t0) / (prof_batches * bs)
    cat = {"matmul": 0.0, "softmax": 0.0}
    for ev in prof.key_averages():
        c = op_category(ev.key)
        if c is not None:
            cat[c] += ev.self_cpu_time_total / 1e6
    n = prof_batches * bs
    fp32 = bf16 = 0.0
    if a.role == "device" and acts is not None:
        sample = acts[: max(1, bs // mb)].contiguous()
        fp32 = len(wire.encode_state({"a": sample}, dtype="float32", codec="none")) / len(sample)
        bf16 = len(wire.encode_state({"a": sample}, dtype="bfloat16", codec="zstd")) / len(sample)
    res = Probe(a.role, per_sample, cat["matmul"] / n, cat["softmax"] / n, profiled, fp32, bf16)
    a.out.write_text(json.dumps(asdict(res)))
    return 0


# ---------------------------------------------------------------------------------- one scenario
@dataclass(frozen=True)
class RunConfig:
    devices: int
    rounds: int
    epochs: int
    batch_size: int
    lr: float
    seed: int
    model: str
    split_at: str
    micro_batches: int
    transport: str
    device_cpu: float
    edge_threads: int
    probe_batches: int
    timeout_s: float
    data: DataSubset
    link: LinkSpec
    emulate: bool
    work: Path


@dataclass(frozen=True)
class Stages:
    """Per round, each measured alone in this run: one device's compute, one link's transfer (the
    slower direction), the edge's compute for all devices, and the server's evaluation."""

    device_s: float
    link_s: float
    edge_s: float
    eval_s: float
    device_busy_s: float | None = None  # in the run: one device's CPU-seconds / its CPU share (not alone)

    @property
    def slowest(self) -> float:
        return max(self.device_s, self.link_s, self.edge_s)


@dataclass(frozen=True)
class Result:
    scenario: int
    title: str
    status: str  # ok | skipped | failed
    reason: str = ""
    time_to_train_s: float | None = None
    round_s: float | None = None
    edge_cpu_pct: float | None = None
    edge_gpu_pct: float | None = None
    accuracy: float | None = None
    transfer_s: float | None = None
    matmul_s: float | None = None
    softmax_s: float | None = None
    bytes_per_link_round: float | None = None
    act_bytes_epoch_fp32: float | None = None
    act_bytes_epoch_bf16_zstd: float | None = None
    act_bytes_epoch_measured: float | None = None
    device_cpu_s_round: float | None = None
    split_train_s: float | None = None  # the split client's own timing of its training (split_seconds)
    param_bytes_round: float | None = None
    stages: Stages | None = None
    accuracies: tuple[float | None, ...] = ()
    settings: Mapping[str, str] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""), "OMP_NUM_THREADS": str(threads),
                "MKL_NUM_THREADS": str(threads), "FEDCORE_LOG_LEVEL": "INFO"})
    return env


def _common_sets(cfg: RunConfig, sc: Scenario) -> list[str]:
    sets = {"model": cfg.model, "num_partitions": str(cfg.devices), "seed": str(cfg.seed), **sc.settings}
    return [arg for k, v in sets.items() for arg in ("--set", f"{k}={v}")]


def _run_probe(ep: Endpoint, cpu: CpuShare | None, threads: int, role: str, cfg: RunConfig, sc: Scenario,
               out: Path) -> Probe:
    argv = [sys.executable, "-m", "experiments.edge_scenarios", "_probe", "--role", role, "--data-dir",
            str(cfg.data.folder), "--model", cfg.model, "--split-at", cfg.split_at, "--batch-size",
            str(cfg.batch_size), "--micro-batches", str(cfg.micro_batches if sc.split else 1), "--batches",
            str(cfg.probe_batches), "--seed", str(cfg.seed), "--out", str(out)]
    if sc.split:
        argv += ["--wire-dtype", "bfloat16" if sc.settings.get("split_dtype") == "bf16" else "float32"]
    if sc.softmax_ext and role in ("device", "full"):
        argv.append("--softmax-ext")
    if sc.matmul_ext and role == "edge":
        argv.append("--matmul-ext")
    proc = popen_in(ep, argv, cpu=cpu, env=_env(threads), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        text, _ = proc.communicate(timeout=cfg.timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        raise RuntimeError(f"{role} probe timed out")
    if proc.returncode != 0:
        raise RuntimeError(f"{role} probe failed: {text.decode(errors='replace').strip()[-600:]}")
    return Probe(**json.loads(out.read_text()))


def _gpu_sampler() -> Any:
    """An NVML handle for GPU 0, or None (no pynvml, no driver or no GPU)."""
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetHandleByIndex(0)
    except Exception:  # noqa: BLE001 - any NVML failure means "no GPU figure"
        return None


def _read_history(ckpt: Path) -> list[dict[str, Any]]:
    try:
        return list(json.loads((ckpt / "state.json").read_text()).get("history", []))
    except (OSError, ValueError):
        return []


def _global_keys(ckpt: Path) -> set[str]:
    from fedcore import wire

    try:
        state = json.loads((ckpt / "state.json").read_text())
        return set(wire.decode_state((ckpt / state["model"]).read_bytes()))
    except (OSError, ValueError, KeyError):
        return set()


def _expected_keys(cfg: RunConfig, sc: Scenario) -> set[str]:
    """Parameter names the global model must hold: the whole model, or the device part in split mode."""
    import torch

    from fedcore.app.models import build_model

    model = build_model(cfg.model, "cifar10", seed=cfg.seed)
    if not sc.split:
        return set(model.state_dict())
    from fedcore.split import cut

    return set(cut(model, at=cfg.split_at).device_side.state_dict()) if isinstance(model, torch.nn.Module) else set()


def run_scenario(sc: Scenario, cfg: RunConfig, topo: Topology, cpus: Sequence[CpuShare | None],
                 throughput: tuple[Throughput, Throughput]) -> Result:
    """Start the edge and K devices for one scenario, follow its rounds, then probe its stages."""
    work = cfg.work / f"s{sc.number}"
    ckpt, logs = work / "ckpt", work / "logs"
    if ckpt.exists():
        for f in ckpt.iterdir():
            f.unlink()
    logs.mkdir(parents=True, exist_ok=True)
    rest_port, grpc_port = (REST_PORT, GRPC_PORT) if topo.emulated else (_free_port(), _free_port())
    net = ["--transport", cfg.transport, "--host", topo.edge.address, "--rest-port", str(rest_port),
           "--grpc-port", str(grpc_port), "--dataset", "cifar10", "--data-dir", str(cfg.data.folder)]
    server_argv = [sys.executable, "-m", "fedcore", "server", *net, "--min-clients", str(cfg.devices), "--autorun",
                   "--rounds", str(cfg.rounds), "--exit-when-done", "--no-auth", "--checkpoint-dir", str(ckpt),
                   *_common_sets(cfg, sc), "--set", f"local_epochs={cfg.epochs}", "--set",
                   f"batch_size={cfg.batch_size}", "--set", f"lr={cfg.lr}"]
    with open(logs / "edge.log", "wb") as log:
        server = popen_in(topo.edge, server_argv, env=_env(cfg.edge_threads), stdout=log, stderr=subprocess.STDOUT)
    clients: list[subprocess.Popen[bytes]] = []
    gpu = _gpu_sampler()
    samples: list[tuple[float, float]] = []
    gpu_samples: list[tuple[float, float]] = []
    try:
        for i, ep in enumerate(topo.devices):
            argv = [sys.executable, "-m", "fedcore", "client", "--name", f"device{i}", "--index", str(i),
                    *net,
                    "--timeout", str(int(cfg.timeout_s)), *_common_sets(cfg, sc)]
            with open(logs / f"device{i}.log", "wb") as log:
                clients.append(popen_in(ep, argv, cpu=cpus[i], env=_env(1), stdout=log, stderr=subprocess.STDOUT))
        end = time.monotonic() + cfg.timeout_s
        seen = 0
        device_samples: list[list[tuple[float, float]]] = [[] for _ in clients]
        while server.poll() is None:
            now = time.time()
            cpu_s = proc_cpu_seconds(server.pid)
            if cpu_s is not None:
                samples.append((now, cpu_s))
            for c, dev_samples in zip(clients, device_samples):
                if (dc := proc_cpu_seconds(c.pid)) is not None:
                    dev_samples.append((now, dc))
            if gpu is not None:
                import pynvml

                gpu_samples.append((now, float(pynvml.nvmlDeviceGetUtilizationRates(gpu).gpu)))
            hist = _read_history(ckpt)
            for rec in hist[seen:]:
                acc = rec.get("accuracy")
                print(f"  scenario {sc.number} round {rec['round']}/{cfg.rounds}: "
                      f"{rec['duration_s']:.1f} s, accuracy {acc if acc is None else round(acc, 4)}, "
                      f"{rec['bytes_in']} B in, {rec['bytes_out']} B out", flush=True)
            seen = len(hist)
            dead = [c for c in clients if c.poll() is not None and c.returncode != 0]
            if dead:
                raise RuntimeError(f"a device exited with code {dead[0].returncode}; see {logs}")
            if time.monotonic() > end:
                raise RuntimeError(f"timed out after {cfg.timeout_s:.0f} s; see {logs}")
            time.sleep(0.5)
        if server.returncode != 0:
            raise RuntimeError(f"the edge exited with code {server.returncode}; see {logs / 'edge.log'}")
    except RuntimeError as exc:
        return Result(sc.number, sc.title, "failed", str(exc), settings=dict(sc.settings))
    finally:
        for p in [server, *clients]:
            if p.poll() is None:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=10)
    hist = _read_history(ckpt)
    if len(hist) < cfg.rounds:
        return Result(sc.number, sc.title, "failed", f"only {len(hist)} of {cfg.rounds} rounds in the history; "
                      f"see {logs}", settings=dict(sc.settings))
    keys, want = _global_keys(ckpt), _expected_keys(cfg, sc)
    if keys != want:
        return Result(sc.number, sc.title, "failed",
                      f"the global model holds {len(keys)} tensors, expected {len(want)} "
                      f"({'device part' if sc.split else 'whole model'}): the scenario's mode did not run",
                      settings=dict(sc.settings))
    start = hist[0]["finished_at"] - hist[0]["duration_s"]
    stop = hist[-1]["finished_at"]
    edge_cpu = _rate_between(samples, start, stop)
    steady = hist[1:] or hist  # without the warm-up round when there are more
    steady_start = steady[0]["finished_at"] - steady[0]["duration_s"]
    dev_rates = [r for d in device_samples if (r := _rate_between(d, steady_start, stop)) is not None]
    device_cpu_round = float(np.mean(dev_rates)) / 100 * (stop - steady_start) / len(steady) if dev_rates else None
    gpu_pct = _mean_between(gpu_samples, start, stop)
    # Compute stages, each alone in the device's namespace and CPU share and in the edge's.
    probes_dir = work / "probes"
    probes_dir.mkdir(exist_ok=True)
    if sc.split:
        dev = _run_probe(topo.devices[0], cpus[0], 1, "device", cfg, sc, probes_dir / "device.json")
        edge = _run_probe(topo.edge, None, cfg.edge_threads, "edge", cfg, sc, probes_dir / "edge.json")
    else:
        dev = _run_probe(topo.devices[0], cpus[0], 1, "full", cfg, sc, probes_dir / "device.json")
        edge = None
    n_dev = per_device_train_samples(cfg)
    per_round = n_dev * cfg.epochs
    up, down = throughput
    # Bytes per device link per round: the server counts parameter payloads and, in split mode,
    # every activation message in and every gradient reply out (RoundRecord bytes_in / bytes_out).
    bytes_in = float(np.mean([h["bytes_in"] for h in hist])) / cfg.devices
    bytes_out = float(np.mean([h["bytes_out"] for h in hist])) / cfg.devices
    link_s = max(bytes_in / up.bytes_s, bytes_out / down.bytes_s)
    transfer_total = (bytes_in / up.bytes_s + bytes_out / down.bytes_s) * cfg.rounds
    split_bytes = [m.get("split_bytes_up", 0.0) + m.get("split_bytes_down", 0.0)
                   for h in hist for m in h.get("client_metrics", {}).values()]
    measured_act = float(np.mean(split_bytes)) / cfg.epochs if sc.split and split_bytes else None
    split_secs = [m["split_seconds"] for h in steady for m in h.get("client_metrics", {}).values()
                  if "split_seconds" in m]
    split_train = float(np.mean(split_secs)) if split_secs else None
    ev = _run_probe(topo.edge, None, cfg.edge_threads, "eval", cfg, sc, probes_dir / "eval.json")
    eval_s = ev.seconds_per_sample * cfg.data.test_images
    stages = Stages(device_s=dev.seconds_per_sample * per_round, link_s=link_s,
                    edge_s=(edge.seconds_per_sample * per_round * cfg.devices) if edge else 0.0, eval_s=eval_s,
                    device_busy_s=(device_cpu_round / cfg.device_cpu
                                   if device_cpu_round is not None and cpus[0] is not None else None))
    total_samples = per_round * cfg.rounds * cfg.devices
    matmul = dev.matmul_s_per_sample * total_samples + (edge.matmul_s_per_sample * total_samples if edge else 0)
    softmax = dev.softmax_s_per_sample * total_samples + (edge.softmax_s_per_sample * total_samples if edge else 0)
    return Result(
        sc.number, sc.title, "ok", time_to_train_s=stop - start,
        round_s=float(np.mean([h["duration_s"] for h in steady])), edge_cpu_pct=edge_cpu,
        edge_gpu_pct=gpu_pct, split_train_s=split_train,
        accuracy=hist[-1].get("accuracy"), transfer_s=transfer_total,
        matmul_s=matmul, softmax_s=softmax, bytes_per_link_round=bytes_in + bytes_out,
        act_bytes_epoch_measured=measured_act, device_cpu_s_round=device_cpu_round,
        act_bytes_epoch_fp32=2 * dev.act_bytes_fp32 * n_dev if sc.split else None,
        act_bytes_epoch_bf16_zstd=2 * dev.act_bytes_bf16_zstd * n_dev if sc.split else None,
        param_bytes_round=None if sc.split else bytes_in + bytes_out, stages=stages,
        accuracies=tuple(h.get("accuracy") for h in hist), settings=dict(sc.settings))


def per_device_train_samples(cfg: RunConfig) -> int:
    """fedcore's IID partition of the subset into K shares, each split 8:1:1 (train : val : test)."""
    share = cfg.data.train_images // cfg.devices
    return int(share * 0.8)


def _rate_between(samples: Sequence[tuple[float, float]], start: float, stop: float) -> float | None:
    """CPU % of one core between two wall times, from (time, cumulative CPU seconds) samples."""
    inside = [s for s in samples if start - 0.6 <= s[0] <= stop + 0.6]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return None
    (t0, c0), (t1, c1) = inside[0], inside[-1]
    return 100.0 * (c1 - c0) / (t1 - t0)


def _mean_between(samples: Sequence[tuple[float, float]], start: float, stop: float) -> float | None:
    inside = [v for t, v in samples if start <= t <= stop]
    return float(np.mean(inside)) if inside else None


# ---------------------------------------------------------------------------------- goals
@dataclass(frozen=True)
class Goal:
    name: str
    met: bool | None  # None: not measurable in this run
    detail: str


def evaluate_goals(results: Mapping[int, Result]) -> list[Goal]:
    ok = {n: r for n, r in results.items() if r.status == "ok"}
    goals: list[Goal] = []
    s1, s2, s3, s6 = ok.get(1), ok.get(2), ok.get(3), ok.get(6)
    if s3 is not None and s3.stages is not None and s3.round_s is not None:
        train_round = s3.round_s - s3.stages.eval_s
        ratio = train_round / s3.stages.slowest
        st = s3.stages
        inner = (f"; the devices' split training alone (split_seconds) {s3.split_train_s:.2f} s = "
                 f"{s3.split_train_s / st.slowest:.2f} x" if s3.split_train_s else "")
        if st.device_busy_s:
            inner += (f"; in the run a device is busy {st.device_busy_s:.2f} s per round (its CPU-seconds / its "
                      f"share, compute plus HTTP and wire work): round / that = {train_round / st.device_busy_s:.2f}")
        goals.append(Goal("scenario 3 round time <= 1.15 x its slowest stage", ratio <= 1.15,
                          f"{train_round:.2f} s / {st.slowest:.2f} s = {ratio:.2f} (device {st.device_s:.2f} s, "
                          f"link {st.link_s:.2f} s, edge {st.edge_s:.2f} s; eval {st.eval_s:.2f} s taken off the "
                          f"round{inner})"))
    else:
        goals.append(Goal("scenario 3 round time <= 1.15 x its slowest stage", None, "scenario 3 did not run"))
    if s2 is not None and s3 is not None and s2.time_to_train_s and s3.time_to_train_s:
        r = s3.time_to_train_s / s2.time_to_train_s
        goals.append(Goal("scenario 3 <= 0.7 x scenario 2 (paper 0.74)", r <= 0.7,
                          f"{s3.time_to_train_s:.1f} s / {s2.time_to_train_s:.1f} s = {r:.2f}"))
    else:
        goals.append(Goal("scenario 3 <= 0.7 x scenario 2 (paper 0.74)", None, "scenario 2 or 3 did not run"))
    if s1 is not None and s6 is not None and s1.time_to_train_s and s6.time_to_train_s:
        r = s6.time_to_train_s / s1.time_to_train_s
        goals.append(Goal("scenario 6 <= 0.6 x scenario 1 (paper 0.53)", r <= 0.6,
                          f"{s6.time_to_train_s:.1f} s / {s1.time_to_train_s:.1f} s = {r:.2f}"
                          + (_stage_line(s1, s6) if r > 0.6 else "")))
    elif s1 is not None and s3 is not None and s1.time_to_train_s and s3.time_to_train_s:
        r = s3.time_to_train_s / s1.time_to_train_s
        goals.append(Goal("scenario 6 <= 0.6 x scenario 1 (paper 0.53)", None,
                          f"scenario 6 did not run; stand-in without the cuda_ext switches, scenario 3 / scenario 1: "
                          f"{s3.time_to_train_s:.1f} s / {s1.time_to_train_s:.1f} s = {r:.2f}" + _stage_line(s1, s3)))
    else:
        goals.append(Goal("scenario 6 <= 0.6 x scenario 1 (paper 0.53)", None, "scenario 1 or 6 did not run"))
    if s1 is not None and s1.accuracy is not None:
        for n in (2, 3, 4, 5, 6):
            sn = ok.get(n)
            if sn is None or sn.accuracy is None:
                goals.append(Goal(f"scenario {n} accuracy within 1 point of scenario 1", None,
                                  f"scenario {n} did not run"))
                continue
            gap = 100 * (sn.accuracy - s1.accuracy)
            goals.append(Goal(f"scenario {n} accuracy within 1 point of scenario 1", abs(gap) <= 1.0,
                              f"{100 * sn.accuracy:.2f} % vs {100 * s1.accuracy:.2f} % ({gap:+.2f} points)"))
    return goals


def _stage_line(s1: Result, other: Result) -> str:
    a, b = s1.stages, other.stages
    if a is None or b is None:
        return ""
    return (f"; per round: scenario 1 device {a.device_s:.2f} s, link {a.link_s:.2f} s; scenario {other.scenario} "
            f"device {b.device_s:.2f} s, link {b.link_s:.2f} s, edge {b.edge_s:.2f} s")


# ---------------------------------------------------------------------------------- report
CSV_FIELDS = ["scenario", "title", "status", "reason", "time_to_train_s", "paper_time_s", "round_s", "edge_cpu_pct",
              "edge_gpu_pct", "paper_gpu_pct", "accuracy_pct", "paper_accuracy_pct", "transfer_s", "paper_transfer_s",
              "matmul_s", "paper_matmul_s", "softmax_s", "paper_softmax_s", "device_stage_s", "link_stage_s",
              "edge_stage_s", "eval_s", "device_cpu_s_round", "split_train_s", "bytes_per_link_round", "settings"]


def _f(v: float | None, fmt: str = ".2f") -> str:
    return "n/a" if v is None else format(v, fmt)


def write_csv(path: Path, results: Sequence[Result]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in results:
            t8, t9 = PAPER_T8[r.scenario], PAPER_T9[r.scenario]
            st = r.stages
            w.writerow({
                "scenario": r.scenario, "title": r.title, "status": r.status, "reason": r.reason,
                "time_to_train_s": r.time_to_train_s, "paper_time_s": t8[0], "round_s": r.round_s,
                "edge_cpu_pct": r.edge_cpu_pct, "edge_gpu_pct": r.edge_gpu_pct, "paper_gpu_pct": t8[1],
                "accuracy_pct": None if r.accuracy is None else 100 * r.accuracy, "paper_accuracy_pct": t8[2],
                "transfer_s": r.transfer_s, "paper_transfer_s": t9[0], "matmul_s": r.matmul_s,
                "paper_matmul_s": t9[1], "softmax_s": r.softmax_s, "paper_softmax_s": t9[2],
                "device_stage_s": st.device_s if st else None, "link_stage_s": st.link_s if st else None,
                "edge_stage_s": st.edge_s if st else None, "eval_s": st.eval_s if st else None,
                "device_cpu_s_round": r.device_cpu_s_round, "split_train_s": r.split_train_s,
                "bytes_per_link_round": r.bytes_per_link_round,
                "settings": " ".join(f"{k}={v}" for k, v in r.settings.items()),
            })


def write_markdown(path: Path, results: Sequence[Result], goals: Sequence[Goal], setup: Mapping[str, str]) -> None:
    lines = ["# WASM paper, Tables 7-9: device/edge scenarios (ours beside the paper's)", "",
             "Generated by " + setup["command"], ""]
    lines += [f"- **{k}**: {v}" for k, v in setup.items() if k != "command"]
    lines += ["", "## Table 8: time to train, utilisation, accuracy", "",
              "| scenario | ours: time to train (s) | paper (s) | ours ÷ ours s1 | paper ÷ paper s1 | "
              "ours: edge CPU (% of a core) | ours: edge GPU (%) | paper GPU (%) | ours: accuracy (%) | paper (%) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    base = next((r.time_to_train_s for r in results if r.scenario == 1 and r.status == "ok"), None)
    for r in results:
        t8 = PAPER_T8[r.scenario]
        if r.status != "ok":
            lines.append(f"| {r.scenario} {r.title} | {r.status}: {r.reason} | {t8[0]} | | {t8[0] / PAPER_T8[1][0]:.2f} "
                         f"| | | {t8[1]} | | {t8[2]} |")
            continue
        rel = _f(r.time_to_train_s / base) if base and r.time_to_train_s else "n/a"
        acc = None if r.accuracy is None else 100 * r.accuracy
        lines.append(f"| {r.scenario} {r.title} | {_f(r.time_to_train_s, '.1f')} | {t8[0]} | {rel} | "
                     f"{t8[0] / PAPER_T8[1][0]:.2f} | {_f(r.edge_cpu_pct, '.0f')} | {_f(r.edge_gpu_pct, '.0f')} | "
                     f"{t8[1]} | {_f(acc)} | {t8[2]} |")
    lines += ["", "## Table 9: data transfer, matmul and softmax time", "",
              "| scenario | ours: transfer (s) | paper (s) | ours: matmul (s) | paper (s) | ours: softmax (s) | paper (s) |",
              "|---|---|---|---|---|---|---|"]
    for r in results:
        t9 = PAPER_T9[r.scenario]
        if r.status != "ok":
            lines.append(f"| {r.scenario} {r.title} | {r.status} | {t9[0] or 'N/A'} | | {t9[1]} | | {t9[2]} |")
            continue
        lines.append(f"| {r.scenario} {r.title} | {_f(r.transfer_s)} | {t9[0] or 'N/A'} | {_f(r.matmul_s)} | {t9[1]} | "
                     f"{_f(r.softmax_s)} | {t9[2]} |")
    lines += ["", "## Stage times per round (each measured alone in this run) and traffic", "",
              "| scenario | round (s) | device compute (s) | link, slower direction (s) | edge compute, all devices (s) "
              "| server eval (s) | device CPU in the run (CPU-s) | split training in the client (s) "
              "| bytes per link per round |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r.status == "ok" and r.stages is not None:
            st = r.stages
            lines.append(f"| {r.scenario} | {_f(r.round_s)} | {st.device_s:.2f} | {st.link_s:.2f} | {st.edge_s:.2f} | "
                         f"{st.eval_s:.2f} | {_f(r.device_cpu_s_round)} | {_f(r.split_train_s)} | "
                         f"{_f(r.bytes_per_link_round, ',.0f')} |")
    acts = [r for r in results if r.status == "ok" and r.act_bytes_epoch_fp32]
    s1 = next((r for r in results if r.scenario == 1 and r.status == "ok"), None)
    if acts:
        r = acts[0]
        lines += ["", f"Activations + gradients per device per epoch: {_f(r.act_bytes_epoch_fp32, ',.0f')} B fp32, "
                  f"{_f(r.act_bytes_epoch_bf16_zstd, ',.0f')} B bf16+zstd (wire size of real activations from the "
                  f"device probe × samples); measured by the split client (split_bytes_up + split_bytes_down, "
                  f"scenario {r.scenario}, {r.settings.get('split_dtype', 'fp32')}): "
                  f"{_f(r.act_bytes_epoch_measured, ',.0f')} B. Scenario 1 moves "
                  f"{_f(s1.param_bytes_round if s1 else None, ',.0f')} B of parameters per device per round "
                  "(both directions, the configured wire format)."]
    lines += ["", "## Goals (issue 12)", ""]
    for g in goals:
        mark = {True: "met", False: "MISSED", None: "not measured"}[g.met]
        lines.append(f"- **{mark}**: {g.name}: {g.detail}")
    lines += ["", "## How each column is measured", "",
              "- *Time to train*: from the first round's start to the last round's end, from the server's round "
              "history (state.json); includes the server's evaluation after each round and the devices' "
              "validation pass.",
              "- *Edge CPU*: utime+stime of the `fedcore server` process (/proc/<pid>/stat, all threads) over the "
              "same interval, in % of one core; GPU through NVML (pynvml) when present, else n/a.",
              "- *Accuracy*: the server's evaluation of the last global model on the test subset.",
              "- *Transfer*: bytes per device link (parameters from the round history; activations and gradients "
              "from the wire size of real activations × samples) ÷ the TCP throughput measured on that link in "
              "this run, summed over rounds and both directions, mean per link. Overlap hides it; it does not "
              "shrink it.",
              "- *Matmul / softmax*: torch.profiler self-CPU time of aten::mm/bmm/addmm (+ cuda_ext linear) and "
              "aten::_softmax/_log_softmax (+ the fused cuda_ext matmul_softmax) per sample, from a short probe of "
              "each side (in its namespace and CPU share), × the samples each side processes in the run; "
              "CPU-seconds summed over devices and edge.",
              "- *Stages*: the same probes timed without the profiler (device: its part's forward + backward for "
              "its samples; edge: its part for all devices' samples), the link: the slower direction's bytes ÷ "
              "measured throughput. *Round* is the mean round time without the first round (imports and "
              "warm-up under the device's CPU quota), all rounds when there is one. Split probes also encode what their side sends and decode what it receives "
              "(fedcore.wire, the run's dtype). *Device CPU in the run*: CPU-seconds per round of one `fedcore "
              "client` process (/proc, mean over devices): with a CPU quota, CPU-s ÷ share is the time the "
              "device is busy, including its HTTP/wire work that the probe leaves out.", ""]
    path.write_text("\n".join(lines))


def write_plot(path: Path, results: Sequence[Result]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if r.status == "ok"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    ns = [r.scenario for r in ok]
    base = next((r.time_to_train_s for r in ok if r.scenario == 1), None) or (ok[0].time_to_train_s if ok else 1)
    width = 0.38
    xs = np.arange(len(ns))
    ax1.bar(xs - width / 2, [(r.time_to_train_s or 0) / (base or 1) for r in ok], width, label="ours")
    ax1.bar(xs + width / 2, [PAPER_T8[n][0] / PAPER_T8[1][0] for n in ns], width, label="paper")
    ax1.set_xticks(xs, [str(n) for n in ns])
    ax1.set_xlabel("scenario")
    ax1.set_ylabel("time to train ÷ scenario 1")
    ax1.set_title("Table 8: time to train (relative)")
    ax1.legend()
    ax2.bar(xs - width / 2, [100 * (r.accuracy or 0) for r in ok], width, label="ours")
    ax2.bar(xs + width / 2, [PAPER_T8[n][2] for n in ns], width, label="paper")
    ax2.set_xticks(xs, [str(n) for n in ns])
    ax2.set_xlabel("scenario")
    ax2.set_ylabel("accuracy (%)")
    ax2.set_title("Table 8: accuracy")
    ax2.set_ylim(0, 115)
    ax2.legend(loc="upper left", ncols=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.edge_scenarios", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--scenarios", default="1,2,3,4,5,6", help="comma list of Table 7 scenarios")
    p.add_argument("--devices", type=int, default=2, help="K device processes")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=1, help="local epochs per round")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, help="model zoo name (default: the ViT when registered)")
    p.add_argument("--split-at", default="blocks.1", help="cut point (the ViT's blocks.N)")
    p.add_argument("--micro-batches", type=int, default=4)
    p.add_argument("--window", type=int, default=4, help="in-flight micro-batches with overlap (scenarios 3, 6)")
    p.add_argument("--split-dtype", default="fp32", choices=["fp32", "bf16"], help="activations on the wire")
    p.add_argument("--transport", default="rest", choices=["rest", "grpc"])
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--train-fraction", type=float, default=0.05, help="fraction of the 50,000 training images")
    p.add_argument("--test-size", type=int, default=1000, help="test images the server evaluates on")
    p.add_argument("--rate-mbit", type=float, default=100.0, help="each device link's rate")
    p.add_argument("--rtt-ms", type=float, default=20.0, help="each device link's RTT (netem, else a userspace delay line)")
    p.add_argument("--device-cpu", type=float, default=0.25, help="CPU share of each device process (cores)")
    p.add_argument("--edge-threads", type=int, default=1, help="torch threads of the edge process")
    p.add_argument("--probe-batches", type=int, default=6, help="mini-batches each stage probe times")
    p.add_argument("--no-emulation", action="store_true", help="loopback, no namespaces or CPU share")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds one scenario may take")
    p.add_argument("--quick", action="store_true", help="1 round, 1%% of the images, 200 test images (tests)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--tag", default="edge_scenarios", help="prefix of the output files")
    p.add_argument("--work-dir", type=Path, default=None, help="data subset, checkpoints, logs (default: a temp dir)")
    a = p.parse_args(argv)
    if a.quick:
        a.rounds, a.train_fraction, a.test_size, a.probe_batches = 1, 0.01, 200, 2
        a.devices = 2 if a.devices == p.get_default("devices") else a.devices
    if a.devices < 1 or a.rounds < 1 or a.epochs < 1:
        p.error("--devices, --rounds and --epochs must be >= 1")
    if not 0 < a.train_fraction <= 1:
        p.error("--train-fraction must be in (0, 1]")
    try:
        a.scenario_list = sorted({int(s) for s in a.scenarios.split(",") if s.strip()})
    except ValueError:
        p.error(f"--scenarios expects numbers 1-6, got {a.scenarios!r}")
    if not a.scenario_list or any(n not in TITLES for n in a.scenario_list):
        p.error(f"--scenarios expects numbers 1-6, got {a.scenarios!r}")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_probe"]:
        return _probe_main(argv[1:])
    a = parse_args(argv)
    from fedcore.app.sysinfo import load_average, machine_line

    if not (a.data_dir / "cifar10_test.npz").exists() and not (a.data_dir / "cifar-10-batches-py").is_dir():
        print(f"no CIFAR-10 in {a.data_dir} (use --data-dir)", file=sys.stderr)
        return 2
    vit = vit_model_name()
    model = a.model or vit or "cifar_cnn"
    model_note = model if (a.model or vit) else "cifar_cnn (no ViT registered in fedcore.app.models yet)"
    import torch

    unified = torch.cuda.is_available()
    scenarios = make_scenarios(a.split_at, a.micro_batches, a.window, a.split_dtype, unified)
    work = a.work_dir or Path(tempfile.mkdtemp(prefix="edge_scenarios_"))
    work.mkdir(parents=True, exist_ok=True)
    data = make_subset(a.data_dir, work, a.train_fraction, a.test_size, a.seed)
    link = LinkSpec(a.rate_mbit, a.rtt_ms)
    results: list[Result] = []
    t_start = time.time()
    with emulated_network(a.devices, link, allow_loopback=True) if not a.no_emulation else _loopback(a.devices) as topo:
        print(f"network: {topo.note}", flush=True)
        cpus: list[CpuShare | None] = []
        try:
            if topo.emulated:
                cpus = [CpuShare(a.device_cpu, core=i) for i in range(a.devices)]
                cpu_note = cpus[0].describe() if cpus[0] else ""
            else:
                cpus = [None] * a.devices
                cpu_note = "not limited (loopback run); one torch thread per device"
            print(f"device CPU: {cpu_note}", flush=True)
            up = measure_throughput(topo.devices[0], topo.edge, _probe_bytes(link, topo.emulated))
            down = measure_throughput(topo.edge, topo.devices[0], _probe_bytes(link, topo.emulated), port=5202)
            rtt = measure_rtt_ms(topo.devices[0], topo.edge)
            print(f"link 0 measured: up {up.mbit_s:.1f} Mbit/s, down {down.mbit_s:.1f} Mbit/s, RTT {rtt:.2f} ms",
                  flush=True)
            cfg = RunConfig(a.devices, a.rounds, a.epochs, a.batch_size, a.lr, a.seed, model, a.split_at,
                            a.micro_batches, a.transport, a.device_cpu, a.edge_threads, a.probe_batches, a.timeout,
                            data, link, topo.emulated, work)
            for n in a.scenario_list:
                sc = scenarios[n]
                why = scenario_skip_reason(sc, model)
                if why is not None:
                    print(f"scenario {n} ({sc.title}): skipped: {why}", flush=True)
                    results.append(Result(n, sc.title, "skipped", why, settings=dict(sc.settings)))
                    continue
                print(f"scenario {n} ({sc.title}): {' '.join(f'{k}={v}' for k, v in sc.settings.items())}", flush=True)
                t0 = time.monotonic()
                try:
                    res = run_scenario(sc, cfg, topo, cpus, (up, down))
                except RuntimeError as exc:
                    res = Result(n, sc.title, "failed", str(exc), settings=dict(sc.settings))
                results.append(res)
                if res.status == "ok":
                    print(f"scenario {n}: time to train {res.time_to_train_s:.1f} s, accuracy "
                          f"{_f(None if res.accuracy is None else 100 * res.accuracy)} %, edge CPU "
                          f"{_f(res.edge_cpu_pct, '.0f')} %, transfer {_f(res.transfer_s)} s, matmul "
                          f"{_f(res.matmul_s)} s, softmax {_f(res.softmax_s)} s ({time.monotonic() - t0:.0f} s)",
                          flush=True)
                else:
                    print(f"scenario {n}: {res.status}: {res.reason}", flush=True)
        finally:
            for c in cpus:
                if c is not None:
                    c.close()
    goals = evaluate_goals({r.scenario: r for r in results})
    for g in goals:
        print(f"goal {'met' if g.met else ('MISSED' if g.met is False else 'not measured')}: {g.name}: {g.detail}")
    n_dev = per_device_train_samples(cfg)
    setup = {
        "command": "`" + " ".join(["python -m experiments.edge_scenarios", *argv]) + "`",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{machine_line()}; load average at the end {load_average()}; no GPU" if not unified
        else f"{machine_line()}; GPU {torch.cuda.get_device_name(0)}",
        "network": topo.note + f"; measured on link 0: up {up.mbit_s:.1f} Mbit/s, down {down.mbit_s:.1f} Mbit/s, "
        f"TCP connect RTT {rtt:.2f} ms",
        "device CPU": cpu_note,
        "edge": f"one `fedcore server` process, {a.edge_threads} torch thread(s), no CPU limit",
        "data": f"CIFAR-10 (JPEG q75 copy): {data.train_images} training images ({100 * a.train_fraction:g} % of "
        f"50,000, seeded), {a.devices} IID shares each split 8:1:1 ⇒ {n_dev} training images per device; "
        f"server evaluates on {data.test_images} test images",
        "training": f"model {model_note}, cut at {a.split_at}, {a.rounds} round(s) × {a.epochs} local epoch(s), "
        f"batch {a.batch_size}, SGD lr {a.lr}, seed {a.seed}, {a.micro_batches} micro-batches, overlap window "
        f"{a.window}, activations {a.split_dtype}, transport {a.transport}",
        "wall": f"{time.time() - t_start:.0f} s for the whole run",
    }
    a.out.mkdir(parents=True, exist_ok=True)
    write_csv(a.out / f"{a.tag}.csv", results)
    write_markdown(a.out / f"{a.tag}.md", results, goals, setup)
    write_plot(a.out / f"{a.tag}.png", results)
    print(f"wrote {a.out / a.tag}.md, .csv, .png")
    return 0 if all(r.status != "failed" for r in results) else 1


def _probe_bytes(link: LinkSpec, emulated: bool) -> int:
    """About one second of the link's rate (at least 1 MiB), 32 MiB on loopback."""
    return max(1 << 20, int(link.rate_bytes_s)) if emulated else 32 << 20


class _loopback:
    """Topology context for --no-emulation."""

    def __init__(self, k: int) -> None:
        lo = Endpoint(None, "127.0.0.1")
        self.topo = Topology(lo, (lo,) * k, None, False, "loopback (--no-emulation), links not shaped")

    def __enter__(self) -> Topology:
        return self.topo

    def __exit__(self, *exc: object) -> None:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
