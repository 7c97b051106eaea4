"""The ViT: cut-friendly stages, and its cuda_ext switches (skipped until cuda_ext.nn lands)."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from fedcore.app.vit import ViT, vit_cifar
from fedcore.errors import ConfigError
from fedcore.split import cut, probe_shapes

HAS_EXT_NN = importlib.util.find_spec("cuda_ext") is not None and importlib.util.find_spec("cuda_ext.nn") is not None
needs_ext = pytest.mark.skipif(not HAS_EXT_NN, reason="cuda_ext.nn (Linear, softmax_attention) is not on this branch yet; "
                               "it arrives with the cudaext merge")


def test_forward_is_its_stages_in_order() -> None:
    torch.manual_seed(0)
    vit = vit_cifar()
    x = torch.randn(3, 3, 32, 32)
    split = cut(vit, vit.cut_at)
    assert torch.equal(split.forward(x), vit(x))
    assert probe_shapes(split, x).cut == (65, 64)
    assert vit(x).shape == (3, 10)


def test_bad_settings() -> None:
    with pytest.raises(ConfigError, match="heads=3"):
        ViT(dim=64, heads=3)
    with pytest.raises(ConfigError, match="device_blocks"):
        ViT(depth=2, device_blocks=3)


def _pair(**switches: bool) -> tuple[ViT, ViT]:
    torch.manual_seed(0)
    plain = ViT(dim=32, depth=3, heads=2, device_blocks=1)
    torch.manual_seed(0)
    ext = ViT(dim=32, depth=3, heads=2, device_blocks=1, **switches)
    return plain, ext


@needs_ext
@pytest.mark.parametrize("switch", ["device_softmax_ext", "edge_matmul_ext"])
def test_switches_keep_parameters_and_function(switch: str) -> None:
    plain, ext = _pair(**{switch: True})
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in ext.state_dict().items()}
    ext.load_state_dict(plain.state_dict())
    x = torch.randn(4, 3, 32, 32)
    assert torch.allclose(plain(x), ext(x), atol=1e-4)
    ext(x).sum().backward()
    assert all(p.grad is not None for p in ext.parameters())


@needs_ext
def test_switches_touch_their_side_only() -> None:
    from cuda_ext import nn as ext_nn  # type: ignore[attr-defined]

    from fedcore.app.vit import Block

    _, vit = _pair(device_softmax_ext=True, edge_matmul_ext=True)
    blocks = [b for b in vit.blocks if isinstance(b, Block)]
    assert len(blocks) == 3
    assert blocks[0].attn.softmax_ext and not blocks[1].attn.softmax_ext
    assert not isinstance(blocks[0].attn.qkv, ext_nn.Linear)
    assert all(isinstance(b.attn.qkv, ext_nn.Linear) and isinstance(b.mlp[0], ext_nn.Linear) for b in blocks[1:])


@pytest.mark.skipif(HAS_EXT_NN, reason="cuda_ext.nn is present")
def test_switch_without_extension_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="cuda_ext.nn"):
        ViT(device_softmax_ext=True)
