"""Unified memory (the paper's cudaMallocManaged + cudaMemPrefetchAsync): tensors that CUDA
pages between host and GPU on demand, prefetched ahead of use on the current stream.

GPU only. Without a GPU, or with a build lacking the CUDA kernels, every call raises a
RuntimeError that says so. Requests larger than the card's free memory are refused.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from . import _backend
from ._device import index_of, require_cuda


def _module():
    require_cuda(torch.device("cuda"))
    if _backend._C is None or not _backend.WITH_CUDA:
        raise RuntimeError("cuda_ext: unified memory needs the compiled CUDA extension "
                           f"(backend: {_backend.BACKEND}; {_backend.REASON or 'built without CUDA'})")
    return _backend._C


def managed_empty(shape: Sequence[int] | torch.Size, dtype: torch.dtype = torch.float32,
                  device: str | torch.device = "cuda") -> torch.Tensor:
    """Uninitialised tensor in managed memory on ``device`` (a CUDA device), prefetched to it
    on the current stream. The tensor owns the allocation (cudaFree when it dies); it is
    not from torch's caching allocator, so order cross-stream uses with events yourself."""
    dev = torch.device(device)
    if dev.type != "cuda":
        raise ValueError(f"cuda_ext.managed_empty: device must be a CUDA device, not {dev}")
    mod = _module()
    return mod.managed_empty_cuda([int(s) for s in shape], dtype, index_of(dev))


def prefetch(t: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """Prefetch a managed tensor's pages to ``device`` ('cpu' or a CUDA device) on the
    current stream; returns ``t`` (same storage, still a CUDA tensor)."""
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"cuda_ext.prefetch: device must be 'cpu' or a CUDA device, not {dev}")
    mod = _module()
    return mod.prefetch_managed(t, -1 if dev.type == "cpu" else index_of(dev))


def is_managed(t: torch.Tensor) -> bool:
    """Whether t's memory was allocated with cudaMallocManaged (False without a GPU)."""
    if not t.is_cuda or _backend._C is None or not _backend.WITH_CUDA:
        return False
    return bool(_backend._C.is_managed(t))
