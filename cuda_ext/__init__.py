"""fedcore's torch extension: fused ``softmax(x @ w)`` (a C++ CPU path, CUDA kernels), a
stream-overlapped host->GPU pipeline shared by ``matmul_softmax`` / ``matmul`` / ``linear``,
unified memory (``managed_empty``, ``prefetch``), ``nn.Linear`` / ``nn.softmax_attention``,
and a pure-torch fallback so that importing never fails.

``BACKEND`` is "compiled" or "fallback" (with ``FALLBACK_REASON``); ``WITH_CUDA`` tells
whether the compiled module carries the CUDA kernels (a GPU is only needed at call time).
"""
from __future__ import annotations

from . import nn, schedule
from ._backend import BACKEND, WITH_CUDA
from ._backend import REASON as FALLBACK_REASON
from .linear_ops import linear, matmul
from .managed import is_managed, managed_empty, prefetch
from .ops import matmul_softmax


def cuda_available() -> bool:
    """True when the CUDA path can run here: CUDA kernels built (or fallback) and a GPU."""
    import torch

    return (BACKEND == "fallback" or WITH_CUDA) and torch.cuda.is_available()


__all__ = ["BACKEND", "WITH_CUDA", "FALLBACK_REASON", "matmul_softmax", "matmul", "linear",
           "managed_empty", "prefetch", "is_managed", "nn", "cuda_available", "schedule"]
