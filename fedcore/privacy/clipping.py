"""Update clipping (whole-model L2) and the adaptive clip norm of Andrew et al. 2021.

An update is Δ = w_client − w_reference over the floating tensors (weights and floating
buffers such as BatchNorm statistics); integer tensors (counters) are not part of it and are
never taken from a client in a DP round. All arithmetic is float64.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

StateDict = Mapping[str, torch.Tensor]


def delta_of(state: StateDict, reference: StateDict) -> dict[str, torch.Tensor]:
    """Δ = state − reference (float64) for every floating tensor of ``reference``."""
    missing = [k for k, r in reference.items() if r.is_floating_point() and k not in state]
    if missing:
        raise ValueError(f"update lacks tensor {missing[0]!r} of the model")
    return {k: state[k].detach().to(torch.float64) - r.detach().to(torch.float64)
            for k, r in reference.items() if r.is_floating_point()}


def norm_of(delta: Mapping[str, torch.Tensor]) -> float:
    """Whole-model L2 norm of a set of tensors."""
    return math.sqrt(sum(float(t.pow(2).sum()) for t in delta.values()))


def delta_norm(state: StateDict, reference: StateDict) -> float:
    """‖state − reference‖₂ over all floating tensors."""
    return norm_of(delta_of(state, reference))


def clip_delta(state: StateDict, reference: StateDict, clip_norm: float) -> tuple[dict[str, torch.Tensor], float]:
    """(Δ · min(1, C / ‖Δ‖), ‖Δ‖): the update scaled into the ball of radius ``clip_norm``."""
    if clip_norm <= 0:
        raise ValueError("clip_norm must be > 0")
    delta = delta_of(state, reference)
    norm = norm_of(delta)
    if norm > clip_norm:
        scale = clip_norm / norm
        for t in delta.values():
            t.mul_(scale)
    return delta, norm


def make_generator(seed: int | None) -> torch.Generator:
    """The noise source. A seed makes an experiment reproducible, but anyone who knows it can
    subtract the noise, so without one the generator is seeded from the OS (``os.urandom``)."""
    g = torch.Generator()
    g.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
    return g


def gaussian_like(t: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """N(0, std²) noise shaped like ``t`` (float64, CPU)."""
    return torch.randn(t.shape, dtype=torch.float64, generator=generator).mul_(std)


@dataclass
class AdaptiveClip:
    """Clip norm that tracks the ``target_quantile`` of update norms (Andrew et al. 2021):
    C ← C · exp(−lr · (b̄ − γ)), b̄ the (noised) fraction of updates with ‖Δ‖ ≤ C, γ the target.
    More unclipped updates than wanted shrink C, fewer grow it: geometric steps toward the
    quantile, in a few rounds whatever the scale of the norms."""

    clip_norm: float
    target_quantile: float = 0.5
    lr: float = 0.2

    def __post_init__(self) -> None:
        if self.clip_norm <= 0:
            raise ValueError("clip_norm must be > 0")
        if not 0 < self.target_quantile < 1:
            raise ValueError("target_quantile must be in (0, 1)")
        if self.lr <= 0:
            raise ValueError("the clip learning rate must be > 0")

    def update(self, unclipped_fraction: float) -> float:
        """Move the clip norm after a round; returns the new one."""
        self.clip_norm *= math.exp(-self.lr * (unclipped_fraction - self.target_quantile))
        return self.clip_norm


__all__ = ["AdaptiveClip", "clip_delta", "delta_norm", "delta_of", "gaussian_like", "make_generator", "norm_of"]
