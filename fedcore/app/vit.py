"""A small Vision Transformer for CIFAR-10, written to be cut (``fedcore.split.cut``).

Its forward is its children in order — ``patch_embed``, ``blocks.0..N-1``, ``norm``, ``pool``,
``head`` — so ``cut(vit, at="blocks.1")`` puts the patch embedding and two blocks on the device.
Two switches route work through the ``cuda_ext`` extension (the WASM paper's scenarios 4 and 5):
``device_softmax_ext`` computes the attention of the device blocks (the first
``device_blocks``) with ``cuda_ext.nn.softmax_attention``; ``edge_matmul_ext`` builds the edge
blocks' projections and MLP from ``cuda_ext.nn.Linear`` (same parameter names and shapes as
``nn.Linear``, so checkpoints and FedAvg do not notice the switch).
"""
from __future__ import annotations

from types import ModuleType

import torch
from torch import nn

from fedcore.errors import ConfigError


def ext_nn() -> ModuleType:
    """``cuda_ext.nn``, imported only when a switch asks for it."""
    try:
        from cuda_ext import nn as ext
    except ImportError as exc:
        raise ConfigError(f"the ViT's cuda_ext switches need cuda_ext.nn, which is not importable here: {exc}") from exc
    return ext


class PatchEmbed(nn.Module):
    """Image → tokens: non-overlapping patches projected to ``dim``, a class token, positions."""

    def __init__(self, image_size: int, patch: int, dim: int, channels: int = 3) -> None:
        super().__init__()
        if image_size % patch:
            raise ConfigError(f"patch size {patch} does not divide the image size {image_size}")
        self.proj = nn.Conv2d(channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (image_size // patch) ** 2 + 1, dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.proj(x).flatten(2).transpose(1, 2)
        return torch.cat([self.cls_token.expand(len(t), -1, -1), t], dim=1) + self.pos_embed


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, linear: type[nn.Linear], softmax_ext: bool) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"heads={heads} does not divide dim={dim}")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = linear(dim, 3 * dim)
        self.proj = linear(dim, dim)
        self.softmax_ext = softmax_ext
        self._attend = ext_nn().softmax_attention if softmax_ext else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if self._attend is not None:
            o = self._attend(q, k, v, self.scale)
        else:
            o = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1) @ v
        out: torch.Tensor = self.proj(o.transpose(1, 2).reshape(b, n, c))
        return out


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, *, matmul_ext: bool = False,
                 softmax_ext: bool = False) -> None:
        super().__init__()
        linear: type[nn.Linear] = ext_nn().Linear if matmul_ext else nn.Linear
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, linear, softmax_ext)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(linear(dim, mlp_ratio * dim), nn.GELU(), linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        out: torch.Tensor = x + self.mlp(self.norm2(x))
        return out


class ClassToken(nn.Module):
    """Keeps the class token: [batch, tokens, dim] → [batch, dim]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


class ViT(nn.Module):
    """ViT for 32×32 images. ``device_blocks`` says which blocks the device runs (the first
    ones; cut at :attr:`cut_at`) so the two ``*_ext`` switches know which side they are on."""

    def __init__(self, num_classes: int = 10, *, image_size: int = 32, patch: int = 4, dim: int = 64,
                 depth: int = 4, heads: int = 2, mlp_ratio: int = 2, device_blocks: int = 2,
                 device_softmax_ext: bool = False, edge_matmul_ext: bool = False) -> None:
        super().__init__()
        if not 1 <= device_blocks <= depth:
            raise ConfigError(f"device_blocks={device_blocks} must be in [1, depth={depth}]")
        self.device_blocks = device_blocks
        self.patch_embed = PatchEmbed(image_size, patch, dim)
        self.blocks = nn.Sequential(*[
            Block(dim, heads, mlp_ratio,
                  softmax_ext=device_softmax_ext and i < device_blocks,
                  matmul_ext=edge_matmul_ext and i >= device_blocks)
            for i in range(depth)
        ])
        self.norm = nn.LayerNorm(dim)
        self.pool = ClassToken()
        self.head = nn.Linear(dim, num_classes)

    @property
    def cut_at(self) -> str:
        """The cut point after the device's blocks, for ``fedcore.split.cut``."""
        return f"blocks.{self.device_blocks - 1}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.pool(self.norm(self.blocks(self.patch_embed(x)))))
        return out


def vit_cifar(num_classes: int = 10) -> ViT:
    """The model zoo's entry: the defaults above (~0.14 M parameters)."""
    return ViT(num_classes)
