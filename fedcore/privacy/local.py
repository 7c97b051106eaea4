"""Local DP: a client clips its own update and adds Gaussian noise before it is encoded and sent,
so the server (and the wire) only ever see the privatised update.

The update is Δ = w_trained − w_received over the floating tensors; it is scaled into the L2 ball
of radius ``local_dp_clip`` and gets N(0, (local_dp_noise · local_dp_clip)²) on every coordinate.
Integer tensors (BatchNorm counters) are sent as received: they would tell how many steps ran.
"""
from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from fedcore.privacy.clipping import clip_delta, gaussian_like, make_generator

if TYPE_CHECKING:
    from fedcore.config import Settings

StateDict = Mapping[str, torch.Tensor]


def privatize_update(state: StateDict, reference: StateDict, clip_norm: float, noise_multiplier: float,
                     generator: torch.Generator) -> dict[str, torch.Tensor]:
    """reference + clip(Δ) + noise, in each tensor's own dtype."""
    if noise_multiplier < 0:
        raise ValueError("the local noise multiplier must be >= 0")
    delta, _ = clip_delta(state, reference, clip_norm)
    std = noise_multiplier * clip_norm
    out: dict[str, torch.Tensor] = {}
    for name, ref in reference.items():
        if name not in delta:
            out[name] = ref.detach().clone()
            continue
        d = delta[name]
        if std > 0:
            d.add_(gaussian_like(d, std, generator))
        out[name] = (ref.detach().to(torch.float64) + d).to(state[name].dtype)
    return out


def local_dp(state: StateDict, reference: StateDict | None, settings: Settings, *, client: str,
             round_number: int) -> StateDict:
    """The client runtime's hook: ``state`` unchanged unless ``settings.local_dp_clip`` is set.
    With ``dp_seed`` the noise is reproducible per (seed, client, round); without, OS randomness."""
    if settings.local_dp_clip is None:
        return state
    if reference is None:
        raise ValueError("local DP needs the global model the client trained from")
    seed = None
    if settings.dp_seed is not None:
        seed = (settings.dp_seed * 1_000_003 + zlib.crc32(client.encode()) * 7_919 + round_number) % 2**63
    return privatize_update(state, reference, settings.local_dp_clip, settings.local_dp_noise, make_generator(seed))


__all__ = ["local_dp", "privatize_update"]
