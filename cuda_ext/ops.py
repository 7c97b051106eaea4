"""``matmul_softmax``: dispatch to the CPU / CUDA kernels of ``_C`` or the torch fallback,
plus the autograd rule (backward in torch ops from the saved softmax output)."""
from __future__ import annotations

import torch

from . import _backend, _fallback
from ._device import index_of, pinned, require_cuda, resolve
from .schedule import default_chunks

SUPPORTED = (torch.float32, torch.bfloat16, torch.float64)


def _check(x: torch.Tensor, w: torch.Tensor) -> None:
    if x.dim() not in (2, 3) or w.dim() not in (2, 3) or (w.dim() == 3 and x.dim() != 3):
        raise ValueError(f"matmul_softmax: expects x [n,k] or [b,n,k] and w [k,m] or [b,k,m]; "
                         f"got {tuple(x.shape)} and {tuple(w.shape)}")
    if x.shape[-1] != w.shape[-2] or (w.dim() == 3 and w.shape[0] != x.shape[0]):
        raise ValueError(f"matmul_softmax: shapes {tuple(x.shape)} @ {tuple(w.shape)} mismatch")
    if x.dtype != w.dtype or x.dtype not in SUPPORTED:
        raise TypeError(f"matmul_softmax: x and w must share a dtype in {SUPPORTED}; "
                        f"got {x.dtype} and {w.dtype}")


def _forward_2d(x: torch.Tensor, w: torch.Tensor, chunks: int | None, out: torch.Tensor | None,
                dev: torch.device, n_buffers: int) -> torch.Tensor:
    n, m = x.shape[0], w.shape[1]
    if dev.type == "cpu":
        if x.device.type != "cpu":
            raise ValueError("matmul_softmax: device='cpu' needs x on the CPU")
        block_rows = -(-n // chunks) if chunks else 0
        if _backend._C is not None:
            return _backend._C.matmul_softmax_cpu(x, w.cpu(), out, block_rows)
        out = torch.empty(n, m, dtype=x.dtype) if out is None else out
        return _fallback.matmul_softmax_2d(x.contiguous(), w.cpu(), out, block_rows)
    require_cuda(dev)
    index = index_of(dev)
    if _backend._C is None:  # torch fallback on the GPU
        y = torch.empty(n, m, dtype=x.dtype, device=dev)
        y = _fallback.matmul_softmax_2d(x.to(dev), w.to(dev), y)
        return y if out is None else out.copy_(y)
    if x.device.type == "cuda":
        return _backend._C.matmul_softmax_cuda(x, w.to(x.device), out, chunks or 1, n_buffers,
                                               x.device.index)
    xh = pinned(x)
    chunks = chunks or default_chunks(n, x.shape[1] * x.element_size())
    tmp = out if out is not None and out.is_pinned() and out.is_contiguous() else None
    y = _backend._C.matmul_softmax_cuda(xh, w.cpu(), tmp, chunks, n_buffers, index)
    return y if out is None or tmp is not None else out.copy_(y)


def _forward(x: torch.Tensor, w: torch.Tensor, chunks: int | None, out: torch.Tensor | None,
             dev: torch.device, n_buffers: int) -> torch.Tensor:
    k, m = w.shape[-2], w.shape[-1]
    if x.dim() == 2 or w.dim() == 2:  # shared w: batch dims fold into rows
        out2 = None if out is None else out.view(-1, m)
        y = _forward_2d(x.reshape(-1, k), w, chunks, out2, dev, n_buffers)
        return y.view(*x.shape[:-1], m) if out is None else out
    if dev.type == "cpu" and _backend._C is not None:  # whole batch in one parallel region
        if x.device.type != "cpu":
            raise ValueError("matmul_softmax: device='cpu' needs x on the CPU")
        block_rows = -(-x.shape[1] // chunks) if chunks else 0
        return _backend._C.matmul_softmax_cpu(x, w.cpu(), out, block_rows)
    if out is None:
        y0 = _forward_2d(x[0], w[0], chunks, None, dev, n_buffers)
        out = y0.new_empty((x.shape[0],) + tuple(y0.shape))
        if y0.device.type == "cpu" and dev.type == "cuda":
            out = out.pin_memory()
        out[0].copy_(y0)
        start = 1
    else:
        start = 0
    for b in range(start, x.shape[0]):
        _forward_2d(x[b], w[b], chunks, out[b], dev, n_buffers)
    return out


class _MatmulSoftmax(torch.autograd.Function):
    """Forward through the fast kernels; backward from the saved output y:
    dz = y * (g - sum(g * y, -1)), dx = dz @ w^T, dw = x^T @ dz (accumulated in fp32/fp64)."""

    @staticmethod
    def forward(ctx, x, w, chunks, dev, n_buffers):  # type: ignore[override]
        y = _forward(x, w, chunks, None, dev, n_buffers)
        ctx.save_for_backward(x, w, y)
        return y

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        x, w, y = ctx.saved_tensors
        acc = _fallback.acc_dtype(y.dtype)
        yg = y.to(acc)
        gg = g.to(device=y.device, dtype=acc)
        dz = (yg * (gg - (gg * yg).sum(-1, keepdim=True))).to(x.device)
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = (dz @ w.to(device=x.device, dtype=acc).transpose(-1, -2)).to(x.dtype)
        if ctx.needs_input_grad[1]:
            xa = x.to(acc)
            if w.dim() == 2:
                dw = xa.reshape(-1, xa.shape[-1]).T @ dz.reshape(-1, dz.shape[-1])
            else:
                dw = xa.transpose(-1, -2) @ dz
            dw = dw.to(device=w.device, dtype=w.dtype)
        return dx, dw, None, None, None


def matmul_softmax(x: torch.Tensor, w: torch.Tensor, *, chunks: int | None = None,
                   out: torch.Tensor | None = None, device: str | torch.device | None = None,
                   n_buffers: int = 2) -> torch.Tensor:
    """``softmax(x @ w, dim=-1)``, fused, numerically stable, float32/bfloat16/float64.

    x: [n, k] or [b, n, k]; w: [k, m] or [b, k, m]. bfloat16 accumulates in float32.
    ``device``: where to compute (default: x's device). A host x with ``device='cuda'`` runs
    the stream-overlapped pipeline in ``chunks`` row chunks and returns a (pinned) host
    tensor; ``chunks=1`` is the sequential copy-all / compute / copy-back version. On CPU,
    ``chunks`` sets the number of row blocks (default: cache-sized blocks).
    ``out`` (no autograd) receives the result.
    """
    _check(x, w)
    dev = resolve(device, x, "matmul_softmax")
    if dev.type == "cuda":
        require_cuda(dev)
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)
    if needs_grad:
        if out is not None:
            raise RuntimeError("matmul_softmax: out= does not support autograd")
        return _MatmulSoftmax.apply(x, w, chunks, dev, n_buffers)
    return _forward(x, w, chunks, out, dev, n_buffers)
