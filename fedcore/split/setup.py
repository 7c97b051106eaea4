"""Split mode from settings: cut the model the same way on the server (edge) and on every
device, and derive matching device/edge configurations from one example input."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fedcore.errors import ConfigError
from fedcore.split.cut import SplitModel, cut, cut_points
from fedcore.split.rounds import SplitRoundConfig, split_round_config


@dataclass(frozen=True)
class SplitSetup:
    split: SplitModel
    config: SplitRoundConfig


def split_setup(model: nn.Module, example: torch.Tensor, *, at: str | None, head_at: str | None = None,
                batch_size: int, micro_batches: int, window: int, num_classes: int | None,
                per_device: bool = False, dtype: str = "fp32", device: str = "cpu") -> SplitSetup:
    """The cut model and its configs. ``at`` defaults to the model's own ``cut_at`` (the ViT
    names its device/edge boundary)."""
    at = at or getattr(model, "cut_at", None)
    if not at:
        raise ConfigError(f"split mode needs split_at (one of {', '.join(cut_points(model))})")
    split = cut(model, at=at, head_at=head_at)
    with torch.no_grad():
        cfg = split_round_config(split, example, batch_size=batch_size, micro_batches=micro_batches,
                                 window=window, num_classes=None if head_at else num_classes,
                                 per_device=per_device, dtype=dtype, device=device)
    return SplitSetup(split, cfg)
