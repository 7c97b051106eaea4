"""Models used by the demo, tests and experiments."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def digits_mlp(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, num_classes))


class DigitsCNN(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x.view(-1, 1, 8, 8))
        return out


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class CifarCNN(nn.Module):
    """Compact CNN (~0.6 M parameters) that trains on a 2-core CPU in minutes per epoch."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn(3, 32), _conv_bn(32, 32), nn.MaxPool2d(2),
            _conv_bn(32, 64), _conv_bn(64, 64), nn.MaxPool2d(2),
            _conv_bn(64, 128), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(128 * 4 * 4, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x))
        return out


def resnet18(num_classes: int = 10) -> nn.Module:
    from torchvision.models import resnet18 as tv_resnet18

    model: nn.Module = tv_resnet18(num_classes=num_classes)
    return model


def vit_cifar(num_classes: int = 10, *, device_softmax_ext: bool = False, edge_matmul_ext: bool = False) -> nn.Module:
    from fedcore.app.vit import ViT

    return ViT(num_classes, device_softmax_ext=device_softmax_ext, edge_matmul_ext=edge_matmul_ext)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "digits_mlp": digits_mlp,
    "digits_cnn": DigitsCNN,
    "cifar_cnn": CifarCNN,
    "resnet18": resnet18,
    "vit_cifar": vit_cifar,  # the WASM paper's Transformer (split mode cuts it at blocks.1)
}
DEFAULT_MODEL = {"digits": "digits_mlp", "cifar10": "cifar_cnn"}


# Models with the WASM paper's switches (scenarios 4-6): their device attention softmax and edge
# matmuls can run through cuda_ext. The switches change the compute path, never the parameters.
SWITCHABLE = {"vit_cifar"}


def build_model(name: str, dataset: str = "digits", num_classes: int = 10, seed: int | None = 0, *,
                device_softmax_ext: bool = False, edge_matmul_ext: bool = False) -> nn.Module:
    """A model by name ('auto' picks the data set's default), initialised from ``seed``."""
    key = DEFAULT_MODEL[dataset] if name == "auto" else name
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose auto or one of {sorted(MODELS)}")
    if (device_softmax_ext or edge_matmul_ext) and key not in SWITCHABLE:
        raise ValueError(f"model {key!r} has no cuda_ext switches (models with them: {sorted(SWITCHABLE)})")
    if seed is not None:
        torch.manual_seed(seed)
    if key in SWITCHABLE:
        return MODELS[key](num_classes, device_softmax_ext=device_softmax_ext, edge_matmul_ext=edge_matmul_ext)
    return MODELS[key](num_classes)


def build_configured_model(settings: Any, num_classes: int = 10) -> nn.Module:
    """The model a Settings object names, with its cuda_ext switches: the same on server and clients."""
    return build_model(settings.model, settings.dataset, num_classes, seed=settings.seed,
                       device_softmax_ext=settings.device_softmax_ext, edge_matmul_ext=settings.edge_matmul_ext)
