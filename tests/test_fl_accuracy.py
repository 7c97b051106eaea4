"""experiments.fl_accuracy: the REST paper's Figs 7-8 grid, smoke-sized, through real client processes."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from experiments.partitions import (
    PAPER_IID_TRAIN,
    PAPER_NONIID_TRAIN,
    PartitionSpec,
    _skewed_allocation,
    partition,
    train_counts,
)
from fedcore.app.data import default_cifar_dir

needs_cifar = pytest.mark.skipif(default_cifar_dir() is None, reason="CIFAR-10 copy not found (../shared/data/cifar10)")


def _labels() -> np.ndarray:
    return np.repeat(np.arange(10), 5000)[np.random.default_rng(3).permutation(50_000)]


@pytest.mark.parametrize("n", [2, 3, 5])
def test_paper_counts_are_tables_5_and_6(n: int) -> None:
    y = _labels()
    for mode, table in (("iid", PAPER_IID_TRAIN), ("paper", PAPER_NONIID_TRAIN)):
        spec = PartitionSpec(n, mode)
        shares = partition(spec, y)
        assert [len(s) for s in shares] == list(table[n]) == train_counts(spec)
        assert len(np.unique(np.concatenate(shares))) == sum(table[n])  # disjoint
        assert [len(s) // 10 for s in shares] == [c // 10 for c in table[n]]  # the tables' Val / Test columns
        again = partition(spec, y)  # every process computes the same shares
        assert all(np.array_equal(a, b) for a, b in zip(shares, again))
    half = partition(PartitionSpec(n, "paper", fraction=0.5), y)
    assert [len(s) for s in half] == [c // 2 for c in PAPER_NONIID_TRAIN[n]]


def test_label_skew_keeps_exact_counts() -> None:
    y = _labels()
    spec = PartitionSpec(5, "paper", fraction=0.2, label_alpha=0.3)
    shares = partition(spec, y)
    assert [len(s) for s in shares] == train_counts(spec)
    assert len(np.unique(np.concatenate(shares))) == sum(train_counts(spec))
    hist = np.stack([np.bincount(y[s], minlength=10) / len(s) for s in shares])
    assert hist.max() > 0.3  # skewed: some class dominates some client
    alloc = _skewed_allocation([7, 3], np.array([0] * 5 + [1] * 5), 1.0, np.random.default_rng(0))
    assert alloc.sum(1).tolist() == [7, 3] and (alloc.sum(0) <= 5).all()


def test_spec_round_trips_as_json() -> None:
    spec = PartitionSpec(3, "dirichlet", fraction=0.1, alpha=0.3, eval_size=123, data_dir="/x")
    assert PartitionSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError):
        PartitionSpec(4, "paper")


@needs_cifar
def test_smoke_grid_real_processes(tmp_path, capsys) -> None:
    from experiments.fl_accuracy import main

    out = tmp_path / "results"
    argv = ["--out", str(out), "--work-dir", str(tmp_path / "work"), "--fraction", "0.008", "--rounds", "2",
            "--clients", "2", "--eval-size", "200", "--tag", "smoke"]
    assert main(argv) == 0
    with open(out / "smoke.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(r["setting"], int(r["round"])) for r in rows} == {
        (k, r) for k in ("centralised", "iid-2", "noniid-2") for r in (1, 2)}
    fed = [r for r in rows if r["setting"] != "centralised"]
    assert all(0 <= float(r["accuracy"]) <= 1 and int(r["bytes_in"]) > 0 and int(r["participants"]) == 2 for r in fed)
    md = (out / "smoke.md").read_text()
    assert "| IID | 2 | 0.890 |" in md and "| non-IID | 2 | 0.889 |" in md and "342, 57" in md
    assert (out / "smoke_fig7_iid.png").stat().st_size > 1000 and (out / "smoke_fig8_noniid.png").stat().st_size > 1000
    capsys.readouterr()
    assert main(argv) == 0  # resumes: everything is done, nothing re-runs
    assert "skipped" in capsys.readouterr().out
    with open(out / "smoke.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
