"""Simulation benchmark (issue 15): rounds of 100 / 1,000 / 10,000 clients of a 1M-float model
with a tiny local step on each backend, plus CPU-bound clients, measured side by side in one run.

Each (backend, size) runs in a fresh interpreter so start-up and memory are its own; Ray runs
inside ``unshare -n -p`` (a private network namespace with only ``lo``: Ray binds every
interface) and everything it started dies with that namespace. Reported: start-up (backend
start incl. ``ray.init`` and the clients' registrations), round time (first and steady), peak
memory as the PSS summed over the benchmark process and all its descendants (sampled every
50 ms). Figures are for the machine it runs on (``nproc`` and load average are printed).

    python experiments/sim_bench.py [--sizes 100,1000,10000] [--backends inline,process,ray]
        [--baseline /tmp/fedcore-before]   # a checkout of the old code, e.g. `git worktree add`

With ``--baseline`` every row is measured twice, back to back: first with that checkout's code
(its own ``experiments/sim_bench.py`` and ``fedcore``), then with this one's, so a before/after
comparison shares the machine's load (the table's ``code`` column says which is which).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "experiments" / "results"
DIM = 1_000_000


@dataclass(frozen=True)
class Row:
    backend: str
    workload: str
    clients: int
    workers: int
    startup_s: float
    first_round_s: float
    round_s: float  # steady state: the best later round (the first when only one ran)
    peak_pss_mb: float
    participants: int
    code: str = ""  # "before" (the --baseline checkout) or "after"; "" without --baseline
    driver_torch: bool | None = None  # whether the driver process imported torch (None: not reported)


# ---------------------------------------------------------------- memory
def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


class PeakPss:
    """Peak of the PSS summed over a process (default: this one) and its descendants, sampled
    every ``period_s`` by a thread at nice 19: run it in the parent of the measured process tree,
    so reading every smaps_rollup (milliseconds each) neither holds the measured interpreter's
    GIL nor takes CPU time from its workers."""

    def __init__(self, root: int | None = None, period_s: float = 0.1) -> None:
        self.peak_kb = 0
        self.root = root or os.getpid()
        self.period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # this thread only (Linux)
        except OSError:
            pass
        while not self._stop.wait(self.period_s):
            self.peak_kb = max(self.peak_kb, sum(_pss_kb(p) for p in _descendants(self.root)))

    def __enter__(self) -> PeakPss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# ---------------------------------------------------------------- one measurement (child)
def run_one(backend_name: str, clients: int, rounds: int, workers: int | None, cpu_work: int, dim: int,
            kind: str = "torch") -> Row:
    """One row, in this (fresh) interpreter; its parent samples the memory."""
    import logging

    logging.getLogger("fedcore").setLevel(logging.WARNING)
    from fedcore.config import Settings
    from fedcore.sim import Backend, InlineBackend, ProcessBackend, SimClock, sim_federation, simulate

    backend: Backend
    if backend_name == "inline":
        backend = InlineBackend()
    elif backend_name == "process":
        backend = ProcessBackend(num_workers=workers)
    else:
        from fedcore.sim.ray_backend import RayBackend

        backend = RayBackend(num_workers=workers)
    vc: Any
    if kind == "numpy":  # imported by kind: fedcore.sim.workloads (torch clients) imports torch
        from fedcore.sim.numpy_workloads import NumpyVectorClients

        if cpu_work:
            raise ValueError("the CPU-bound workload is a torch one")
        vc = NumpyVectorClients(dim=dim)
    else:
        from fedcore.sim.workloads import VectorClients

        vc = VectorClients(dim=dim, cpu_work=cpu_work)
    clock = SimClock()
    # fp32 on the wire and no norm bound: the workload Flower's engine runs too.
    settings = Settings(dtype="fp32", max_update_norm=None)
    fed = sim_federation(vc.initial_state(), clients, settings=settings, clock=clock)
    result = simulate(fed, vc, clients, clients, rounds, backend, clock=clock)
    later = result.round_s[1:] or result.round_s
    return Row(backend_name, workload_name(kind, cpu_work), clients, result.num_workers,
               round(result.startup_s, 3), round(result.round_s[0], 3), round(min(later), 3),
               0.0, result.history[-1].num_participants, driver_torch="torch" in sys.modules)


def workload_name(kind: str, cpu_work: int) -> str:
    return f"cpu_work={cpu_work} (torch)" if cpu_work else f"tiny step ({kind})"


# ---------------------------------------------------------------- Flower's engine (its own venv)
def run_flower(clients: int, rounds: int, dim: int) -> dict[str, float]:
    """The same workload on Flower's simulation engine: every client moves the model towards
    its own target; FedAvg over all clients each round. Needs only flwr and numpy."""
    import numpy as np
    from flwr.client import ClientApp, NumPyClient
    from flwr.common import Context, ndarrays_to_parameters
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.simulation import run_simulation

    marks: list[float] = []
    t0 = time.perf_counter()

    class Step(NumPyClient):  # type: ignore[misc]
        def __init__(self, cid: int) -> None:
            self.cid = cid

        def fit(self, parameters: list[Any], config: dict[str, Any]) -> tuple[list[Any], int, dict[str, Any]]:
            target = float(np.random.default_rng(self.cid).random()) * 2 - 1
            w = parameters[0] * np.float32(0.95) + np.float32(0.05 * target)
            return [w], 10 + self.cid % 50, {}

    def client_fn(context: Context) -> Any:
        return Step(int(context.node_config["partition-id"])).to_client()

    class Timed(FedAvg):  # type: ignore[misc]
        def configure_fit(self, *a: Any, **k: Any) -> Any:
            marks.append(time.perf_counter())
            return super().configure_fit(*a, **k)

        def aggregate_fit(self, *a: Any, **k: Any) -> Any:
            out = super().aggregate_fit(*a, **k)
            marks.append(time.perf_counter())
            return out

    def server_fn(context: Context) -> Any:
        strategy = Timed(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=clients,
                         min_available_clients=clients,
                         initial_parameters=ndarrays_to_parameters([np.zeros(dim, np.float32)]))
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=rounds))

    run_simulation(server_app=ServerApp(server_fn=server_fn), client_app=ClientApp(client_fn=client_fn),
                   num_supernodes=clients, backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    rounds_s = [marks[i + 1] - marks[i] for i in range(0, len(marks) - 1, 2)]
    return {"startup_s": marks[0] - t0 if marks else -1.0, "first_round_s": rounds_s[0] if rounds_s else -1.0,
            "round_s": min(rounds_s[1:] or rounds_s or [-1.0]), "rounds_done": len(rounds_s)}


# ---------------------------------------------------------------- orchestration (parent)
def _run_sampled(cmd: list[str], env: dict[str, str], timeout_s: float,
                 cwd: Path | None = None) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``cmd``; the peak PSS (MB) of its whole process tree, sampled from here."""
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd) as proc:
        with PeakPss(proc.pid) as mem:
            try:
                out, err = proc.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), mem.peak_kb / 1024


