"""Benchmark of cuda_ext.matmul_softmax against the unfused torch expression.

CPU: time ratio and peak-memory ratio (extra resident memory of one call, measured with
/proc/self VmHWM after resetting it through clear_refs) of the C++ path vs
``torch.softmax(x @ w, -1)``. CUDA (only when a GPU is present): sequential (copy all,
compute, copy back = chunks=1) vs overlapped vs torch, the overlap efficiency
t_overlapped / max(T_H2D, T_compute, T_D2H) with the three measured in the same run, and
the achieved H2D bandwidth.

    python experiments/matmul_softmax_bench.py [--quick] [--out experiments/results]
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import os
import platform
import re
import statistics
import time
from pathlib import Path

import torch

import cuda_ext

CPU_SHAPES = [(4096, 256, 1024), (8192, 512, 2048), (16384, 128, 4096), (2048, 1024, 8192)]
GPU_SHAPES = [(65536, 1024, 512), (131072, 512, 1024), (32768, 4096, 256)]


def _status_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


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


def interleaved_medians(fns: list, reps: int) -> list[float]:
    """Median seconds per function; calls alternate so machine noise hits all alike."""
    for f in fns:
        f()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(reps):
        for i, f in enumerate(fns):
            t = time.perf_counter()
            f()
            times[i].append(time.perf_counter() - t)
    return [statistics.median(t) for t in times]


def bench_cpu(shapes, reps: int) -> list[dict]:
    rows = []
    for n, k, m in shapes:
        g = torch.Generator().manual_seed(0)
        x, w = torch.randn(n, k, generator=g), torch.randn(k, m, generator=g)
        ours = lambda: cuda_ext.matmul_softmax(x, w)  # noqa: E731
        ref = lambda: torch.softmax(x @ w, dim=-1)  # noqa: E731
        t_ours, t_ref = interleaved_medians([ours, ref], reps)
        mem_ours = min(peak_extra_bytes(ours) for _ in range(2))
        mem_ref = min(peak_extra_bytes(ref) for _ in range(2))
        rows.append(dict(shape=(n, k, m), t_ours=t_ours, t_ref=t_ref, mem_ours=mem_ours,
                         mem_ref=mem_ref, out_bytes=n * m * 4))
        print(f"cpu {n}x{k}x{m}: time {t_ours * 1e3:.1f} / {t_ref * 1e3:.1f} ms "
              f"= {t_ours / t_ref:.2f}x, peak {mem_ours / 2**20:.0f} / {mem_ref / 2**20:.0f} MiB "
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
        bound = max(t_h2d, t_comp, t_d2h)
        rows.append(dict(shape=(n, k, m), t_h2d=t_h2d, t_comp=t_comp, t_d2h=t_d2h, t_seq=t_seq,
                         t_ovl=t_ovl, t_torch=t_torch, eff=t_ovl / bound, speedup=t_seq / t_ovl,
                         h2d_gbs=x.numel() * 4 / t_h2d / 1e9))
        r = rows[-1]
        print(f"cuda {n}x{k}x{m}: H2D {t_h2d * 1e3:.2f} comp {t_comp * 1e3:.2f} D2H "
              f"{t_d2h * 1e3:.2f} | seq {t_seq * 1e3:.2f} ovl {t_ovl * 1e3:.2f} torch "
              f"{t_torch * 1e3:.2f} ms | eff {r['eff']:.2f} speedup {r['speedup']:.2f} "
              f"H2D {r['h2d_gbs']:.1f} GB/s", flush=True)
    return rows


def machine() -> str:
    from fedcore.app.sysinfo import cpu_model

    return (f"{cpu_model()}, {torch.get_num_threads()} torch threads, {platform.system()} "
            f"{platform.release()}, torch {torch.__version__}, cuda_ext backend "
            f"{cuda_ext.BACKEND} (CUDA kernels built: {cuda_ext.WITH_CUDA})")


def write_cpu_md(rows: list[dict], path: Path, reps: int) -> None:
    lines = [
        "# matmul_softmax: CPU C++ path vs `torch.softmax(x @ w, -1)`", "",
        f"Machine: {machine()}.",
        f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}. float32, median of {reps} interleaved "
        "runs; peak = extra resident memory of one call (VmHWM after clear_refs), output "
        "included. The machine is shared with other jobs (1-min load average at the end: "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores), so absolute times are noisy; "
        "the interleaving keeps the ratios fair.", "",
        "Goals: time ratio <= 1.0, peak-memory ratio <= 0.6 at large shapes.", "",
        "| n x k x m | ours ms | torch ms | time ratio | ours MiB | torch MiB | peak ratio | output MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        n, k, m = r["shape"]
        lines.append(f"| {n}x{k}x{m} | {r['t_ours'] * 1e3:.1f} | {r['t_ref'] * 1e3:.1f} | "
                     f"{r['t_ours'] / r['t_ref']:.2f} | {r['mem_ours'] / 2**20:.0f} | "
                     f"{r['mem_ref'] / 2**20:.0f} | {r['mem_ours'] / max(r['mem_ref'], 1):.2f} | "
                     f"{r['out_bytes'] / 2**20:.0f} |")
    lines += ["", "No GPU on this machine: the CUDA pipeline was compiled (sm_80, sm_90) but "
              "not run; see matmul_softmax_cuda.md when a GPU run exists.", ""]
    path.write_text("\n".join(lines))


def write_cuda_md(rows: list[dict], path: Path) -> None:
    name = torch.cuda.get_device_name()
    lines = [f"# matmul_softmax: CUDA pipeline on {name}", "", f"Machine: {machine()}.", "",
             "eff = t_overlapped / max(T_H2D, T_compute, T_D2H) (goal <= 1.15); speedup = "
             "t_sequential / t_overlapped (goal >= 1.6 where copy ~ compute).", "",
             "| n x k x m | H2D ms | compute ms | D2H ms | sequential ms | overlapped ms | torch ms | eff | speedup | H2D GB/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        n, k, m = r["shape"]
        lines.append(f"| {n}x{k}x{m} | {r['t_h2d'] * 1e3:.2f} | {r['t_comp'] * 1e3:.2f} | "
                     f"{r['t_d2h'] * 1e3:.2f} | {r['t_seq'] * 1e3:.2f} | {r['t_ovl'] * 1e3:.2f} | "
                     f"{r['t_torch'] * 1e3:.2f} | {r['eff']:.2f} | {r['speedup']:.2f} | "
                     f"{r['h2d_gbs']:.1f} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="two small shapes, few reps")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    shapes = CPU_SHAPES[:2] if args.quick else CPU_SHAPES
    reps = 3 if args.quick else args.reps
    _fixed_mmap_threshold()
    print(machine())
    write_cpu_md(bench_cpu(shapes, reps), args.out / "matmul_softmax_cpu.md", reps)
    if torch.cuda.is_available() and cuda_ext.WITH_CUDA:
        write_cuda_md(bench_cuda(GPU_SHAPES[:1] if args.quick else GPU_SHAPES, reps),
                      args.out / "matmul_softmax_cuda.md")
    else:
        print("no CUDA GPU (or no CUDA kernels built): CUDA benchmark skipped")


if __name__ == "__main__":
    main()
