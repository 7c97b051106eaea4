"""Device checks and host-buffer helpers shared by the ops (matmul_softmax, matmul, linear,
unified memory): one place for the "no GPU" / "no CUDA kernels" errors."""
from __future__ import annotations

import warnings

import torch

from . import _backend

_warned_pin = False


def resolve(device: str | torch.device | None, x: torch.Tensor, op: str) -> torch.device:
    """Where to compute: ``device`` or x's device; only cpu and cuda are supported."""
    dev = torch.device(device) if device is not None else x.device
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"{op}: unsupported device {dev}")
    return dev


def require_cuda(dev: torch.device) -> None:
    """Raise a clear RuntimeError when the CUDA path cannot run here."""
    if _backend.BACKEND == "compiled" and not _backend.WITH_CUDA:
        raise RuntimeError("cuda_ext: CUDA path requested, but cuda_ext._C was built without "
                           "CUDA kernels (rebuild with FEDCORE_BUILD_CUDA=1 and a CUDA toolkit)")
    if not torch.cuda.is_available():
        raise RuntimeError(f"cuda_ext: CUDA path requested (device={dev}), but no CUDA GPU is "
                           "available on this machine; use device='cpu'")


def index_of(dev: torch.device) -> int:
    return dev.index if dev.index is not None else torch.cuda.current_device()


def pinned(t: torch.Tensor) -> torch.Tensor:
    """t as a contiguous pinned host tensor (copies, with a one-time warning, if needed)."""
    global _warned_pin
    t = t.contiguous()
    if t.is_pinned():
        return t
    if not _warned_pin:
        _warned_pin = True
        warnings.warn("cuda_ext: host input is not pinned; copying it to pinned memory "
                      "(pass x.pin_memory() to overlap without this extra copy)", stacklevel=5)
    return t.pin_memory()