def measure(backend: str, clients: int, rounds: int, workers: int | None, cpu_work: int, dim: int,
            timeout_s: float, root: Path = ROOT, code: str = "", kind: str = "torch") -> Row | str:
    """One row in a fresh interpreter, with the code under ``root`` (this checkout by default)."""
    args = [sys.executable, str(root / "experiments" / "sim_bench.py"), "--one", backend, str(clients), str(rounds),
            str(workers or 0), str(cpu_work), str(dim)] + ([kind] if kind != "torch" else [])
    if backend == "ray":  # never in the host's network namespace
        cmd = ["unshare", "-n", "-p", "-f", "--mount-proc", "sh", "-c",
               "ip link set lo up && exec " + " ".join(args)]
    else:
        cmd = args
    env = dict(os.environ, PYTHONPATH=f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               RAY_USAGE_STATS_ENABLED="0")
    started = time.monotonic()
    try:
        # cwd=root too: a local Ray's workers put the driver's working directory first on their
        # path, so a --baseline row run from here would have its workers import this checkout.
        proc, peak_mb = _run_sampled(cmd, env, timeout_s, cwd=root)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout_s:.0f}s"
    wall = time.monotonic() - started
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            got = json.loads(line)  # a --baseline checkout may have sampled its own memory
            row = Row(**{**got, "code": code, "peak_pss_mb": round(max(peak_mb, got.get("peak_pss_mb", 0.0)), 1)})
            print(f"  {code:6s} {backend:8s} {row.workload:18s} {clients:6d} clients: start-up {row.startup_s:.2f}s, round {row.round_s:.3f}s "
                  f"(first {row.first_round_s:.3f}s), peak {row.peak_pss_mb:.0f} MB  [{wall:.0f}s wall]", flush=True)
            return row
    return f"failed (rc {proc.returncode}): {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}"


