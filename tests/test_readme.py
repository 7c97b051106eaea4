"""The README's embedding example is run as written, so the documentation cannot rot."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.timeout(240)
def test_readme_embedding_example_runs() -> None:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Embedding fedcore in research code", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=220,
                         env={"FEDCORE_LOG_LEVEL": "WARNING", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert 0.5 < float(out.stdout.strip().splitlines()[-1]) <= 1.0


@pytest.mark.timeout(240)
def test_readme_numpy_client_example_runs() -> None:
    """The NumpyClient example as written, smaller and on InlineBackend (Ray runs only inside a
    network namespace; tests/test_sim_ray.py covers it)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Clients in numpy alone: `NumpyClient`", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    swaps = {"backend=RayBackend(num_workers=2)": "backend=InlineBackend()",
             "np.zeros(1_000_000, np.float32)": "np.zeros(1_000, np.float32)",
             "num_clients=10_000, clients_per_round=1000, rounds=5":
                 "num_clients=100, clients_per_round=1000 // 50, rounds=2",
             "clients_per_round=1000, clock=clock)": "clients_per_round=20, clock=clock)"}
    for old, new in swaps.items():
        assert old in code, f"README example changed: {old!r} not found"
        code = code.replace(old, new)
    code = ("from fedcore.sim import InlineBackend\n" + code +
            "\nprint(len(result.history), float(abs(result.final_state['w']).sum()))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=220,
                         env={"FEDCORE_LOG_LEVEL": "WARNING", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    rounds, moved = out.stdout.split()[-2:]
    assert int(rounds) == 2 and float(moved) > 0
