"""Smoke test of experiments/transport_bench.py --quick: every transport × codec runs and is reported."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_bench_writes_table_and_chart(tmp_path: Path) -> None:
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "transport_bench.py"), "--quick", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    elapsed = time.monotonic() - t0
    md = (tmp_path / "transport_bench.md").read_text()
    assert "Machine:" in md and "| system | codec | N |" in md
    data = json.loads((tmp_path / "transport_bench.json").read_text())
    systems = {(r["system"], r["codec"]) for r in data["rows"]}
    assert systems == {(f"fedcore-{t}", c) for t in ("rest", "grpc") for c in ("fp32-raw", "bf16+zstd")}
    for run in data["runs"]:
        assert run["round_s"] and all(t > 0 for t in run["round_s"])
        assert run["bytes_per_round"][0] > 0 and run["peak_rss_mb"] > 0
    assert (tmp_path / "transport_bench.png").stat().st_size > 1000
    assert elapsed < 90, f"quick mode took {elapsed:.0f}s"  # ~20 s on 2 idle cores