def measure_flower(python: str, clients: int, timeout_s: float) -> Row | str:
    """Flower's simulation engine on the same workload, in its own interpreter and namespace."""
    cmd = ["unshare", "-n", "-p", "-f", "--mount-proc", "sh", "-c",
           f"ip link set lo up && exec {python} {Path(__file__).resolve()} --flower-one {clients} 2"]
    try:
        proc, peak_mb = _run_sampled(cmd, dict(os.environ, RAY_USAGE_STATS_ENABLED="0"), timeout_s)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout_s:.0f}s"
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            r = json.loads(line)
            if r["rounds_done"] < 1:
                break
            # Flower starts its actors inside the first round: no separate start-up figure.
            row = Row("flower", "tiny step (numpy)", clients, 0, -1.0,
                      round(r["first_round_s"], 3), round(r["round_s"], 3), round(peak_mb, 1), clients)
            print(f"  flower   {clients:6d} clients: round {row.round_s:.3f}s (first {row.first_round_s:.3f}s), "
                  f"peak {row.peak_pss_mb:.0f} MB", flush=True)
            return row
    return f"failed (rc {proc.returncode})"


def _table(rows: list[Row]) -> str:
    coded = any(r.code for r in rows)
    head = (("| code " if coded else "") + "| backend | workload | clients/round | workers | start-up (s) | "
            "first round (s) | round (s) | peak PSS (MB) | driver imports torch |\n" + ("|---" if coded else "") +
            "|---|---|---:|---:|---:|---:|---:|---:|---|\n")
    return head + "".join(
        (f"| {r.code} " if coded else "") + f"| {r.backend} | {r.workload} | {r.clients:,} | {r.workers or 'n/a'} | "
        f"{f'{r.startup_s:.2f}' if r.startup_s >= 0 else 'in 1st round'} | {r.first_round_s:.3f} | "
        f"{r.round_s:.3f} | {r.peak_pss_mb:.0f} | {_yes_no(r.driver_torch)} |\n" for r in rows)


def _yes_no(flag: bool | None) -> str:
    return "n/a" if flag is None else "yes" if flag else "no"


