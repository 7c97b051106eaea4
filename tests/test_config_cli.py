"""Settings precedence (file < env < flags), CLI help, and the demo end to end with client processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import ROOT
from fedcore.app.cli import app
from fedcore.config import Settings
from fedcore.errors import ConfigError
from fedcore.transport import available_transports, get_transport

runner = CliRunner()


def test_settings_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "fedcore.toml"
    cfg.write_text('transport = "grpc"\nrounds = 7\nmin_clients = 4\ncodec = "lz4"\n')
    s = Settings.load(cfg)
    assert (s.transport, s.rounds, s.min_clients, s.codec) == ("grpc", 7, 4, "lz4")
    monkeypatch.setenv("FEDCORE_ROUNDS", "9")
    assert Settings.load(cfg).rounds == 9  # environment beats the file
    assert Settings.load(cfg, rounds=11, codec=None).rounds == 11  # flags beat both; None = flag not given
    assert Settings.load(cfg, rounds=11).codec == "lz4"


def test_settings_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Settings.load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("min_clients = 0\n")
    with pytest.raises(ConfigError, match="min_clients"):
        Settings.load(bad)
    with pytest.raises(ConfigError):
        Settings.load(None, not_a_setting=1)


def test_transport_registry() -> None:
    assert {"rest", "grpc"} <= set(available_transports())
    assert get_transport("rest").name == "rest" and get_transport("grpc").name == "grpc"
    with pytest.raises(ValueError, match="available"):
        get_transport("carrier-pigeon")


def test_core_never_imports_a_transport() -> None:
    code = "import sys, fedcore.federation, fedcore.client, fedcore.server, fedcore.app.cli; " \
           "print([m for m in sys.modules if m.startswith('transports')])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("cmd", [[], ["server"], ["client"], ["demo"], ["status"], ["bench"], ["new"],
                                 ["admin"], ["admin", "switch"]])
def test_help_on_every_command(cmd: list[str]) -> None:
    result = runner.invoke(app, [*cmd, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_bench_compression_help_is_the_benchmarks_own() -> None:
    """--help goes to the benchmark's parser: its options, not typer's empty list."""
    result = runner.invoke(app, ["bench", "compression", "--help"])
    assert result.exit_code == 0, result.output
    assert "usage:" in result.output and "--codecs" in result.output and "--out" in result.output


def test_bench_compression_writes_under_runs_by_default(tmp_path: Path) -> None:
    """Without --out, results go to a new runs/compression-* folder (never experiments/results)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-m", "fedcore", "bench", "compression", "--models", "tiny", "--quick", "--no-plot",
         "--no-json", "--codecs", "zstd", "--states", "init"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    [out] = list((tmp_path / "runs").glob("compression-*"))
    assert (out / "compression.csv").stat().st_size > 0
    assert not (tmp_path / "experiments").exists()


@pytest.mark.timeout(300)
def test_demo_runs_client_processes(tmp_path: Path) -> None:
    """The README's demo, shortened: a server and 3 client processes over REST on digits."""
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "fedcore", "demo", "--clients", "3", "--rounds", "2", "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=280,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    history = json.loads((out / "history.json").read_text())
    assert [h["round"] for h in history] == [1, 2]
    assert all(h["num_participants"] == 3 and h["bytes_in"] > 0 for h in history)
    assert history[-1]["accuracy"] > 0.5
    assert (out / "accuracy.png").stat().st_size > 1000
    assert "bytes in" in proc.stdout


def test_client_env_hands_strategy_options_to_a_child_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """What `spawn_client` puts in a child's environment loads back to the same settings (the
    options table once went over as a Python repr, which a child could not read)."""
    from fedcore.app.launcher import client_env

    options = {"rounding": "nearest", "clip": 0.5, "threshold": 3}
    env = client_env(Settings(strategy="secagg", min_clients=4, strategy_options=options))
    assert json.loads(env["FEDCORE_STRATEGY_OPTIONS"]) == options
    for key in [k for k in os.environ if k.startswith("FEDCORE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("FEDCORE_"):
            monkeypatch.setenv(key, value)
    assert Settings().strategy_options == options


def test_secagg_options_are_checked_when_the_settings_load() -> None:
    s = Settings(strategy="secagg", min_clients=4, strategy_options={"rounding": "nearest", "threshold": 2})
    assert s.strategy_options["rounding"] == "nearest"
    with pytest.raises(ValueError, match="rounding must be 'stochastic' or 'nearest'"):
        Settings(strategy="secagg", strategy_options={"rounding": "floor"})
