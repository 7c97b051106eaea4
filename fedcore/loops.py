"""Default local training and evaluation loops of the client runtime (users may pass their own)."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from fedcore.arrays import Array, torch_state


def _batches(data: Dataset[Any], batch_size: int, shuffle: bool,
             generator: torch.Generator | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    tensors = getattr(data, "tensors", None)  # in-memory data sets hand over (x, y) at once
    if callable(tensors):
        x, y = tensors()
        order = torch.randperm(len(y), generator=generator) if shuffle else torch.arange(len(y))
        for i in range(0, len(y), batch_size):
            idx = order[i : i + batch_size]
            yield x[idx], y[idx]
    else:
        loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator)
        yield from loader


def train(
    model: nn.Module,
    data: Dataset[Any],
    *,
    epochs: int = 1,
    batch_size: int = 32,
    lr: float = 0.05,
    proximal_mu: float = 0.0,
    global_state: Mapping[str, torch.Tensor] | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """SGD with momentum; with ``proximal_mu`` > 0 adds FedProx's (mu/2)‖w − w_global‖²."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    anchors = None
    if proximal_mu > 0 and global_state is not None:
        anchors = {n: global_state[n].detach().float() for n, _ in model.named_parameters() if n in global_state}
    model.train()
    total, seen, correct = 0.0, 0, 0
    for _ in range(epochs):
        for x, y in _batches(data, batch_size, True, gen):
            opt.zero_grad(set_to_none=True)
            out = model(x)
            loss = loss_fn(out, y)
            if anchors is not None:
                prox = sum(((p - anchors[n]) ** 2).sum() for n, p in model.named_parameters() if n in anchors)
                loss = loss + 0.5 * proximal_mu * prox
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(y)
            seen += len(y)
            correct += int((out.argmax(1) == y).sum())
    return {"train_loss": total / max(seen, 1), "train_accuracy": correct / max(seen, 1)}


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset[Any], *, batch_size: int = 256) -> dict[str, float]:
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total, seen, correct = 0.0, 0, 0
    for x, y in _batches(data, batch_size, False, None):
        out = model(x)
        total += float(loss_fn(out, y))
        seen += len(y)
        correct += int((out.argmax(1) == y).sum())
    return {"loss": total / max(seen, 1), "accuracy": correct / max(seen, 1)}


def make_evaluate_fn(model: nn.Module, data: Dataset[Any]) -> Callable[[Mapping[str, Array]], dict[str, float]]:
    """Server-side evaluation hook: load the global state (torch tensors or numpy arrays) into
    ``model`` and score it on ``data``."""

    def evaluate_fn(state: Mapping[str, Array]) -> dict[str, float]:
        model.load_state_dict(torch_state(state))
        return evaluate(model, data)

    return evaluate_fn
