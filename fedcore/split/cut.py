"""Cut a model into the part a device trains and the part the edge trains.

A model is cuttable when its forward is its children applied in registration order (an
``nn.Sequential``, or a module written that way, such as :class:`fedcore.app.vit.ViT`). A child
that is itself an ``nn.Sequential`` / ``nn.ModuleList`` is opened one level, so ``"blocks.2"``
names the third block. The parts share their modules with the model (no copy): training the
parts trains the model, and state-dict names stay the model's own names.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

Stage = tuple[str, nn.Module]


class Part(nn.Module):
    """A run of consecutive stages of a model, registered under the model's own names."""

    def __init__(self, stages: Sequence[Stage], *, runnable: bool = True) -> None:
        super().__init__()
        groups: OrderedDict[str, OrderedDict[str, nn.Module]] = OrderedDict()
        for name, module in stages:
            parent, _, child = name.rpartition(".")
            if parent:
                groups.setdefault(parent, OrderedDict())[child] = module
            else:
                self.add_module(name, module)
        for parent, children in groups.items():
            self.add_module(parent, nn.Sequential(children))
        self.stage_names = tuple(name for name, _ in stages)
        self._order = [module for _, module in stages]  # plain list: not registered twice
        self.runnable = runnable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.runnable:
            raise RuntimeError("this part only holds the device's parameters (U-shaped split); "
                               "run SplitModel.device and SplitModel.head instead")
        for module in self._order:
            x = module(x)
        return x


def stages_of(model: nn.Module) -> list[Stage]:
    """The model's stages in forward order: its children, containers opened one level."""
    out: list[Stage] = []
    for name, child in model.named_children():
        if isinstance(child, (nn.Sequential, nn.ModuleList)) and len(child) > 0:
            out.extend((f"{name}.{sub}", m) for sub, m in child.named_children())
        else:
            out.append((name, child))
    if not out:
        raise ValueError(f"{type(model).__name__} has no child modules to cut between")
    return out


def cut_points(model: nn.Module) -> list[str]:
    """Names a cut may be placed after: every stage but the last, and every opened container
    whose last stage is not the model's last."""
    stages = stages_of(model)
    names = [n for n, _ in stages[:-1]]
    containers = {n.rpartition(".")[0] for n, _ in stages if "." in n}
    last_of = {c: max(i for i, (n, _) in enumerate(stages) if n.rpartition(".")[0] == c) for c in containers}
    names += [c for c, i in last_of.items() if i < len(stages) - 1]
    return names


def _index_after(stages: list[Stage], at: str) -> int:
    """Index of the first stage after the cut ``at`` (a stage, or a container's last stage)."""
    return 1 + max(i for i, (name, _) in enumerate(stages) if at in (name, name.rpartition(".")[0]))


@dataclass(frozen=True)
class SplitModel:
    """The device part (``device``), the edge part (``edge``) and, for a U-shaped split, the
    device-side ``head`` (then labels stay on the device). ``device_side`` is the module whose
    parameters the device trains and the federation averages (front and head together)."""

    device: nn.Module
    edge: nn.Module
    head: nn.Module | None = None
    device_side: nn.Module = field(init=False)

    def __post_init__(self) -> None:
        if self.head is None:
            side: nn.Module = self.device
        elif isinstance(self.device, Part) and isinstance(self.head, Part):
            side = Part([*zip(self.device.stage_names, self.device._order),
                         *zip(self.head.stage_names, self.head._order)], runnable=False)
        else:
            side = nn.ModuleDict({"front": self.device, "head": self.head})
        object.__setattr__(self, "device_side", side)

    @property
    def u_shaped(self) -> bool:
        return self.head is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The whole model's function, through the parts (for checks and evaluation)."""
        out = self.edge(self.device(x))
        result: torch.Tensor = self.head(out) if self.head is not None else out
        return result


@dataclass(frozen=True)
class SplitShapes:
    """Per-sample shapes at the cuts (no batch dimension): what each side must expect."""

    cut: tuple[int, ...]
    edge_out: tuple[int, ...]


@torch.no_grad()
def probe_shapes(split: SplitModel, example: torch.Tensor) -> SplitShapes:
    """Run one example batch through the parts to learn the shapes crossing each cut."""
    a = split.device(example)
    b = split.edge(a)
    return SplitShapes(cut=tuple(a.shape[1:]), edge_out=tuple(b.shape[1:]))


def cut(model: nn.Module, at: str, *, head_at: str | None = None) -> SplitModel:
    """Split ``model`` after the stage ``at`` (e.g. ``"blocks.2"``): the device runs the stages
    up to and including it, the edge the rest. With ``head_at`` the stages after ``head_at``
    come back to the device (U-shaped split: the labels and the loss never leave it)."""
    stages = stages_of(model)
    valid = cut_points(model)
    if at not in valid:
        raise ValueError(f"at={at!r} is not a cut point of {type(model).__name__}; valid: {', '.join(valid)}")
    i = _index_after(stages, at)
    if head_at is None:
        return SplitModel(device=Part(stages[:i]), edge=Part(stages[i:]))
    if head_at not in valid:
        raise ValueError(f"head_at={head_at!r} is not a cut point of {type(model).__name__}; valid: {', '.join(valid)}")
    j = _index_after(stages, head_at)
    if j <= i:
        raise ValueError(f"head_at={head_at!r} must come after at={at!r}: the edge part would be empty")
    return SplitModel(device=Part(stages[:i]), edge=Part(stages[i:j]), head=Part(stages[j:]))
