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


@needs_gpu
@needs_kernels
@pytest.mark.parametrize("chunks", [1, 3, 8])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
def test_linear_host_pipeline(chunks, dtype, tol):
    x, w = inputs(1029, 64, 96, dtype=dtype)
    wl, b = w.T.contiguous(), torch.randn(96).to(dtype)
    ref = x.double() @ w.double()
    y = cuda_ext.matmul(x.pin_memory(), w, device="cuda", chunks=chunks)
    assert y.device.type == "cpu" and y.is_pinned() and y.dtype == dtype
    assert rel_err(y, ref) <= tol
    yl = cuda_ext.linear(x.pin_memory(), wl.cuda(), b.cuda(), device="cuda", chunks=chunks)
    assert rel_err(yl, ref + b.double()) <= tol


@needs_gpu
@needs_kernels
def test_linear_host_pipeline_backward_matches_torch():
    x = torch.randn(300, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, 16, dtype=torch.float64, requires_grad=True)
    b = torch.randn(8, dtype=torch.float64, requires_grad=True)
    cuda_ext.linear(x, w, b, device="cuda", chunks=4).square().sum().backward()
    xr, wr, br = (t.detach().clone().requires_grad_(True) for t in (x, w, b))
    torch.nn.functional.linear(xr, wr, br).square().sum().backward()
    for a, r in ((x, xr), (w, wr), (b, br)):
        torch.testing.assert_close(a.grad, r.grad)


@needs_gpu
@needs_kernels
def test_nn_linear_and_attention_on_gpu():
    lin = cuda_ext.nn.Linear(32, 16).cuda()
    x = torch.randn(4, 10, 32, device="cuda")
    torch.testing.assert_close(lin(x), torch.nn.functional.linear(x, lin.weight, lin.bias))
    q, k, v = (torch.randn(2, 4, 17, 8, device="cuda") for _ in range(3))
    ref = torch.softmax(q @ k.transpose(-1, -2) * 0.35, -1) @ v
    torch.testing.assert_close(cuda_ext.nn.softmax_attention(q, k, v, 0.35), ref,
                               rtol=1e-4, atol=1e-5)


@needs_gpu
@pytest.mark.skipif(not _backend.WITH_CUDA, reason="unified memory needs the CUDA build")
def test_managed_empty_prefetch_and_free():
    free0, _ = torch.cuda.mem_get_info()
    t = cuda_ext.managed_empty((1024, 256), torch.float32, "cuda")
    assert t.is_cuda and t.shape == (1024, 256) and cuda_ext.is_managed(t)
    assert not cuda_ext.is_managed(torch.empty(4, device="cuda"))
    t.fill_(2.0)
    assert cuda_ext.prefetch(t, "cpu") is t
    cuda_ext.prefetch(t, "cuda")
    torch.cuda.synchronize()
    assert t.sum().item() == 2.0 * t.numel()
    y = cuda_ext.matmul(t, torch.ones(256, 3, device="cuda"))
    assert torch.all(y == 512.0)
    with pytest.raises(RuntimeError, match="not managed"):
        cuda_ext.prefetch(torch.empty(4, device="cuda"), "cpu")
    del t, y
    torch.cuda.synchronize()
    assert torch.cuda.mem_get_info()[0] >= free0 - (64 << 20)  # freed (cudaFree deleter)


@needs_gpu
@pytest.mark.skipif(not _backend.WITH_CUDA, reason="unified memory needs the CUDA build")
def test_managed_empty_refuses_more_than_free_memory():
    free, total = torch.cuda.mem_get_info()
    with pytest.raises(RuntimeError, match="MiB free"):
        cuda_ext.managed_empty((free // 4 + (1 << 28),), torch.float32, "cuda")
