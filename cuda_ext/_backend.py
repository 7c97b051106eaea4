"""Which implementation is active: the compiled ``_C`` module or the pure-torch fallback.

Import never fails: a missing or broken build is reported once (warning + attributes) and
the fallback is used. FEDCORE_CUDA_EXT_FALLBACK=1 forces the fallback (for comparisons).
"""
from __future__ import annotations

import os
import warnings
from types import ModuleType

_C: ModuleType | None = None
BACKEND = "fallback"       # "compiled" or "fallback"
WITH_CUDA = False          # compiled module contains the CUDA kernels
REASON = ""                # why the fallback is active ("" when compiled)

if os.environ.get("FEDCORE_CUDA_EXT_FALLBACK", "0") == "1":
    REASON = "forced by FEDCORE_CUDA_EXT_FALLBACK=1"
else:
    try:
        import torch  # noqa: F401  (loads libtorch / libcudart that _C links against)

        from . import _C as _compiled  # type: ignore[attr-defined]  # built by setup.py

        _C, BACKEND, WITH_CUDA = _compiled, "compiled", bool(_compiled.WITH_CUDA)
    except ImportError as exc:
        REASON = f"cuda_ext._C not importable: {exc}"

if BACKEND == "fallback":
    warnings.warn(f"cuda_ext: using the pure-torch fallback ({REASON}); build the extension "
                  "with `pip install --no-build-isolation -e .`", RuntimeWarning, stacklevel=2)
