"""What does client sampling cost? A digits federation of 6 clients, every client per round vs
``fraction_fit = 0.5`` (3 of 6, drawn by the Federation's seeded uniform selector), same seeds,
data split and local training, server-side accuracy per round.

Runs in-process through ``fedcore.sim`` (inline backend): the simulation drives the real
Federation, whose selector draws each round's cohort exactly as a deployed server would. The
sampled run gets twice the rounds so it can reach the all-clients band: within ``--band``
(1 percentage point) of the all-clients run's final accuracy, and stay there.
``python -m experiments.sampling_digits`` writes ``results/sampling_digits.md`` and ``.csv``.
"""
from __future__ import annotations

import argparse
import csv
import logging
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def run(cohort: int, seed: int, rounds: int, clients: int) -> list[tuple[int, float, tuple[str, ...]]]:
    """(round, accuracy, selected clients) per round."""
    from fedcore.config import Settings
    from fedcore.sim import InlineBackend, simulate
    from fedcore.sim.workloads import PartitionClients

    s = Settings(dataset="digits", num_partitions=clients, seed=seed, min_clients=cohort)
    result = simulate(s, PartitionClients(s, clients), clients, cohort, rounds, InlineBackend(), seed=seed)
    return [(h.round, float(h.accuracy or 0.0), h.selected_clients) for h in result.history]


def reached(acc: list[float], target: float) -> int | None:
    """First round from which accuracy stays at or above ``target`` (None: never)."""
    for i in range(len(acc)):
        if all(a >= target for a in acc[i:]):
            return i + 1
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=12, help="rounds of the all-clients run (sampled: twice)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--clients", type=int, default=6)
    p.add_argument("--band", type=float, default=0.01)
    args = p.parse_args()
    logging.getLogger("fedcore").setLevel(logging.WARNING)
    half = max(1, args.clients // 2)
    rows: list[tuple[str, int, int, float, str]] = []
    summary: list[tuple[int, float, float, int | None, int | None]] = []
    started = time.perf_counter()
    for seed in range(args.seeds):
        full = run(args.clients, seed, args.rounds, args.clients)
        sampled = run(half, seed, 2 * args.rounds, args.clients)
        rows += [("all", seed, r, a, " ".join(sel)) for r, a, sel in full]
        rows += [("fraction_fit=0.5", seed, r, a, " ".join(sel)) for r, a, sel in sampled]
        final = full[-1][1]
        target = final - args.band
        summary.append((seed, final, sampled[args.rounds - 1][1], reached([a for _, a, _ in full], target),
                        reached([a for _, a, _ in sampled], target)))
    took = time.perf_counter() - started

    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "sampling_digits.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["variant", "seed", "round", "accuracy", "selected"])
        for v, seed, r, a, sel in rows:
            w.writerow([v, seed, r, f"{a:.4f}", sel])

    def fmt(x: int | None) -> str:
        return str(x) if x is not None else f"> {2 * args.rounds}"

    lines = [
        "# Client sampling on digits: fraction_fit = 0.5 vs all clients",
        "",
        f"`python -m experiments.sampling_digits --rounds {args.rounds} --seeds {args.seeds}` "
        f"({took:.0f} s in all). {args.clients} clients (IID digits partitions, the demo's split and model), "
        f"FedAvg, server-side accuracy on the held-out split after each round. The sampled run trains "
        f"{half} of {args.clients} clients per round, drawn by the Federation's seeded uniform selector "
        f"(the same code path as a deployed server), and runs {2 * args.rounds} rounds. "
        f"Band: within {args.band * 100:.0f} point(s) of the all-clients run's final accuracy (round "
        f"{args.rounds}), and staying there.",
        "",
        "| seed | all clients: final acc | sampled: acc at round "
        f"{args.rounds} | all clients: in band from round | sampled: in band from round | extra rounds |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    extras: list[int] = []
    for seed, final, at_same, r_full, r_sampled in summary:
        extra = r_sampled - r_full if r_sampled is not None and r_full is not None else None
        if extra is not None:
            extras.append(extra)
        lines.append(f"| {seed} | {final * 100:.2f} % | {at_same * 100:.2f} % | {fmt(r_full)} | {fmt(r_sampled)} | "
                     f"{extra if extra is not None else 'n/a'} |")
    lines.append("")
    if extras:
        lines.append(f"Mean extra rounds the sampled run needs to reach the band: **{statistics.mean(extras):.1f}** "
                     f"(over {len(extras)} of {args.seeds} seeds); each of its rounds trains half the clients, so "
                     "it sends half the updates per round.")
    lines += ["", "Accuracy per round (mean over seeds):", "", "| round | all clients | fraction_fit=0.5 |", "|---:|---:|---:|"]
    for r in range(1, 2 * args.rounds + 1):
        def mean_at(variant: str) -> str:
            vals = [a for v, _, rr, a, _ in rows if v == variant and rr == r]
            return f"{statistics.mean(vals) * 100:.2f} %" if vals else "–"
        lines.append(f"| {r} | {mean_at('all')} | {mean_at('fraction_fit=0.5')} |")
    lines += ["", "Raw rows (with the clients selected each round): `sampling_digits.csv`.", ""]
    (RESULTS / "sampling_digits.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
