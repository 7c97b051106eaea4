"""Benchmark of cuda_ext.matmul_softmax against the unfused torch expression.

CPU: time of the C++ path against ``torch.mm(x, w, out=preallocated)`` alone (goal <= 1.3:
the softmax hidden behind / folded into the matmul) and against ``torch.softmax(x @ w, -1)``,
plus the peak-memory ratio (extra resident memory of one call, measured with /proc/self
VmHWM after resetting it through clear_refs). ``--baseline-so`` adds the same ratio for an
older build of ``cuda_ext._C`` (e.g. a copy of the .so before a kernel change), measured in
the same interleaved run. CUDA (only when a GPU is present): sequential (copy all,
compute, copy back = chunks=1) vs overlapped vs torch, the overlap efficiency
t_overlapped / max(T_H2D, T_compute, T_D2H) with the three measured in the same run, and
the achieved H2D bandwidth.

    python experiments/matmul_softmax_bench.py [--quick] [--out experiments/results]
        [--baseline-so /path/to/old/_C.so]
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import importlib.util
import os
import platform
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import cuda_ext

CPU_SHAPES = [(4096, 256, 1024), (8192, 512, 2048), (16384, 128, 4096), (2048, 1024, 8192)]
GPU_SHAPES = [(65536, 1024, 512), (131072, 512, 1024), (32768, 4096, 256)]


def _status_kib(field: str) -> int:
    found = re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text())
    if found is None:
        raise RuntimeError(f"/proc/self/status has no {field} line")
    return int(found.group(1))


def _fixed_mmap_threshold() -> None:
    """Serve allocations >= 128 KiB by mmap and give them back on free (glibc otherwise
    raises the threshold after the first free, and freed heap memory stays resident)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 128 << 10)  # M_MMAP_THRESHOLD (also disables dynamic adjustment)
        libc.mallopt(-1, 128 << 10)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def peak_extra_bytes(fn) -> int:
    """Peak resident memory one call adds on top of what is resident before it."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = _status_kib("VmRSS")
    y = fn()
    peak = _status_kib("VmHWM")
    del y
    return (peak - base) * 1024


@dataclass(frozen=True)
class Timing:
    """One function's times over interleaved repeats: wall median (the reported figure),
    wall minimum and process CPU-time median (all threads). On a shared, oversubscribed
    machine the last two are steadier: waiting for a core inflates wall time, not CPU time."""

    median: float
    minimum: float
    cpu: float


def interleaved_timings(fns: list, reps: int) -> list[Timing]:
    """Per function; calls alternate so machine noise hits all alike."""
    for f in fns:
        f()
    wall: list[list[float]] = [[] for _ in fns]
    cpu: list[list[float]] = [[] for _ in fns]
    for _ in range(reps):
        for i, f in enumerate(fns):
            c, t = time.process_time(), time.perf_counter()
            f()
            wall[i].append(time.perf_counter() - t)
            cpu[i].append(time.process_time() - c)
    return [Timing(statistics.median(w), min(w), statistics.median(c)) for w, c in zip(wall, cpu)]


def interleaved_medians(fns: list, reps: int) -> list[float]:
    """Median wall seconds per function (interleaved, as :func:`interleaved_timings`)."""
    return [t.median for t in interleaved_timings(fns, reps)]


def load_baseline(path: Path | None):
    """An older build of cuda_ext._C, imported under another package name (PyInit__C)."""
    if path is None:
        return None
    spec = importlib.util.spec_from_file_location("fedcore_baseline._C", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load baseline module {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def bench_cpu(shapes, reps: int, baseline=None) -> list[dict]:
    rows = []
    for n, k, m in shapes:
        g = torch.Generator().manual_seed(0)
        x, w = torch.randn(n, k, generator=g), torch.randn(k, m, generator=g)
        mm_out, our_out, old_out = torch.empty(n, m), torch.empty(n, m), torch.empty(n, m)
        # ours / mm compares like with like: both write into a preallocated output; the
        # allocating call (fresh n x m output, page faults included) is reported beside.
        fns = [lambda: torch.mm(x, w, out=mm_out),
               lambda: cuda_ext.matmul_softmax(x, w, out=our_out),
               lambda: cuda_ext.matmul_softmax(x, w),
               lambda: torch.softmax(x @ w, dim=-1)]
        if baseline is not None:
            fns.append(lambda: baseline.matmul_softmax_cpu(x, w, old_out, 0))
        tm = interleaved_timings(fns, reps)
        t_mm, t_ours, t_alloc, t_ref = (t.median for t in tm[:4])
        t_old = [tm[4].median] if baseline is not None else []
        mem_ours = min(peak_extra_bytes(fns[2]) for _ in range(2))
        mem_ref = min(peak_extra_bytes(fns[3]) for _ in range(2))
        rows.append(dict(shape=(n, k, m), t_mm=t_mm, t_ours=t_ours, t_alloc=t_alloc, t_ref=t_ref,
                         min_ratio=tm[1].minimum / tm[0].minimum, cpu_ratio=tm[1].cpu / tm[0].cpu,
                         old_min_ratio=tm[4].minimum / tm[0].minimum if t_old else None,
                         old_cpu_ratio=tm[4].cpu / tm[0].cpu if t_old else None,
                         t_old=t_old[0] if t_old else None, mem_ours=mem_ours,
                         mem_ref=mem_ref, out_bytes=n * m * 4))
        old = f", before {t_old[0] / t_mm:.2f}x" if t_old else ""
        r = rows[-1]
        old += (f" (min {r['min_ratio']:.2f}x, cpu {r['cpu_ratio']:.2f}x"
                + (f"; before min {r['old_min_ratio']:.2f}x, cpu {r['old_cpu_ratio']:.2f}x)"
                   if t_old else ")"))
        print(f"cpu {n}x{k}x{m}: mm {t_mm * 1e3:.1f} ms, ours {t_ours * 1e3:.1f} ms = "
              f"{t_ours / t_mm:.2f}x mm{old}; allocating {t_alloc * 1e3:.1f} ms; torch "
              f"{t_ref * 1e3:.1f} ms = {t_alloc / t_ref:.2f}x; peak {mem_ours / 2**20:.0f} / {mem_ref / 2**20:.0f} MiB "
              f"= {mem_ours / max(mem_ref, 1):.2f}x", flush=True)
    return rows


def _cuda_time(fn, reps: int) -> float:
    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def bench_cuda(shapes, reps: int) -> list[dict]:
    rows = []
    for n, k, m in shapes:
        x = torch.randn(n, k).pin_memory()
        w = torch.randn(k, m)
        wd, xd = w.cuda(), x.cuda()
        yd = cuda_ext.matmul_softmax(xd, wd)
        yh = torch.empty(n, m).pin_memory()
        xbuf = torch.empty_like(xd)
        t_h2d = _cuda_time(lambda: xbuf.copy_(x, non_blocking=True), reps)
        t_comp = _cuda_time(lambda: cuda_ext.matmul_softmax(xd, wd), reps)
        t_d2h = _cuda_time(lambda: yh.copy_(yd, non_blocking=True), reps)
        t_seq = _cuda_time(lambda: cuda_ext.matmul_softmax(x, w, device="cuda", chunks=1), reps)
        t_ovl = _cuda_time(lambda: cuda_ext.matmul_softmax(x, w, device="cuda"), reps)
        t_torch = _cuda_time(lambda: torch.softmax(x.cuda(non_blocking=True) @ wd, -1).cpu(), reps)
        # the same pipeline with cuBLAS as the compute step (cuda_ext.matmul, edge matmul)
        t_mm_seq = _cuda_time(lambda: cuda_ext.matmul(x, w, device="cuda", chunks=1), reps)
        t_mm_ovl = _cuda_time(lambda: cuda_ext.matmul(x, w, device="cuda"), reps)
        bound = max(t_h2d, t_comp, t_d2h)
        rows.append(dict(shape=(n, k, m), t_h2d=t_h2d, t_comp=t_comp, t_d2h=t_d2h, t_seq=t_seq,
                         t_ovl=t_ovl, t_torch=t_torch, eff=t_ovl / bound, speedup=t_seq / t_ovl,
                         t_mm_seq=t_mm_seq, t_mm_ovl=t_mm_ovl,
                         h2d_gbs=x.numel() * 4 / t_h2d / 1e9))
        r = rows[-1]
        print(f"cuda {n}x{k}x{m}: H2D {t_h2d * 1e3:.2f} comp {t_comp * 1e3:.2f} D2H "
              f"{t_d2h * 1e3:.2f} | seq {t_seq * 1e3:.2f} ovl {t_ovl * 1e3:.2f} torch "
              f"{t_torch * 1e3:.2f} ms | eff {r['eff']:.2f} speedup {r['speedup']:.2f} "
              f"H2D {r['h2d_gbs']:.1f} GB/s | matmul seq {t_mm_seq * 1e3:.2f} ovl "
              f"{t_mm_ovl * 1e3:.2f} ms", flush=True)
    return rows


def machine() -> str:
    from fedcore.app.sysinfo import cpu_model

    return (f"{cpu_model()}, {torch.get_num_threads()} torch threads, {platform.system()} "
            f"{platform.release()}, torch {torch.__version__}, cuda_ext backend "
            f"{cuda_ext.BACKEND} (CUDA kernels built: {cuda_ext.WITH_CUDA})")


def write_cpu_md(rows: list[dict], path: Path, reps: int, baseline: Path | None) -> None:
    has_old = any(r["t_old"] is not None for r in rows)
    lines = [
        "# matmul_softmax: CPU C++ path vs the matmul alone and vs `torch.softmax(x @ w, -1)`",
        "", f"Machine: {machine()}.",
        f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}. float32, median of {reps} interleaved "
        "runs (each repeat calls every variant once, in turn); `mm` = `torch.mm(x, w, "
        "out=preallocated)`, `ours` = `matmul_softmax(x, w, out=preallocated)` (same output "
        "handling as mm), `ours alloc` = `matmul_softmax(x, w)` (fresh output, as torch's "
        "expression, which is compared with it); peak = extra resident memory of one call (VmHWM after "
        "clear_refs), output included. The machine is shared with other jobs (1-min load "
        f"average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores), so "
        "absolute times are noisy; the interleaving keeps the ratios fair.", "",
        "Goals: ours / mm <= 1.3; peak-memory ratio vs torch <= 0.6 at large shapes. "
        "`ours / mm` is the ratio of wall-time medians; `by min` the ratio of the fastest "
        "repeats and `by CPU time` that of process CPU-time medians (all threads), which "
        "stay meaningful when other jobs oversubscribe the cores.", "",
    ]
    if has_old:
        lines += [f"`before / mm`: the previous kernel (`{baseline}`, the build before this "
                  "change) measured in the same interleaved run.", ""]
    head = "| n x k x m | mm ms | ours ms | ours / mm | by min | by CPU time |" + (
        " before / mm | before by min | before by CPU time |" if has_old else "")
    head += " ours alloc ms | torch ms | alloc / torch | ours MiB | torch MiB | peak ratio | output MiB |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        n, k, m = r["shape"]
        old = (f" {r['t_old'] / r['t_mm']:.2f} | {r['old_min_ratio']:.2f} | "
               f"{r['old_cpu_ratio']:.2f} |") if has_old else ""
        lines.append(f"| {n}x{k}x{m} | {r['t_mm'] * 1e3:.1f} | {r['t_ours'] * 1e3:.1f} | "
                     f"{r['t_ours'] / r['t_mm']:.2f} | {r['min_ratio']:.2f} | {r['cpu_ratio']:.2f} |{old} "
                     f"{r['t_alloc'] * 1e3:.1f} | "
                     f"{r['t_ref'] * 1e3:.1f} | {r['t_alloc'] / r['t_ref']:.2f} | {r['mem_ours'] / 2**20:.0f} | "
                     f"{r['mem_ref'] / 2**20:.0f} | {r['mem_ours'] / max(r['mem_ref'], 1):.2f} | "
                     f"{r['out_bytes'] / 2**20:.0f} |")
    if not torch.cuda.is_available():
        lines += ["", "No GPU on this machine: the CUDA pipeline was compiled (sm_80, sm_90) "
                  "but not run; see matmul_softmax_cuda.md when a GPU run exists."]
    path.write_text("\n".join(lines) + "\n")


def write_cuda_md(rows: list[dict], path: Path) -> None:
    name = torch.cuda.get_device_name()
    lines = [f"# matmul_softmax: CUDA pipeline on {name}", "", f"Machine: {machine()}.", "",
             "eff = t_overlapped / max(T_H2D, T_compute, T_D2H) (goal <= 1.15); speedup = "
             "t_sequential / t_overlapped (goal >= 1.6 where copy ~ compute). `matmul` columns: "
             "`cuda_ext.matmul` (same pipeline, cuBLAS compute), chunks=1 vs default chunks.", "",
             "| n x k x m | H2D ms | compute ms | D2H ms | sequential ms | overlapped ms | torch ms | eff | speedup | H2D GB/s | matmul seq ms | matmul ovl ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        n, k, m = r["shape"]
        lines.append(f"| {n}x{k}x{m} | {r['t_h2d'] * 1e3:.2f} | {r['t_comp'] * 1e3:.2f} | "
                     f"{r['t_d2h'] * 1e3:.2f} | {r['t_seq'] * 1e3:.2f} | {r['t_ovl'] * 1e3:.2f} | "
                     f"{r['t_torch'] * 1e3:.2f} | {r['eff']:.2f} | {r['speedup']:.2f} | "
                     f"{r['h2d_gbs']:.1f} | {r['t_mm_seq'] * 1e3:.2f} | {r['t_mm_ovl'] * 1e3:.2f} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="two small shapes, few reps")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--baseline-so", type=Path, default=None,
                    help="an older cuda_ext/_C*.so to time beside the current one")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    shapes = CPU_SHAPES[:2] if args.quick else CPU_SHAPES
    reps = 3 if args.quick else args.reps
    _fixed_mmap_threshold()
    print(machine())
    baseline = load_baseline(args.baseline_so)
    write_cpu_md(bench_cpu(shapes, reps, baseline), args.out / "matmul_softmax_cpu.md", reps,
                 args.baseline_so)
    if torch.cuda.is_available() and cuda_ext.WITH_CUDA:
        write_cuda_md(bench_cuda(GPU_SHAPES[:1] if args.quick else GPU_SHAPES, reps),
                      args.out / "matmul_softmax_cuda.md")
    else:
        print("no CUDA GPU (or no CUDA kernels built): CUDA benchmark skipped")


if __name__ == "__main__":
    main()
