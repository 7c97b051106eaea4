"""Smoke test of the matmul_softmax benchmark: the matmul-alone column and the in-run
comparison with an older build (here the current build loaded a second time)."""
from __future__ import annotations

from pathlib import Path

import pytest

from cuda_ext import _backend
from experiments import matmul_softmax_bench as bench


@pytest.mark.skipif(_backend._C is None, reason="compiled backend not active")
def test_bench_reports_ratio_to_matmul_alone_and_to_the_baseline(tmp_path: Path):
    baseline = bench.load_baseline(Path(_backend._C.__file__))
    rows = bench.bench_cpu([(64, 16, 48)], reps=2, baseline=baseline)
    r = rows[0]
    assert r["t_mm"] > 0 and r["t_ours"] > 0 and r["t_old"] is not None
    out = tmp_path / "cpu.md"
    bench.write_cpu_md(rows, out, 2, Path("old.so"))
    text = out.read_text()
    assert "| ours / mm |" in text and "before / mm" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("| 64x16x48 |"))
    assert f"{r['t_ours'] / r['t_mm']:.2f}" in line
