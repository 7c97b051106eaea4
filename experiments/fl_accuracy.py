"""REST paper, Figs 7-8: global accuracy per round, IID and non-IID, 2 / 3 / 5 clients, against
centralised training, on CIFAR-10, through the real fedcore server and client processes.

    python -m experiments.fl_accuracy                      # the default grid (see --help)
    python -m experiments.fl_accuracy --model resnet18 --fraction 1 --eval-size 10000   # the paper's set-up

Each federated setting starts a FederationServer (REST by default; --transport grpc) in this
process and one ``fedcore client --app experiments.fl_apps:make_app`` process per client; the server aggregates
with FedAvg and scores every new global model on a fixed set of CIFAR-10 test images. The
centralised baseline trains the same model with the same loop on all the clients' images
together for rounds x local epochs epochs.

Outputs (under --out, named after --tag): <tag>.csv (one row per round, written as it
completes), <tag>.md (paper vs ours), <tag>.json (set-up, machine, wall times), and
<tag>_fig7_iid.png / <tag>_fig8_noniid.png. Re-running skips settings already in the CSV and
resumes an interrupted setting from its fedcore checkpoint (under --work-dir).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "experiments" / "results"

# The paper's reported best accuracies (section 4.2; ResNet-style model, full CIFAR-10, 100 epochs).
PAPER_CENTRALISED = 0.882
PAPER_BEST = {("iid", 2): 0.890, ("iid", 3): 0.882, ("iid", 5): 0.855,
              ("noniid", 2): 0.889, ("noniid", 3): 0.891, ("noniid", 5): 0.842}
CSV_FIELDS = ["setting", "split", "num_clients", "round", "epochs_done", "accuracy", "loss", "round_s",
              "elapsed_s", "bytes_in", "bytes_out", "participants"]
READY_TIMEOUT_S = 300.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.fl_accuracy", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=None,
                   help="CIFAR-10: folder with cifar10_{train_*,test}.npz, or torchvision's cifar-10-batches-py")
    p.add_argument("--model", default="cifar_cnn_s", help="cifar_cnn_s (34 k params) | cifar_cnn | resnet18")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--epochs", type=int, default=1, help="local epochs per round (centralised: rounds x epochs)")
    p.add_argument("--clients", default="2,3,5", help="comma list of client counts")
    p.add_argument("--splits", default="iid,noniid", help="comma list: iid, noniid")
    p.add_argument("--noniid", default="paper", choices=["paper", "dirichlet"],
                   help="paper: Table 6's exact per-client counts; dirichlet: per-class Dirichlet(--alpha)")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (--noniid dirichlet)")
    p.add_argument("--label-alpha", type=float, default=None,
                   help="with --noniid paper: add a Dirichlet(label-alpha) label skew under the exact counts")
    p.add_argument("--fraction", type=float, default=0.2,
                   help="use this fraction of the 50,000 training images (every Table 5/6 count scaled by it)")
    p.add_argument("--eval-size", type=int, default=5000, help="server test images (fixed random subset; 10000 = all)")
    p.add_argument("--client-split", default="table", choices=["table", "811"],
                   help="table: val/test = floor(train/10) from the test set (Tables 5-6); 811: split each share 8:1:1")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.025, help="SGD learning rate (0.1 x batch/128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--transport", default="rest", choices=["rest", "grpc"])
    p.add_argument("--dtype", default="bf16", help="wire dtype of parameters (fp32 | bf16 | fp16)")
    p.add_argument("--codec", default="zstd", help="wire compression codec")
    p.add_argument("--no-centralised", action="store_true", help="skip the centralised baseline")
    p.add_argument("--client-val", action="store_true", help="clients also score their val split each round")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--tag", default="fl_accuracy", help="prefix of the output files")
    p.add_argument("--work-dir", type=Path, default=None, help="checkpoints and client logs (default $TMPDIR/fl_accuracy_work/<tag>)")
    p.add_argument("--fresh", action="store_true", help="discard earlier results of this tag instead of resuming")
    p.add_argument("--report-only", action="store_true", help="rebuild the table and plots from the CSV")
    p.add_argument("--round-timeout", type=float, default=1800.0, help="seconds one round may take")
    return p.parse_args(argv)


@dataclass(frozen=True)
class Config:
    """What decides the numbers (a resumed run must match it)."""

    model: str
    rounds: int
    epochs: int
    noniid: str
    alpha: float
    label_alpha: float | None
    fraction: float
    eval_size: int
    client_split: str
    batch_size: int
    lr: float
    seed: int
    transport: str
    dtype: str
    codec: str

    @classmethod
    def from_args(cls, a: argparse.Namespace) -> Config:
        return cls(a.model, a.rounds, a.epochs, a.noniid, a.alpha, a.label_alpha, a.fraction, a.eval_size,
                   a.client_split, a.batch_size, a.lr, a.seed, a.transport, a.dtype, a.codec)


def spec_for(cfg: Config, split: str, n: int, data_dir: str | None):
    from experiments.partitions import PartitionSpec

    mode = "iid" if split == "iid" else cfg.noniid
    return PartitionSpec(n, mode, cfg.fraction, cfg.alpha, cfg.label_alpha if mode == "paper" else None,
                         cfg.client_split, cfg.eval_size, cfg.seed, data_dir)


def setting_key(split: str, n: int) -> str:
    return f"{split}-{n}"


# ---------------------------------------------------------------------------------------- CSV
def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("num_clients", "round", "epochs_done", "bytes_in", "bytes_out", "participants"):
            r[k] = int(r[k])
        for k in ("accuracy", "loss", "round_s", "elapsed_s"):
            r[k] = float(r[k]) if r[k] not in ("", "None") else None
    return rows


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, CSV_FIELDS)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def append_row(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, CSV_FIELDS)
        if new:
            w.writeheader()
        w.writerow(row)
        f.flush()
        os.fsync(f.fileno())


def machine_info() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "os": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "gpu": "none (CPU only)" if not torch.cuda.is_available()
            else torch.cuda.get_device_name(0)}


def load_avg() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# ------------------------------------------------------------------------------- centralised
def run_centralised(cfg: Config, data_dir: str | None, csv_path: Path, work: Path, done: int) -> None:
    import torch

    from experiments.models_small import make_model
    from experiments.partitions import centralised_train, server_eval_set
    from fedcore.loops import evaluate, train

    total = cfg.rounds * cfg.epochs
    spec = spec_for(cfg, "iid", 2, data_dir)
    data, test = centralised_train(spec), server_eval_set(spec)
    model = make_model(cfg.model, seed=cfg.seed)
    ckpt = work / "centralised" / "model.pt"
    if done:
        saved = torch.load(ckpt, weights_only=True) if ckpt.exists() else None
        if saved is None or saved["epoch"] != done:
            raise RuntimeError(f"centralised: CSV has {done} epochs but {ckpt} does not match; use --fresh")
        model.load_state_dict(saved["model"])
    print(f"[centralised] {len(data)} training images, {len(test)} test images, epochs {done + 1}..{total}",
          flush=True)
    start = time.monotonic()
    for epoch in range(done + 1, total + 1):
        t0 = time.monotonic()
        train(model, data, epochs=1, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed * 1000 + epoch)
        m = evaluate(model, test)
        dt = time.monotonic() - t0
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"epoch": epoch, "model": model.state_dict()}, ckpt)
        append_row(csv_path, {"setting": "centralised", "split": "centralised", "num_clients": 1, "round": epoch,
                              "epochs_done": epoch, "accuracy": round(m["accuracy"], 5), "loss": round(m["loss"], 5),
                              "round_s": round(dt, 2), "elapsed_s": round(time.monotonic() - start, 2),
                              "bytes_in": 0, "bytes_out": 0, "participants": 1})
        print(f"[centralised] epoch {epoch}/{total}: accuracy {m['accuracy']:.4f}, loss {m['loss']:.4f}, "
              f"{dt:.1f}s (load {load_avg()})", flush=True)


# --------------------------------------------------------------------------------- federated
def _client_env(spec_json: str, cfg: Config, val: bool) -> dict[str, str]:
    """What experiments.fl_apps reads, plus this checkout on the children's import path."""
    from experiments.fl_apps import MODEL_VAR, NO_VAL_VAR, SPEC_VAR, THREADS_VAR

    return {SPEC_VAR: spec_json, MODEL_VAR: cfg.model, THREADS_VAR: "1", NO_VAL_VAR: "" if val else "1",
            "MKL_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def run_federated(cfg: Config, split: str, n: int, data_dir: str | None, csv_path: Path, work: Path,
                  have: int, client_val: bool, round_timeout: float) -> float:
    """One setting through real server + client processes; returns its wall time (this run)."""
    from experiments.models_small import make_model
    from experiments.partitions import client_splits, server_eval_set
    from fedcore.app.launcher import spawn_client, stop_all, wait_ready
    from fedcore.config import Settings
    from fedcore.federation import Federation
    from fedcore.loops import make_evaluate_fn
    from fedcore.server import FederationServer
    from fedcore.strategy import FedAvg

    key = setting_key(split, n)
    spec = spec_for(cfg, split, n, data_dir)
    folder = work / key
    fingerprint = json.dumps({"cfg": asdict(cfg), "spec": json.loads(spec.to_json())}, sort_keys=True)
    stamp = folder / "config.json"
    if folder.exists() and (not stamp.exists() or stamp.read_text() != fingerprint):
        raise RuntimeError(f"{folder} holds a run with other settings; use --fresh or another --work-dir")
    folder.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fingerprint)

    # The server decides each round's training config (epochs, batch size, lr) and sends it along.
    settings = Settings(transport=cfg.transport, rest_port=0, grpc_port=0, min_clients=n, dataset="cifar10",
                        dtype=cfg.dtype, codec=cfg.codec, seed=spec.seed, heartbeat_s=2,
                        round_deadline_s=round_timeout, client_timeout_s=180.0, checkpoint_dir=folder / "checkpoint",
                        local_epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr)
    model = make_model(cfg.model, seed=cfg.seed)
    fed = Federation.from_settings(settings, model.state_dict(), strategy=FedAvg(),
                                   evaluate_fn=make_evaluate_fn(model, server_eval_set(spec)), stop_when_done=True)
    sizes = [len(client_splits(spec, k).train) for k in range(n)]
    if have > len(fed.history()):
        raise RuntimeError(f"{key}: CSV has {have} rounds, checkpoint only {len(fed.history())}; use --fresh")

    start = time.monotonic()
    written = have

    def flush_rows() -> None:
        nonlocal written
        for h in fed.history()[written:]:
            acc, loss = h.accuracy or 0.0, h.loss or 0.0
            append_row(csv_path, {
                "setting": key, "split": split, "num_clients": n, "round": h.round,
                "epochs_done": h.round * cfg.epochs, "accuracy": round(acc, 5),
                "loss": round(loss, 5), "round_s": h.duration_s, "elapsed_s": round(time.monotonic() - start, 2),
                "bytes_in": h.bytes_in, "bytes_out": h.bytes_out, "participants": h.num_participants})
            print(f"[{key}] round {h.round}/{cfg.rounds}: accuracy {acc:.4f}, loss {loss:.4f}, "
                  f"{h.num_participants} clients, {h.duration_s:.1f}s, bytes in {h.bytes_in:,} / "
                  f"out {h.bytes_out:,} (load {load_avg()})", flush=True)
            written = h.round

    flush_rows()  # rounds the checkpoint has and the CSV lacks
    if fed.round >= cfg.rounds:
        return 0.0
    print(f"[{key}] {n} client processes over {cfg.transport}; train images per client {sizes}; "
          f"rounds {fed.round + 1}..{cfg.rounds}", flush=True)
    procs: list[subprocess.Popen[bytes]] = []
    logs = folder / "logs"
    env = _client_env(spec.to_json(), cfg, client_val)
    with FederationServer(fed, settings) as srv:
        # Set the target before any client is ready, so a resumed checkpoint's own autorun target
        # cannot start a round first and shift it: rounds run up to exactly cfg.rounds.
        fed.start_autorun(cfg.rounds - fed.round)
        child = srv.client_settings()  # the ports the server really bound
        try:
            for k in range(n):
                procs.append(spawn_client(child, f"client_{k + 1}", k, cfg.transport, logs,
                                          app="experiments.fl_apps:make_app", env=env))
            # Autorun is already on: with small data the rounds can start (and even all finish,
            # the clients leaving) before the wait looks; a started round also ends it.
            wait_ready(fed, n, procs, timeout_s=READY_TIMEOUT_S, where=f"{logs}/*.log")
            end = time.monotonic() + round_timeout * (cfg.rounds - fed.round)
            while fed.round < cfg.rounds:
                fed.wait_for_round(fed.round + 1, timeout_s=1.0)
                flush_rows()
                if fed.round < cfg.rounds:
                    _check_alive(procs, logs)
                if time.monotonic() > end:
                    raise TimeoutError(f"{key}: rounds did not finish in time")
            flush_rows()
        except BaseException:
            for p in procs:  # interrupted or failed: no grace period, stop the clients now
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            raise
        finally:
            stop_all(procs)
            flush_rows()
    return time.monotonic() - start


