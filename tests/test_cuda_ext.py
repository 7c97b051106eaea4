"""Numerics of cuda_ext.matmul_softmax on CPU (compiled path and the torch fallback).

Reference: torch.softmax(x.double() @ w.double()). Error = max|y - ref| / max|ref| (the
max-normalised error; element-wise relative error of probabilities ~1e-30 is meaningless).
"""
from __future__ import annotations

import pytest
import torch

import cuda_ext
from cuda_ext import _backend, _fallback

SHAPES = [  # (n, k, m): tile (32) / block / chunk non-multiples, 1-row, 1-col, long k
    (1, 1, 1), (1, 7, 1), (1, 300, 33), (5, 1, 9), (17, 3, 1), (33, 31, 65),
    (129, 64, 257), (300, 513, 7), (1000, 40, 1031), (2049, 16, 100),
]
F32_TOL, BF16_TOL = 1e-5, 1e-2


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.double() - ref).abs().max() / ref.abs().max()).item()


def inputs(n: int, k: int, m: int, dtype=torch.float32, gen=None):
    """Fresh random, never zero; logits ~ N(0, 1..4)."""
    x = torch.randn(n, k, generator=gen) / k ** 0.5 + 1e-3
    w = torch.randn(k, m, generator=gen) * 2
    return x.to(dtype), w.to(dtype)


def reference(x, w):
    return torch.softmax(x.double() @ w.double(), dim=-1)


IMPLS = {"compiled": None, "fallback": None}


def run_impl(name: str, x, w, **kw):
    if name == "compiled":
        if _backend._C is None:
            pytest.skip(f"compiled backend not active: {_backend.REASON}")
        return cuda_ext.matmul_softmax(x, w, **kw)
    out = torch.empty(x.shape[0], w.shape[1], dtype=x.dtype)
    block = -(-x.shape[0] // kw["chunks"]) if kw.get("chunks") else 0
    return _fallback.matmul_softmax_2d(x, w, out, block)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_float32_matches_float64_reference(impl, shape):
    g = torch.Generator().manual_seed(hash(shape) % 2**31)
    x, w = inputs(*shape, gen=g)
    y = run_impl(impl, x, w)
    assert y.shape == (shape[0], shape[2]) and y.dtype == torch.float32
    assert rel_err(y, reference(x, w)) <= F32_TOL


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("shape", [(1, 5, 1), (33, 31, 65), (300, 513, 7), (1000, 40, 1031)])
def test_bfloat16_accumulates_in_float32(impl, shape):
    x, w = inputs(*shape, dtype=torch.bfloat16)
    y = run_impl(impl, x, w)
    assert y.dtype == torch.bfloat16
    assert rel_err(y, reference(x, w)) <= BF16_TOL


@pytest.mark.parametrize("chunks", [1, 2, 3, 7, 1000])
def test_block_count_does_not_change_result(chunks):
    x, w = inputs(257, 19, 45)
    ref = reference(x, w)
    assert rel_err(cuda_ext.matmul_softmax(x, w, chunks=chunks), ref) <= F32_TOL


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("dtype,tol", [(torch.float32, F32_TOL), (torch.bfloat16, BF16_TOL)])
def test_large_magnitude_is_stable(impl, dtype, tol):
    """Logits up to ~±5e3 (a naive exp overflows past 88). Inputs are small odd integers
    times powers of two, so x @ w is exact in fp32 and the error measures the softmax."""
    g = torch.Generator().manual_seed(7)
    n, k, m = 67, 24, 129
    x = (torch.randint(-7, 8, (n, k), generator=g) * 2 + 1).float() * 8   # odd * 8, never 0
    w = (torch.randint(-7, 8, (k, m), generator=g) * 2 + 1).float() / 4
    x, w = x.to(dtype), w.to(dtype)
    ref = reference(x, w)
    assert (x.double() @ w.double()).abs().max() > 200
    y = run_impl(impl, x, w)
    assert torch.isfinite(y.float()).all()
    assert rel_err(y, ref) <= tol
    torch.testing.assert_close(y.double().sum(-1), torch.ones(n, dtype=torch.float64),
                               atol=tol * 10, rtol=0)


def test_batched_inputs():
    x, _ = inputs(4 * 37, 29, 1)
    x = x.view(4, 37, 29)
    w2 = torch.randn(29, 53)
    w3 = torch.randn(4, 29, 53)
    assert rel_err(cuda_ext.matmul_softmax(x, w2), reference(x, w2)) <= F32_TOL
    y3 = cuda_ext.matmul_softmax(x, w3)
    assert y3.shape == (4, 37, 53)
    assert rel_err(y3, reference(x, w3)) <= F32_TOL


def test_out_argument_is_filled_and_returned():
    x, w = inputs(70, 9, 11)
    out = torch.full((70, 11), 3.0)
    y = cuda_ext.matmul_softmax(x, w, out=out)
    assert y.data_ptr() == out.data_ptr()
    assert rel_err(out, reference(x, w)) <= F32_TOL


def test_noncontiguous_inputs():
    x, w = inputs(40, 30, 20)
    xt = x.t().contiguous().t()  # same values, column-major
    assert rel_err(cuda_ext.matmul_softmax(xt, w.t().contiguous().t()), reference(x, w)) <= F32_TOL


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(7, 5, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: cuda_ext.matmul_softmax(a, b), (x, w))
    xb = torch.randn(2, 3, 5, dtype=torch.float64, generator=g, requires_grad=True)
    wb = torch.randn(2, 5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: cuda_ext.matmul_softmax(a, b), (xb, wb))
    assert torch.autograd.gradcheck(lambda a, b: cuda_ext.matmul_softmax(a, b), (xb, w))


def test_backward_float32_matches_torch():
    x, w = inputs(50, 20, 30)
    x.requires_grad_(True)
    w.requires_grad_(True)
    gy = torch.randn(50, 30)
    cuda_ext.matmul_softmax(x, w).backward(gy)
    xr, wr = x.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
    torch.softmax(xr @ wr, -1).backward(gy)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(w.grad, wr.grad, rtol=1e-4, atol=1e-6)


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        cuda_ext.matmul_softmax(torch.randn(3, 4), torch.randn(5, 6))
    with pytest.raises(TypeError):
        cuda_ext.matmul_softmax(torch.randn(3, 4), torch.randn(4, 6, dtype=torch.float64))
    with pytest.raises(TypeError):
        cuda_ext.matmul_softmax(torch.randn(3, 4).half(), torch.randn(4, 6).half())
    with pytest.raises(RuntimeError, match="autograd"):
        cuda_ext.matmul_softmax(torch.randn(3, 4, requires_grad=True), torch.randn(4, 6),
                                out=torch.empty(3, 6))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, F32_TOL), (torch.bfloat16, BF16_TOL)])
@pytest.mark.parametrize("chunks", [None, 1, 3])
def test_batched_w_runs_as_one_call_with_out_and_chunks(dtype, tol, chunks):
    """3-D x with 3-D w (attention scores): the whole batch in one C++ call, many small items."""
    g = torch.Generator().manual_seed(11)
    x = (torch.randn(37, 9, 8, generator=g) / 3).to(dtype)
    w = (torch.randn(37, 8, 11, generator=g) * 2).to(dtype)
    out = torch.full((37, 9, 11), 5.0, dtype=dtype)
    y = cuda_ext.matmul_softmax(x, w, out=out, chunks=chunks)
    assert y.data_ptr() == out.data_ptr()
    assert rel_err(y, reference(x, w)) <= tol
