"""CUDA path of cuda_ext: numerics, overlapped pipeline vs sequential, errors without a GPU."""
from __future__ import annotations

import pytest
import torch

import cuda_ext
from cuda_ext import _backend

F32_TOL, BF16_TOL = 1e-5, 1e-2


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    """max|y - ref| / max|ref|, as in test_cuda_ext.py."""
    return ((y.double() - ref).abs().max() / ref.abs().max()).item()


def inputs(n: int, k: int, m: int, dtype=torch.float32):
    x = torch.randn(n, k) / k ** 0.5 + 1e-3
    return x.to(dtype), (torch.randn(k, m) * 2).to(dtype)


def reference(x, w):
    return torch.softmax(x.double() @ w.double(), dim=-1)

HAS_GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU on this machine "
                               "(the CUDA kernels are still compiled in CI; see test_cuda_ext_build)")
needs_kernels = pytest.mark.skipif(_backend.BACKEND == "compiled" and not _backend.WITH_CUDA,
                                   reason="cuda_ext._C was built without CUDA kernels")


@pytest.mark.skipif(HAS_GPU, reason="checks the error raised when no GPU is present")
def test_cuda_path_without_gpu_raises_clearly():
    x, w = inputs(8, 4, 3)
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        cuda_ext.matmul_softmax(x, w, device="cuda")
    assert not cuda_ext.cuda_available()


@needs_gpu
@needs_kernels
@pytest.mark.parametrize("dtype,tol", [(torch.float32, F32_TOL), (torch.bfloat16, BF16_TOL),
                                       (torch.float64, 1e-12)])
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 300, 33), (33, 31, 65), (1000, 40, 1031),
                                   (4099, 70, 129)])
def test_device_input(dtype, tol, shape):
    x, w = inputs(*shape, dtype=dtype)
    y = cuda_ext.matmul_softmax(x.cuda(), w.cuda())
    assert y.is_cuda and y.dtype == dtype
    assert rel_err(y.cpu(), reference(x, w)) <= tol


@needs_gpu
@needs_kernels
@pytest.mark.parametrize("chunks", [1, 2, 3, 8, 1000])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, F32_TOL), (torch.bfloat16, BF16_TOL)])
def test_host_input_pipeline(chunks, dtype, tol):
    x, w = inputs(2053, 96, 300, dtype=dtype)
    y = cuda_ext.matmul_softmax(x.pin_memory(), w, device="cuda", chunks=chunks)
    assert y.device.type == "cpu"
    assert rel_err(y, reference(x, w)) <= tol


@needs_gpu
@needs_kernels
def test_host_pipeline_repeated_calls_do_not_race():
    """Back-to-back calls reuse allocator blocks across streams (record_stream)."""
    for i in range(20):
        x, w = inputs(1000 + i, 64, 257)
        y = cuda_ext.matmul_softmax(x.pin_memory(), w, device="cuda", chunks=5)
        assert rel_err(y, reference(x, w)) <= F32_TOL


@needs_gpu
@needs_kernels
def test_large_magnitude_on_gpu():
    x = (torch.randint(-7, 8, (67, 24)) * 2 + 1).float() * 8
    w = (torch.randint(-7, 8, (24, 129)) * 2 + 1).float() / 4
    y = cuda_ext.matmul_softmax(x.cuda(), w.cuda()).cpu()
    assert torch.isfinite(y).all() and rel_err(y, reference(x, w)) <= F32_TOL


@needs_gpu
@needs_kernels
def test_gradcheck_float64_on_gpu():
    x = torch.randn(9, 5, dtype=torch.float64, device="cuda", requires_grad=True)
    w = torch.randn(5, 4, dtype=torch.float64, device="cuda", requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: cuda_ext.matmul_softmax(a, b), (x, w))