def _check_alive(procs: list[subprocess.Popen[bytes]], logs: Path) -> None:
    """A client that failed stops the setting at once. One that exited cleanly has pushed its
    last update (it leaves after the last round) while the server may still be closing that round."""
    for p in procs:
        if p.poll() is not None and p.returncode != 0:
            raise RuntimeError(f"a client process exited early (code {p.returncode}); see {logs}/*.log")


# ------------------------------------------------------------------------------------ report
def summarise(rows: list[dict[str, Any]], rounds: int) -> dict[str, Any]:
    cent = [r for r in rows if r["setting"] == "centralised"]
    cent_best = max((r["accuracy"] for r in cent), default=None)
    out: dict[str, Any] = {"centralised": {"best": cent_best, "epochs": len(cent),
                                           "best_epoch": max(cent, key=lambda r: r["accuracy"])["round"] if cent else None}}
    for key in sorted({r["setting"] for r in rows} - {"centralised"}):
        hist = sorted((r for r in rows if r["setting"] == key), key=lambda r: r["round"])
        best = max(hist, key=lambda r: r["accuracy"])
        def first_within(pts: float) -> int | None:
            return next((r["round"] for r in hist if cent_best is not None and r["accuracy"] >= cent_best - pts), None)

        out[key] = {"split": hist[0]["split"], "clients": hist[0]["num_clients"], "rounds": len(hist),
                    "best": best["accuracy"], "best_round": best["round"], "final": hist[-1]["accuracy"],
                    "within_1pt_round": first_within(0.01), "within_3pt_round": first_within(0.03),
                    "gap": None if cent_best is None else best["accuracy"] - cent_best,
                    "bytes_per_round": sum(r["bytes_in"] + r["bytes_out"] for r in hist) / len(hist),
                    "history": [{"round": r["round"], "accuracy": r["accuracy"]} for r in hist]}
    return out


