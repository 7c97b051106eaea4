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
