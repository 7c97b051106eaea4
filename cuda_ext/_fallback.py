"""Pure-torch implementation, used when ``cuda_ext._C`` is not built.

Row-blocked like the C++ path, so even the fallback never holds x @ w next to the output.
"""
from __future__ import annotations

import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """bfloat16 (and float32) accumulate in float32; float64 stays float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def matmul_softmax_2d(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor,
                      block_rows: int = 0) -> torch.Tensor:
    """out[:] = softmax(x @ w, -1) for 2-D x, w, in row blocks of ``block_rows``."""
    n, m = x.shape[0], w.shape[1]
    if n == 0 or m == 0:
        return out
    acc = acc_dtype(x.dtype)
    wa = w.to(acc)
    if block_rows <= 0:
        block_rows = max(16, (4 << 20) // max(1, m * torch.finfo(acc).bits // 8))
    for r0 in range(0, n, block_rows):
        z = x[r0:r0 + block_rows].to(acc) @ wa
        out[r0:r0 + block_rows].copy_(torch.softmax(z, dim=-1))
    return out
