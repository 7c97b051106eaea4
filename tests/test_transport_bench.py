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
        cwd=ROOT, capture_output=True, text=True, timeout=300,  # ~20 s on 2 idle cores; bounded, not timed
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (tmp_path / "transport_bench.md").read_text()
    assert "Machine:" in md and "| system | codec | N |" in md
    data = json.loads((tmp_path / "transport_bench.json").read_text())
    systems = {(r["system"], r["codec"]) for r in data["rows"]}
    codecs = ("fp32-raw", "bf16+zstd", "int8-update", "bf16+zstd-blocks", "int8-blocks")
    assert systems == {(f"fedcore-{t}", c) for t in ("rest", "grpc") for c in codecs}
    blocks = [r for r in data["runs"] if r["codec"].endswith("-blocks")]
    whole = {(r["system"], r["codec"]): r for r in data["runs"]}
    for r in blocks:  # the framing costs a few bytes (12 per block), not a different size
        twin = whole[(r["system"], r["codec"].replace("bf16+zstd-blocks", "bf16+zstd").replace("int8-blocks", "int8-update"))]
        assert abs(r["bytes_per_round"][0] - twin["bytes_per_round"][0]) < 0.05 * twin["bytes_per_round"][0]
    for run in data["runs"]:
        assert run["round_s"] and all(t > 0 for t in run["round_s"])
        assert run["bytes_per_round"][0] > 0 and run["peak_rss_mb"] > 0
    assert (tmp_path / "transport_bench.png").stat().st_size > 1000
    print(f"quick mode took {time.monotonic() - t0:.0f}s")  # speed is the benchmark's to report, not a test's


def test_quick_bench_over_emulated_lan_links(tmp_path: Path) -> None:
    """--profile lan: server and clients in their own network namespaces on shaped links; every
    row has its physical bound, and the report, CSV and chart are written under the profile's name."""
    import pytest

    from experiments import emulation as emu

    if (why := emu.skip_reason()) is not None:
        pytest.skip(f"namespaces: {why}")
    with subprocess.Popen(
        [sys.executable, str(ROOT / "experiments" / "transport_bench.py"), "--quick", "--profile", "lan",
         "--out", str(tmp_path)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as proc:
        try:
            _, err = proc.communicate(timeout=300)
        finally:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    md = (tmp_path / "transport_bench_lan.md").read_text()
    assert "lan: 1000 Mbit/s per client, 0.2 ms RTT" in md and "| bound (s) | × bound |" in md
    data = json.loads((tmp_path / "transport_bench_lan.json").read_text())
    assert data["meta"]["profile"] == "lan" and len(data["rows"]) == 10
    for run in data["runs"]:
        assert run["bound_s"] is not None and run["bound_s"] > 0
        assert min(run["round_s"]) >= run["bound_s"]  # nothing beats the link
        # bare TCP on the same links: the bound's round trips, plus transfers that take time
        assert run["tcp_s"] is not None and run["tcp_s"] > 2.5 * 0.2e-3
    assert "| bare TCP (s) | × TCP |" in md
    rows = (tmp_path / "transport_bench_lan.csv").read_text().splitlines()
    assert rows[0].startswith("profile,system,codec,clients") and len(rows) == 11
    assert (tmp_path / "transport_bench_lan.png").stat().st_size > 1000
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
    assert f"fce{proc.pid}x" not in listed  # the bench removed every namespace it made