def _plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    for backend, code, workload in sorted({(r.backend, r.code, r.workload) for r in rows}):
        pts = sorted((r.clients, r.round_s, r.peak_pss_mb) for r in rows if r.backend == backend and
                     r.code == code and r.workload == workload)
        if not workload.startswith("tiny step") or not pts:
            continue
        label = f"{backend}, {workload.removeprefix('tiny step ').strip('()')}" + (f" ({code})" if code else "")
        style = "--" if code == "before" or workload.endswith("(torch)") else "-"
        ax1.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label, linestyle=style)
        ax2.plot([p[0] for p in pts], [p[2] for p in pts], marker="o", label=label, linestyle=style)
    for ax, label in ((ax1, "round time (s)"), (ax2, "peak PSS (MB)")):
        ax.set_xscale("log")
        ax.set_xlabel("clients per round (1M-float model)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    ax1.set_yscale("log")
    fig.suptitle(f"fedcore simulate, {os.cpu_count()} cores")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--one", nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--flower-one", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--flower-python", default=os.environ.get("FEDCORE_FLOWER_PYTHON"),
                   help="interpreter with flwr[simulation] (its own venv); default FEDCORE_FLOWER_PYTHON")
    p.add_argument("--flower-sizes", default="100,1000")
    p.add_argument("--sizes", default="100,1000,10000")
    p.add_argument("--backends", default="inline,process,ray")
    p.add_argument("--clients", default="numpy,torch",
                   help="client kinds of the tiny-step rows: numpy (NumpyClient, workers without torch), "
                        "torch (FLClient)")
    p.add_argument("--cpu-clients", type=int, default=200, help="clients of the CPU-bound round (0: skip)")
    p.add_argument("--cpu-work", type=int, default=150, help="128x128 matrix products per CPU-bound client")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--out", type=Path, default=OUT / "sim_bench")
    p.add_argument("--baseline", type=Path, help="checkout of the code to compare with, measured before each row")
    a = p.parse_args()
    if a.flower_one:
        clients, rounds = (int(x) for x in a.flower_one)
        print(json.dumps(run_flower(clients, rounds, DIM)))
        return
    if a.one:
        backend, clients, rounds, workers, cpu_work, dim, *kind = a.one
        row = run_one(backend, int(clients), int(rounds), int(workers) or None, int(cpu_work), int(dim),
                      kind[0] if kind else "torch")
        print(json.dumps(asdict(row)))
        return
    backends = [b for b in a.backends.split(",") if b]
    sizes = [int(x) for x in a.sizes.split(",") if x]
    kinds = [k for k in a.clients.split(",") if k]
    if "ray" in backends and (shutil.which("unshare") is None or os.geteuid() != 0):
        print("ray skipped: needs root and unshare to run inside a private network namespace")
        backends.remove("ray")
    load = os.getloadavg()
    print(f"{os.cpu_count()} cores, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}", flush=True)
    rows: list[Row] = []
    notes: list[str] = []
    codes = [(a.baseline.resolve(), "before"), (ROOT, "after")] if a.baseline else [(ROOT, "")]
    for clients in sizes:
        rounds = 3 if clients <= 1000 else 1
        for kind in kinds:
            for backend in backends:
                for root, code in codes:
                    got = measure(backend, clients, rounds, None, 0, DIM, a.timeout, root, code, kind)
                    if isinstance(got, Row):
                        rows.append(got)
                    else:
                        notes.append(f"{code} {backend}, {kind} clients, {clients} clients: {got}".strip())
                        print(f"  {code} {backend} {kind} {clients}: {got}", flush=True)
    if a.cpu_clients and backends:
        for backend in backends:
            for root, code in codes:
                got = measure(backend, a.cpu_clients, 2, None, a.cpu_work, 10_000, a.timeout, root, code)
                if isinstance(got, Row):
                    rows.append(got)
                else:
                    notes.append(f"{code} {backend}, CPU-bound: {got}".strip())
    if a.flower_python:
        for clients in (int(x) for x in a.flower_sizes.split(",") if x):
            got = measure_flower(a.flower_python, clients, a.timeout)
            if isinstance(got, Row):
                rows.append(got)
            else:
                notes.append(f"flower, {clients} clients: {got}")
                print(f"  flower {clients}: {got}", flush=True)
    else:
        notes.append("Flower not run: pass --flower-python (an interpreter with flwr[simulation], its own venv).")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps([asdict(r) for r in rows], indent=1))
    _plot(rows, a.out.with_suffix(".png"))
    md = [f"# fedcore simulate benchmark\n\n{os.cpu_count()} cores (shared machine; load average at start "
          f"{load[0]:.1f}). 1M-float model, tiny local step, every client of the round trains; fp32 wire.\n",
          _table(rows)]
    inline = {(r.code, r.workload, r.clients): r.round_s for r in rows if r.backend == "inline"}
    ratios = [f"- {r.code + ': ' if r.code else ''}{r.backend} vs inline, {r.workload}, {r.clients:,} clients: "
              f"{inline[(r.code, r.workload, r.clients)] / r.round_s:.2f}x" for r in rows
              if r.backend not in ("inline", "flower") and (r.code, r.workload, r.clients) in inline and r.round_s > 0]
    flower = {r.clients: r for r in rows if r.backend == "flower"}
    for r in rows:
        f = flower.get(r.clients)
        if f is not None and r.backend != "flower" and r.workload.startswith("tiny step") and r.round_s > 0:
            ratios.append(f"- {r.code + ': ' if r.code else ''}{r.backend}, {r.workload} vs Flower's engine, "
                          f"{r.clients:,} clients: {f.round_s / r.round_s:.1f}x faster, "
                          f"{r.peak_pss_mb / f.peak_pss_mb:.3f}x the memory")
    if ratios:
        md.append("\nRatios (same run):\n\n" + "\n".join(ratios) + "\n")
    if notes:
        md.append("\nNot measured:\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    a.out.with_suffix(".md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
