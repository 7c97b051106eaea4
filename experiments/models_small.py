"""A CIFAR-10 CNN small enough for the federated accuracy grid on a shared 2-core CPU.

``cifar_cnn_s``: three 3x3 conv + BN + ReLU + max-pool stages (16, 32, 64 channels) and one
linear layer: 34 k parameters, ~2.8 M multiply-adds per 32x32 image (fedcore.app.models.CifarCNN has
0.16 M parameters and ~29 M). Any name of fedcore.app.models.MODELS (cifar_cnn, resnet18) also works.
"""
from __future__ import annotations

import torch
from torch import nn

from fedcore.app.models import MODELS, build_model


def _stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.MaxPool2d(2))


class CifarCNNSmall(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(_stage(3, w), _stage(w, 2 * w), _stage(2 * w, 4 * w))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * 4 * 4, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


SMALL_MODELS = {"cifar_cnn_s": CifarCNNSmall}
MODEL_NAMES = sorted({*SMALL_MODELS, *MODELS} - {"digits_mlp", "digits_cnn"})


def make_model(name: str, seed: int = 0, num_classes: int = 10) -> nn.Module:
    """A CIFAR-10 model by name, initialised from ``seed`` (same weights in every process)."""
    if name in SMALL_MODELS:
        torch.manual_seed(seed)
        return SMALL_MODELS[name](num_classes)
    return build_model(name, "cifar10", num_classes, seed=seed)
