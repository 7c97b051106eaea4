"""Fused ``softmax(x @ w)``: a C++ CPU path, a stream-overlapped CUDA path, and a pure-torch
fallback so that importing never fails.

``BACKEND`` is "compiled" or "fallback" (with ``FALLBACK_REASON``); ``WITH_CUDA`` tells
whether the compiled module carries the CUDA kernels (a GPU is only needed at call time).
"""
from __future__ import annotations

from . import schedule
from ._backend import BACKEND, WITH_CUDA
from ._backend import REASON as FALLBACK_REASON
from .ops import matmul_softmax


def cuda_available() -> bool:
    """True when the CUDA path can run here: CUDA kernels built (or fallback) and a GPU."""
    import torch

    return (BACKEND == "fallback" or WITH_CUDA) and torch.cuda.is_available()


__all__ = ["BACKEND", "WITH_CUDA", "FALLBACK_REASON", "matmul_softmax", "cuda_available",
           "schedule"]