def _fmt(x: float | None, nd: int = 3) -> str:
    return "—" if x is None else f"{x:.{nd}f}"


def plot_rounds(series: dict[int, list[dict[str, Any]]], cent_hist: list[tuple[int, float]], cent_best: float | None,
                path: Path, *, title: str, epochs: int = 1) -> Path:
    """Figs 7-8 style: one line per client count; centralised dashed (its best as a line, and its
    per-epoch curve, drawn against rounds of the same number of epochs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for n in sorted(series):
        pts = [(h["round"], h["accuracy"]) for h in series[n]]
        ax.plot(*zip(*pts), marker="o", markersize=4, label=f"{n} clients")
    if cent_hist:
        ax.plot([e / epochs for e, _ in cent_hist], [a for _, a in cent_hist], linestyle=":", color="grey",
                label="centralised, per epoch")
    if cent_best is not None:
        ax.axhline(cent_best, linestyle="--", color="black", label=f"centralised best ({cent_best:.3f})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("global model accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(out: Path, tag: str, meta: dict[str, Any], rows: list[dict[str, Any]]) -> Path:
    cfg = meta["config"]
    s = summarise(rows, cfg["rounds"])
    cent = s["centralised"]["best"]
    noniid_label = ("Table 6 counts" + (f" + Dirichlet({cfg['label_alpha']}) label skew" if cfg["label_alpha"] else
                                        ", random class mix") if cfg["noniid"] == "paper"
                    else f"Dirichlet(alpha={cfg['alpha']})")
    figs = {}
    cent_hist = [(r["round"], r["accuracy"]) for r in sorted(rows, key=lambda r: r["round"])
                 if r["setting"] == "centralised"]
    for split, fig, title in (("iid", "fig7_iid", "IID"), ("noniid", "fig8_noniid", "non-IID")):
        series = {v["clients"]: v["history"] for k, v in s.items() if k != "centralised" and v["split"] == split}
        if series:
            name = f"{tag}_{fig}.png"
            plot_rounds(series, cent_hist, cent, out / name, title=f"{title}: global model accuracy per round "
                        f"({cfg['model']}, CIFAR-10)", epochs=cfg["epochs"])
            figs[split] = name

    m = meta["machine"]
    L: list[str] = []
    L.append("# REST paper Figs 7–8 reproduced: federated vs centralised accuracy on CIFAR-10 (JPEG q75 copy)\n")
    cmd = f"python -m experiments.fl_accuracy {meta.get('argv', '')}".rstrip()
    L.append(f"Generated by `{cmd}` ({meta.get('updated', '')}).\n")
    L.append("## Best global accuracy per setting: paper vs ours\n")
    L.append(f"Ours: model `{cfg['model']}` ({meta.get('model_params', '?'):,} parameters), {cfg['rounds']} rounds × "
             f"{cfg['epochs']} local epoch(s); centralised = the same model and loop for {cfg['rounds'] * cfg['epochs']} "
             f"epochs on all clients' images together. Paper: ResNet-style model, full CIFAR-10, centralised best of "
             f"100 epochs. *Δ* = our federated best − our centralised best; *≤1 pt* / *≤3 pts* = first round whose global "
             f"accuracy is within 1 / 3 points of our centralised best.\n")
    L.append("| setting | clients | paper best | ours best | (round) | final | Δ vs centralised | ≤1 pt at round "
             "| ≤3 pts at round | best within 3 pts | bytes / round |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---:|")
    L.append(f"| centralised | – | {PAPER_CENTRALISED:.3f} | {_fmt(cent)} | (epoch {s['centralised']['best_epoch']}) "
             f"| – | – | – | – | – | – |")
    for split in ("iid", "noniid"):
        for n in (2, 3, 5, *sorted({v["clients"] for k, v in s.items() if k != "centralised"} - {2, 3, 5})):
            v = s.get(setting_key(split, n))
            paper = PAPER_BEST.get((split, n))
            if v is None and paper is None:
                continue
            label = "IID" if split == "iid" else "non-IID"
            if v is None:
                L.append(f"| {label} | {n} | {_fmt(paper)} | not run | | | | | | | |")
                continue
            ok = "—" if v["gap"] is None else ("yes" if v["gap"] >= -0.03 else "**no**")
            part = "" if v["rounds"] >= cfg["rounds"] else f" ({v['rounds']}/{cfg['rounds']} rounds)"
            gap = "—" if v["gap"] is None else f"{100 * v['gap']:+.1f} pts"
            L.append(f"| {label}{part} | {n} | {_fmt(paper)} | {_fmt(v['best'])} | ({v['best_round']}) | "
                     f"{_fmt(v['final'])} | {gap} | "
                     f"{v['within_1pt_round'] or 'not reached'} | {v['within_3pt_round'] or 'not reached'} | {ok} | {v['bytes_per_round'] / 1e3:,.0f} kB |")
    L.append("\nPaper, round of convergence: \"both IID and non-IID come close to the centralised accuracy before "
             "round 10\" (section 4.2; the figures give no exact round).\n")
    if figs:
        L.append("Plots (style of Figs 7 and 8: one line per client count, centralised best dashed): "
                 + ", ".join(f"[`{f}`]({f})" for f in figs.values()) + ".\n")

    L.append("## Accuracy per round\n")
    keys = [k for k in ("centralised", *(setting_key(sp, n) for sp in ("iid", "noniid") for n in (2, 3, 5)))
            if k == "centralised" or k in s]
    keys += sorted(k for k in s if k not in keys)
    L.append("| round | " + " | ".join(keys) + " |")
    L.append("|---:|" + "---:|" * len(keys))
    by = {(r["setting"], r["round"]): r["accuracy"] for r in rows}
    for rnd in range(1, max((r["round"] for r in rows), default=0) + 1):
        L.append(f"| {rnd} | " + " | ".join(_fmt(by.get((k, rnd)), 4) for k in keys) + " |")
    L.append("\n(centralised: per epoch; with 1 local epoch per round, epoch *r* = round *r* in epochs of data seen.)\n")

    L.append("## Set-up\n")
    fr = cfg["fraction"]
    L.append(f"- Data: CIFAR-10 (JPEG q75 copy), {meta.get('data_dir', '')}. Training images in play: "
             f"{int(50000 * fr):,} ({fr:.1%} of 50,000, a fixed random subset; every per-client count of the paper's "
             f"Tables 5–6 scaled by {fr}). Server evaluation: "
             + ("all 10,000 test images." if cfg["eval_size"] >= 10000 else
                f"a fixed random subset of {cfg['eval_size']:,} of the 10,000 test images.")
             + " Client val / test: "
             + ("⌊train/10⌋ test images each, as in Tables 5–6 (the tables' Val and Test columns are exactly "
                "⌊Train/10⌋ and together use the 10,000 test images), disjoint across clients."
                if cfg["client_split"] == "table" else "each client's share split 8:1:1."))
    L.append(f"- Non-IID: {noniid_label}." + (" The paper gives only the counts per client (its non-IID is "
             "\"class distribution *or* number of samples differs\"), so the class mix of each share is random."
             if cfg["noniid"] == "paper" and not cfg["label_alpha"] else ""))
    if meta.get("partitions"):
        L.append("- Train images per client (ours): " + "; ".join(
            f"{k}: {', '.join(f'{x:,}' for x in v)}" for k, v in meta["partitions"].items()) + ".")
    L.append(f"- Training: `fedcore.loops.train` (SGD, momentum 0.9, weight decay 5e-4, lr {cfg['lr']}, "
             f"batch {cfg['batch_size']}, no augmentation), 1 torch thread per process. Aggregation: FedAvg "
             f"weighted by sample count. All clients take part in every round.")
    L.append(f"- System: real fedcore `FederationServer` over **{cfg['transport'].upper()}** on 127.0.0.1 and one "
             f"`fedcore client --app experiments.fl_apps:make_app` process per client (fedcore.client.FLClient); parameters on the "
             f"wire as {cfg['dtype']} + {cfg['codec']} (fedcore.wire), so clients start each round from the "
             f"{cfg['dtype']}-rounded global model.")
    L.append(f"- Machine: {m['cpu']}, {m['cores']} cores shared with other jobs (load average at start / end: "
             f"{meta.get('load_start', '?')} → {meta.get('load_end', '?')}), {m['os']}, Python {m['python']}, "
             f"torch {m['torch']}, GPU: {m['gpu']}.")
    walls = meta.get("wall_s", {})
    if walls:
        L.append("- Wall time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in walls.items())
                 + f"; total {sum(walls.values()) / 60:.1f} min.")
    if meta.get("notes"):
        L.append("\n## Notes\n")
        L.extend(f"- {x}" for x in meta["notes"])
    path = out / f"{tag}.md"
    path.write_text("\n".join(L) + "\n")
    return path


# -------------------------------------------------------------------------------------- main
def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    previous = {}
    try:  # SIGTERM (and SIGINT, even under nohup) stop cleanly: client processes ended, checkpoint kept
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, _interrupt)
    except ValueError:  # not the main thread (embedded use): leave the handlers alone
        pass
    try:
        return _main(args, argv)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _main(args: argparse.Namespace, argv: list[str] | None) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("FL_ACCURACY_CACHE", str(Path(os.environ.get("TMPDIR", "/tmp")) / "fl_accuracy_cache"))
    from experiments.models_small import make_model
    from experiments.partitions import data_dir_of, load_arrays

    cfg = Config.from_args(args)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = args.work_dir or Path(os.environ.get("TMPDIR", "/tmp")) / "fl_accuracy_work" / args.tag
    csv_path, meta_path = out / f"{args.tag}.csv", out / f"{args.tag}.json"
    data_dir = data_dir_of(args.data_dir)
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    counts = [int(c) for c in args.clients.split(",") if c.strip()]
    if set(splits) - {"iid", "noniid"}:
        parser_error = f"--splits takes iid and/or noniid, not {args.splits!r}"
        raise SystemExit(parser_error)

    meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if args.report_only:
        path = write_report(out, args.tag, meta, read_rows(csv_path))
        print(f"report: {path}")
        return 0
    if args.fresh or meta.get("config") != asdict(cfg):
        if meta.get("config") and not args.fresh:
            raise SystemExit(f"{meta_path} was made with other settings; pass --fresh to start over "
                             f"(or another --tag)")
        import shutil

        for p in (csv_path, meta_path):
            p.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
        meta = {}
    meta.update({
        "config": asdict(cfg), "machine": machine_info(), "argv": " ".join(argv if argv is not None else sys.argv[1:]),
        "data_dir": data_dir or "default (../shared/data/cifar10)",
        "model_params": sum(p.numel() for p in make_model(cfg.model).parameters()),
        "load_start": meta.get("load_start") or load_avg(), "wall_s": meta.get("wall_s", {}),
        "partitions": meta.get("partitions", {}), "notes": meta.get("notes", []),
    })
    load_arrays(data_dir)  # fills the memory-mapped cache once, before any client starts

    def save_meta() -> None:
        meta["updated"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        meta["load_end"] = load_avg()
        meta_path.write_text(json.dumps(meta, indent=1))
        write_report(out, args.tag, meta, read_rows(csv_path))

    try:
        _run_grid(args, cfg, meta, csv_path, work, data_dir, splits, counts, save_meta)
    except KeyboardInterrupt:
        save_meta()
        print("interrupted: finished rounds are in the CSV; run the same command again to resume", flush=True)
        return 130
    s = summarise(read_rows(csv_path), cfg.rounds)
    print(f"centralised best {_fmt(s['centralised']['best'])}", flush=True)
    for k, v in s.items():
        if k != "centralised":
            print(f"  {k}: best {v['best']:.4f} (round {v['best_round']}), gap {_fmt(v['gap'])}")
    print(f"report: {out / (args.tag + '.md')}")
    return 0


def _run_grid(args: argparse.Namespace, cfg: Config, meta: dict[str, Any], csv_path: Path, work: Path,
              data_dir: str | None, splits: list[str], counts: list[int], save_meta: Any) -> None:
    from experiments.partitions import client_splits

    rows = read_rows(csv_path)
    grid_start = time.monotonic()
    if not args.no_centralised:
        done = sum(1 for r in rows if r["setting"] == "centralised")
        if done < cfg.rounds * cfg.epochs:
            t0 = time.monotonic()
            try:
                run_centralised(cfg, data_dir, csv_path, work, done)
            finally:
                meta["wall_s"]["centralised"] = meta["wall_s"].get("centralised", 0.0) + time.monotonic() - t0
                save_meta()
    for split in splits:
        for n in counts:
            key = setting_key(split, n)
            spec = spec_for(cfg, split, n, data_dir)
            meta["partitions"][key] = [len(client_splits(spec, k).train) for k in range(n)]
            have = sum(1 for r in read_rows(csv_path) if r["setting"] == key)
            if have >= cfg.rounds:
                print(f"[{key}] done earlier ({have} rounds in {csv_path.name}); skipped", flush=True)
                continue
            t0 = time.monotonic()
            try:
                run_federated(cfg, split, n, data_dir, csv_path, work, have, args.client_val, args.round_timeout)
            finally:  # an interrupted setting's time counts too (it resumes from its checkpoint)
                meta["wall_s"][key] = meta["wall_s"].get(key, 0.0) + time.monotonic() - t0
                save_meta()
    save_meta()
    print(f"grid done in {(time.monotonic() - grid_start) / 60:.1f} min (this run)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
