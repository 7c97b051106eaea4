"""Drop-in modules on top of the extension, so a model can switch its projections and
attention to it with a flag: ``Linear`` (the parameters of ``torch.nn.Linear``) and
``softmax_attention`` (softmax(q k^T * scale) v with the fused matmul_softmax)."""
from __future__ import annotations

import torch

from .linear_ops import linear, matmul
from .ops import matmul_softmax


class Linear(torch.nn.Linear):
    """``torch.nn.Linear`` (same ``weight`` [out, in] / ``bias`` [out], init and state_dict)
    whose forward is :func:`cuda_ext.linear`. ``compute_device='cuda'`` with host inputs
    runs the overlapped host->GPU pipeline in ``chunks`` row chunks."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 *, chunks: int | None = None,
                 compute_device: torch.device | str | None = None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.chunks = chunks
        self.compute_device = compute_device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, chunks=self.chunks, device=self.compute_device)


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      scale: float) -> torch.Tensor:
    """``softmax(q @ k^T * scale, -1) @ v`` for q [..., n, d], k [..., m, d], v [..., m, e]
    (same leading dims, e.g. [batch, heads]); the probabilities come from the fused
    :func:`cuda_ext.matmul_softmax`, so the n x m scores never exist beside them."""
    if q.dim() < 2 or k.dim() != q.dim() or v.dim() != q.dim():
        raise ValueError(f"softmax_attention: q, k, v need the same rank >= 2; got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    lead = q.shape[:-2]
    if k.shape[:-2] != lead or v.shape[:-2] != lead or k.shape[-1] != q.shape[-1] \
            or v.shape[-2] != k.shape[-2]:
        raise ValueError(f"softmax_attention: shapes q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)} do not fit [..., n, d], [..., m, d], [..., m, e]")
    n, d, m, e = q.shape[-2], q.shape[-1], k.shape[-2], v.shape[-1]
    q3 = (q * scale).reshape(-1, n, d)
    kt = k.reshape(-1, m, d).transpose(1, 2)
    p = matmul_softmax(q3, kt)  # [B, n, m]
    return matmul(p, v.reshape(-1, m, e)).reshape(*lead, n, e)
