"""Round semantics of split training (SplitFed) and what each round moves.

In split mode the federation's model *is* the device part (``SplitModel.device_side``: the
front, plus the head in a U-shaped split): each round the devices train it against the edge
and upload it, and the configured strategy (FedAvg, ...) averages it exactly as it averages a
whole model in FedAvg mode. The edge part never travels: the server process keeps it (one
shared, or one per device) together with its optimizer state, across rounds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from fedcore.split.cut import SplitModel, probe_shapes
from fedcore.split.device import DeviceConfig
from fedcore.split.edge import EdgeConfig

FP32 = 4
LABEL_BYTES = 8


@dataclass(frozen=True)
class Traffic:
    """Bytes of one device's round, float32 on the wire, before any codec (message headers
    not counted). ``fedavg_params`` is what the whole model would cost in FedAvg mode."""

    activations_up: int
    labels_up: int
    gradients_down: int
    outputs_down: int
    output_grads_up: int
    params_down: int
    params_up: int
    fedavg_params: int

    @property
    def total(self) -> int:
        return (self.activations_up + self.labels_up + self.gradients_down + self.outputs_down
                + self.output_grads_up + self.params_down + self.params_up)


@dataclass(frozen=True)
class SplitRoundConfig:
    """Matching device and edge settings, and who holds which parameters.

    - ``global_model``: what the federation averages and sends out each round (device side).
    - ``device_params`` / ``edge_params``: parameter names on each side (disjoint; together the
      model's). The server holds ``edge_params`` (per device when ``edge.per_device``) and the
      edge optimizers' state; it never sends them to a device.
    """

    device: DeviceConfig
    edge: EdgeConfig
    global_model: nn.Module
    device_params: tuple[str, ...]
    edge_params: tuple[str, ...]
    cut_shape: tuple[int, ...]
    edge_out_shape: tuple[int, ...]
    edge_numel: int

    def traffic(self, samples: int, epochs: int = 1) -> Traffic:
        """What one device with ``samples`` local samples moves in one round of ``epochs``."""
        n = samples * epochs
        act = FP32 * math.prod(self.cut_shape) * n
        out = FP32 * math.prod(self.edge_out_shape) * n if self.edge.u_shaped else 0
        dev = FP32 * sum(p.numel() for p in self.global_model.parameters())
        return Traffic(activations_up=act, labels_up=0 if self.edge.u_shaped else LABEL_BYTES * n,
                       gradients_down=act, outputs_down=out, output_grads_up=out,
                       params_down=dev, params_up=dev, fedavg_params=dev + FP32 * self.edge_numel)



def split_round_config(split: SplitModel, example: torch.Tensor, *, batch_size: int, micro_batches: int = 4,
                       window: int = 4, num_classes: int | None = None, per_device: bool = False,
                       dtype: str = "fp32", codec: str = "none", device: str = "cpu") -> SplitRoundConfig:
    """Device and edge settings that agree (shapes probed with ``example``, the largest
    micro-batch from ``batch_size`` / ``micro_batches``)."""
    shapes = probe_shapes(split, example)
    u = split.u_shaped
    dev_names = tuple(n for n, _ in split.device_side.named_parameters())
    edge_names = tuple(n for n, _ in split.edge.named_parameters())
    cfg = SplitRoundConfig(
        device=DeviceConfig(micro_batches=micro_batches, window=window, dtype=dtype, codec=codec,
                            edge_out_shape=shapes.edge_out if u else None),
        edge=EdgeConfig(cut_shape=shapes.cut, max_micro_batch=-(-batch_size // micro_batches),
                        num_classes=None if u else num_classes, per_device=per_device, u_shaped=u,
                        edge_out_shape=shapes.edge_out if u else None, reply_dtype=dtype, reply_codec=codec,
                        device=device),
        global_model=split.device_side,
        device_params=dev_names,
        edge_params=edge_names,
        cut_shape=shapes.cut,
        edge_out_shape=shapes.edge_out,
        edge_numel=sum(p.numel() for p in split.edge.parameters()),
    )
    return cfg
