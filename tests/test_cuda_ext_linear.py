"""cuda_ext.matmul / linear / nn.Linear / nn.softmax_attention on CPU (numerics, autograd,
errors) and the GPU-only APIs' errors on a machine without a GPU."""
from __future__ import annotations

import pytest
import torch

import cuda_ext
from cuda_ext import nn as cnn

HAS_GPU = torch.cuda.is_available()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("xshape", [(7, 5), (2, 3, 5), (1, 5), (5,)])
def test_matmul_matches_torch(xshape):
    g = _gen(1)
    x, w = torch.randn(*xshape, generator=g), torch.randn(5, 4, generator=g)
    y = cuda_ext.matmul(x, w)
    assert y.shape == (*xshape[:-1], 4)
    torch.testing.assert_close(y, x @ w)


def test_batched_matmul_matches_torch():
    g = _gen(2)
    x, w = torch.randn(3, 6, 5, generator=g), torch.randn(3, 5, 2, generator=g)
    torch.testing.assert_close(cuda_ext.matmul(x, w), torch.bmm(x, w))


@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_functional_linear(bias):
    g = _gen(3)
    x, w = torch.randn(4, 3, 6, generator=g), torch.randn(8, 6, generator=g)
    b = torch.randn(8, generator=g) if bias else None
    torch.testing.assert_close(cuda_ext.linear(x, w, b), torch.nn.functional.linear(x, w, b))


def test_gradcheck_matmul_and_linear():
    g = _gen(4)
    x = torch.randn(2, 3, 5, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    wl = torch.randn(4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, generator=g, requires_grad=True)
    wb = torch.randn(2, 5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, c: cuda_ext.matmul(a, c), (x, w))
    assert torch.autograd.gradcheck(lambda a, c: cuda_ext.matmul(a, c), (x, wb))
    assert torch.autograd.gradcheck(lambda a, c, d: cuda_ext.linear(a, c, d), (x, wl, b))
    assert torch.autograd.gradcheck(lambda a, c: cuda_ext.linear(a, c), (x, wl))


def test_grad_only_for_inputs_that_need_it():
    g = _gen(5)
    x = torch.randn(6, 5, generator=g)
    w = torch.randn(3, 5, generator=g, requires_grad=True)
    cuda_ext.linear(x, w).sum().backward()
    torch.testing.assert_close(w.grad, x.sum(0).expand(3, 5))
    assert x.grad is None


def test_nn_linear_is_a_drop_in_for_torch_linear():
    torch.manual_seed(0)
    ref = torch.nn.Linear(6, 3)
    ours = cnn.Linear(6, 3)
    assert dict(ours.named_parameters()).keys() == dict(ref.named_parameters()).keys()
    assert ours.weight.shape == (3, 6) and ours.bias is not None and ours.bias.shape == (3,)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, 2, 6)
    torch.testing.assert_close(ours(x), ref(x))
    ours(x).square().sum().backward()
    ref(x).square().sum().backward()
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad)
    assert cnn.Linear(6, 3, bias=False).bias is None
    x64 = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    lin64 = cnn.Linear(6, 2, dtype=torch.float64)
    assert torch.autograd.gradcheck(lin64, (x64,))


def _attention_ref(q, k, v, scale):
    return torch.softmax(q @ k.transpose(-1, -2) * scale, -1) @ v


@pytest.mark.parametrize("shape", [(2, 3, 7, 4), (5, 4), (3, 9, 8)])
def test_softmax_attention_matches_reference(shape):
    g = _gen(6)
    *lead, n, d = shape
    q = torch.randn(*shape, generator=g)
    k = torch.randn(*lead, n + 2, d, generator=g)
    v = torch.randn(*lead, n + 2, 3, generator=g)
    y = cnn.softmax_attention(q, k, v, d ** -0.5)
    assert y.shape == (*lead, n, 3)
    torch.testing.assert_close(y, _attention_ref(q, k, v, d ** -0.5), rtol=1e-5, atol=1e-5)


def test_softmax_attention_gradcheck():
    g = _gen(7)
    q = torch.randn(2, 2, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    k = torch.randn(2, 2, 5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    v = torch.randn(2, 2, 5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: cnn.softmax_attention(a, b, c, 0.5), (q, k, v))


def test_bad_inputs_raise_clearly():
    with pytest.raises(ValueError, match="mismatch"):
        cuda_ext.matmul(torch.randn(3, 4), torch.randn(5, 2))
    with pytest.raises(ValueError, match="mismatch"):
        cuda_ext.linear(torch.randn(3, 4), torch.randn(2, 5))
    with pytest.raises(ValueError, match="bias"):
        cuda_ext.linear(torch.randn(3, 4), torch.randn(2, 4), torch.randn(3))
    with pytest.raises(TypeError, match="dtype"):
        cuda_ext.matmul(torch.randn(3, 4), torch.randn(4, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="unsupported device"):
        cuda_ext.matmul(torch.randn(3, 4), torch.randn(4, 2), device="meta")
    with pytest.raises(ValueError, match="same rank"):
        cnn.softmax_attention(torch.randn(3, 4), torch.randn(2, 3, 4), torch.randn(3, 4), 1.0)


@pytest.mark.skipif(HAS_GPU, reason="checks the errors raised when no GPU is present")
def test_gpu_only_apis_raise_without_gpu():
    with pytest.raises(RuntimeError, match="no CUDA GPU|without CUDA kernels"):
        cuda_ext.matmul(torch.randn(3, 4), torch.randn(4, 2), device="cuda")
    with pytest.raises(RuntimeError, match="no CUDA GPU|without CUDA kernels"):
        cuda_ext.linear(torch.randn(3, 4), torch.randn(2, 4), device="cuda")
    with pytest.raises(RuntimeError, match="no CUDA GPU|without CUDA kernels"):
        cuda_ext.managed_empty((4, 4))
    with pytest.raises(RuntimeError, match="no CUDA GPU|without CUDA kernels"):
        cuda_ext.prefetch(torch.empty(2), "cpu")
    with pytest.raises(ValueError, match="CUDA device"):
        cuda_ext.managed_empty((4,), device="cpu")
    assert not cuda_ext.is_managed(torch.empty(3))
