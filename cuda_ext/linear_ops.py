"""``matmul`` and ``linear`` ("matmul optimisation on the edge"): the plain ATen op on CPU and
for tensors already on a GPU; a host input sent to ``device='cuda'`` runs the same
stream-overlapped chunk pipeline as ``matmul_softmax`` (``csrc/cuda_pipeline.h``) with
cuBLAS (``at::addmm``) as the compute step, and comes back as a pinned host tensor.

Autograd: one Function for every path; backward in ATen ops where the saved tensors live
(dx = g W^T, dW = x^T g, db = sum g), so a host-pipelined forward gets a host backward.
"""
from __future__ import annotations

import torch

from . import _backend
from ._device import index_of, pinned, require_cuda, resolve
from .schedule import default_chunks


def _check(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, out_in: bool, op: str) -> None:
    if w.dim() == 3 and not out_in:
        if x.dim() != 3 or x.shape[0] != w.shape[0] or x.shape[2] != w.shape[1]:
            raise ValueError(f"{op}: batched w [b,k,m] needs x [b,n,k]; got {tuple(x.shape)} "
                             f"and {tuple(w.shape)}")
    elif w.dim() != 2 or x.dim() < 1:
        raise ValueError(f"{op}: expects x [..., k] and a 2-D w; got {tuple(x.shape)} and "
                         f"{tuple(w.shape)}")
    else:
        k = w.shape[1] if out_in else w.shape[0]
        if x.shape[-1] != k:
            raise ValueError(f"{op}: shapes {tuple(x.shape)} and {tuple(w.shape)} mismatch "
                             f"(x's last dim must be {k})")
    if x.dtype != w.dtype or (b is not None and b.dtype != x.dtype):
        raise TypeError(f"{op}: x, w (and b) must share a dtype; got {x.dtype}, {w.dtype}"
                        + (f", {b.dtype}" if b is not None else ""))
    if b is not None:
        m = w.shape[0] if out_in else w.shape[-1]
        if b.dim() != 1 or b.shape[0] != m:
            raise ValueError(f"{op}: bias must be 1-D of size {m}; got {tuple(b.shape)}")


def _aten(x2: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, out_in: bool) -> torch.Tensor:
    """The plain ATen op on x's device (2-D x, or batched x with 3-D w)."""
    w = w.to(x2.device)
    if w.dim() == 3:
        return torch.bmm(x2, w)
    wkm = w.T if out_in else w
    if b is None:
        return torch.mm(x2, wkm)
    return torch.addmm(b.to(x2.device), x2, wkm)


def _pipeline_2d(x2: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, out_in: bool,
                 chunks: int | None, dev: torch.device, n_buffers: int) -> torch.Tensor:
    """Host x2 [n, k] -> pinned host result, computed on ``dev`` in overlapped row chunks."""
    if _backend._C is None:  # pure-torch fallback: copy, compute, copy back
        return _aten(x2.to(dev), w, b, out_in).cpu()
    xh = pinned(x2)
    chunks = chunks or default_chunks(xh.shape[0], xh.shape[1] * xh.element_size())
    return _backend._C.linear_host_cuda(xh, w, b, out_in, None, chunks, n_buffers, index_of(dev))


def _forward(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, out_in: bool,
             chunks: int | None, dev: torch.device, n_buffers: int) -> torch.Tensor:
    host_to_gpu = dev.type == "cuda" and x.device.type == "cpu"
    if dev.type == "cpu" and x.device.type != "cpu":
        raise ValueError("cuda_ext: device='cpu' needs x on the CPU")
    if dev.type == "cuda" and x.device.type == "cuda" and x.device != dev and dev.index is not None:
        raise ValueError(f"cuda_ext: x is on {x.device} but device={dev}")
    if w.dim() == 3:  # batched matmul: one pipeline run per batch item
        if not host_to_gpu:
            return _aten(x, w, None, False)
        return torch.stack([_pipeline_2d(x[i], w[i], None, False, chunks, dev, n_buffers)
                            for i in range(x.shape[0])])
    m = w.shape[0] if out_in else w.shape[1]
    x2 = x.reshape(-1, x.shape[-1])
    y2 = (_pipeline_2d(x2, w, b, out_in, chunks, dev, n_buffers) if host_to_gpu
          else _aten(x2, w, b, out_in))
    return y2.view(*x.shape[:-1], m)


class _LinearFn(torch.autograd.Function):
    """y = x W + b with W = w (matmul) or w^T (linear); backward in ATen ops."""

    @staticmethod
    def forward(ctx, x, w, b, out_in, chunks, dev, n_buffers):  # type: ignore[override]
        ctx.out_in = out_in
        ctx.bias_device = None if b is None else b.device
        ctx.save_for_backward(x, w)
        return _forward(x, w, b, out_in, chunks, dev, n_buffers)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        x, w = ctx.saved_tensors
        g = g.to(x.device)
        wx = w.to(x.device)
        dx = dw = db = None
        if w.dim() == 3:
            if ctx.needs_input_grad[0]:
                dx = g @ wx.transpose(-1, -2)
            if ctx.needs_input_grad[1]:
                dw = (x.transpose(-1, -2) @ g).to(w.device)
            return dx, dw, None, None, None, None, None
        wkm = wx.T if ctx.out_in else wx
        g2 = g.reshape(-1, g.shape[-1])
        if ctx.needs_input_grad[0]:
            dx = (g2 @ wkm.T).view(x.shape)
        if ctx.needs_input_grad[1]:
            dwkm = x.reshape(-1, x.shape[-1]).T @ g2
            dw = (dwkm.T if ctx.out_in else dwkm).to(w.device)
        if ctx.bias_device is not None and ctx.needs_input_grad[2]:
            db = g2.sum(0).to(ctx.bias_device)
        return dx, dw, db, None, None, None, None


def _apply(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, out_in: bool,
           chunks: int | None, device: str | torch.device | None, n_buffers: int,
           op: str) -> torch.Tensor:
    _check(x, w, b, out_in, op)
    dev = resolve(device, x, op)
    if dev.type == "cuda":
        require_cuda(dev)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, w, b))
    if needs_grad:
        return _LinearFn.apply(x, w, b, out_in, chunks, dev, n_buffers)
    return _forward(x, w, b, out_in, chunks, dev, n_buffers)


def matmul(x: torch.Tensor, w: torch.Tensor, *, chunks: int | None = None,
           device: str | torch.device | None = None, n_buffers: int = 2) -> torch.Tensor:
    """``x @ w`` for x [..., k] with w [k, m], or x [b, n, k] with w [b, k, m].

    ``device`` (default: x's device): a host x with ``device='cuda'`` runs the overlapped
    pipeline in ``chunks`` row chunks (default: ~4 MiB each, >= 4) and returns a pinned
    host tensor; otherwise the plain ATen op runs where x is.
    """
    return _apply(x, w, None, False, chunks, device, n_buffers, "matmul")


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, *,
           chunks: int | None = None, device: str | torch.device | None = None,
           n_buffers: int = 2) -> torch.Tensor:
    """``x @ w.T + b`` with ``torch.nn.functional.linear``'s layout (w [out, in], b [out]);
    same ``device`` / ``chunks`` rules as :func:`matmul`."""
    return _apply(x, w, b, True, chunks, device, n_buffers, "linear")
